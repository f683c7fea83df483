// The life of a mount: unmounting (normal, busy, lazy, forced, from outside), the end of the
// process that serves it (signals, exit, SIGKILL), many mounts at once, and statistics.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';

import { FusekitError, type Mount, type MountOptions, mount } from '../lib';
import { mountFixture, tmpdir, unmountInTeardown } from './helpers/fixture';
import {
  type JsonChild,
  devOf,
  isMounted,
  mountTable,
  nodeArgv,
  run,
  snapshot,
  spawnChild,
  umountLazy,
  waitFor,
  within,
} from './helpers/proc-util';

const content = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31 + 7) & 0xff));

async function fill(src: string): Promise<void> {
  await fsp.writeFile(path.join(src, 'data.bin'), content);
  await fsp.writeFile(path.join(src, 'small.txt'), 'small\n');
  await fsp.mkdir(path.join(src, 'sub'));
  await fsp.writeFile(path.join(src, 'sub', 'inner'), 'inner\n');
  await fsp.symlink('small.txt', path.join(src, 'link'));
}

/** The mount point is a plain empty directory again and the source holds exactly `before`. */
async function assertGone(
  t: ExecutionContext,
  mnt: string,
  src: string,
  before: Record<string, string>,
): Promise<void> {
  t.false(isMounted(mnt), `${mnt} is still mounted`);
  t.true(statSync(mnt).isDirectory());
  t.is(devOf(mnt), devOf(path.dirname(mnt)), 'the mount point is on its parent filesystem again');
  t.deepEqual(await fsp.readdir(mnt), []);
  t.deepEqual(await snapshot(src), before);
}

async function readAll(fh: fsp.FileHandle): Promise<Buffer> {
  const buf = Buffer.alloc(content.length + 10);
  let n = 0;
  for (;;) {
    const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
    if (bytesRead === 0) break;
    n += bytesRead;
  }
  return buf.subarray(0, n);
}

test('unmount is idempotent: concurrent and repeated calls all resolve', async (t) => {
  const { src, mnt, m } = await mountFixture(t, {}, fill);
  const before = await snapshot(src);
  t.deepEqual(await snapshot(mnt), before);
  await Promise.all([m.unmount(), m.unmount(), m.unmount()]);
  t.true(m.isClosed);
  await within('closed', m.closed);
  await m.unmount();
  await m.unmount({ lazy: true });
  await m.unmount({ force: true });
  await assertGone(t, mnt, src, before);
});

for (const passthrough of ['auto', 'off'] as const) {
  test(`a busy mount (open file, passthrough ${passthrough}) refuses to unmount, keeps serving, and detaches lazily`, async (t) => {
    const { src, mnt, m } = await mountFixture(t, { passthrough }, fill);
    const before = await snapshot(src);
    const fh = await fsp.open(path.join(mnt, 'data.bin'), 'r');
    t.teardown(() => fh.close().catch(() => undefined));

    const err = await t.throwsAsync(m.unmount());
    t.true(err instanceof FusekitError);
    t.is((err as FusekitError).code, 'EBUSY');
    t.regex(err.message, /busy.*lazy: true.*force: true/);
    t.true(isMounted(mnt));
    t.false(m.isClosed);
    t.deepEqual(await fsp.readFile(path.join(mnt, 'data.bin')), content, 'still serving');
    t.is(await fsp.readFile(path.join(mnt, 'sub', 'inner'), 'utf8'), 'inner\n');

    await m.unmount({ lazy: true });
    t.false(isMounted(mnt), 'detached from the tree');
    t.deepEqual(await fsp.readdir(mnt), [], 'the mount point shows the empty directory underneath');
    // The open file keeps the connection alive, so the session cannot have ended.
    t.deepEqual(await readAll(fh), content);
    t.false(m.isClosed);
    t.deepEqual(await readAll(fh), content);
    t.true((await fh.stat()).isFile());
    t.false(m.isClosed);

    await fh.close();
    await within('m.closed after the last file closed', m.closed);
    t.true(m.isClosed);
    await assertGone(t, mnt, src, before);
  });
}

test('a process with its working directory inside makes the mount busy', async (t) => {
  const { src, mnt, m } = await mountFixture(t, {}, fill);
  const before = await snapshot(src);
  const child = spawn('sleep', ['600'], { cwd: path.join(mnt, 'sub'), stdio: 'ignore' });
  const exited = new Promise((r) => child.on('exit', r));
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor('child started', () => child.pid !== undefined);
  const err = await t.throwsAsync(m.unmount());
  t.is((err as FusekitError).code, 'EBUSY');
  t.true(isMounted(mnt));
  t.is(await fsp.readFile(path.join(mnt, 'small.txt'), 'utf8'), 'small\n');
  child.kill('SIGKILL');
  await exited;
  await m.unmount();
  await assertGone(t, mnt, src, before);
});

test('force unmount aborts the connection: open files fail, nothing hangs, nothing stays mounted', async (t) => {
  // passthrough off: with kernel passthrough the data of an open file bypasses the connection
  // entirely (see the next test).
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'off' }, fill);
  const before = await snapshot(src);
  // Nothing read yet: a read must reach the daemon (page-cached data would still be readable).
  const fh = await fsp.open(path.join(mnt, 'data.bin'), 'r');
  t.teardown(() => fh.close().catch(() => undefined));
  t.is(await fsp.readFile(path.join(mnt, 'small.txt'), 'utf8'), 'small\n');

  await m.unmount({ force: true });
  t.true(m.isClosed, 'force waits until the request threads have stopped');
  await within('closed', m.closed);
  const e1 = await t.throwsAsync(fh.read(Buffer.alloc(10), 0, 10, 0));
  t.is((e1 as NodeJS.ErrnoException).code, 'ENOTCONN');
  const e2 = await t.throwsAsync(fh.stat());
  t.is((e2 as NodeJS.ErrnoException).code, 'ENOTCONN');
  await fh.close().catch(() => undefined);
  await assertGone(t, mnt, src, before);
});

test('force unmount with kernel passthrough: metadata fails, the mount is gone', async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'auto' }, fill);
  const before = await snapshot(src);
  const fh = await fsp.open(path.join(mnt, 'data.bin'), 'r');
  t.teardown(() => fh.close().catch(() => undefined));
  t.deepEqual(await readAll(fh), content);
  await m.unmount({ force: true });
  t.true(m.isClosed);
  const e = await t.throwsAsync(fh.stat());
  t.is((e as NodeJS.ErrnoException).code, 'ENOTCONN');
  // Reads of a passthrough file go straight to the backing file in the kernel; whatever they
  // return, it can only be the file's own data.
  const got = await readAll(fh).catch(() => null);
  if (got !== null) t.deepEqual(got, content);
  await fh.close().catch(() => undefined);
  await assertGone(t, mnt, src, before);
});

for (const tool of [
  ['umount', (mnt: string) => ['umount', mnt]],
  ['fusermount3 -u', (mnt: string) => ['fusermount3', '-u', mnt]],
] as const) {
  test(`m.closed resolves when the mount is removed from outside (${tool[0]})`, async (t) => {
    const { src, mnt, m } = await mountFixture(t, {}, fill);
    const before = await snapshot(src);
    t.is(await fsp.readFile(path.join(mnt, 'small.txt'), 'utf8'), 'small\n');
    const argv = tool[1](mnt);
    const r = await run(argv[0]!, argv.slice(1));
    t.is(r.code, 0, r.stderr);
    await within('m.closed', m.closed);
    t.true(m.isClosed);
    await m.unmount(); // nothing left to do, still resolves
    await assertGone(t, mnt, src, before);
  });
}

test('unmount refuses when another filesystem was mounted over the mount (EBUSY), then works', async (t) => {
  const { src, mnt, m } = await mountFixture(t, {}, fill);
  const before = await snapshot(src);
  const r = await run('mount', ['-t', 'tmpfs', 'cover', mnt]);
  t.is(r.code, 0, r.stderr);
  t.teardown(() => umountLazy(mnt));
  const err = await t.throwsAsync(within('unmount', m.unmount()));
  t.true(err instanceof FusekitError, String(err));
  t.is((err as FusekitError).code, 'EBUSY');
  t.regex(err.message, /another filesystem is mounted over/);
  t.false(m.isClosed);
  // The covering tmpfs is untouched.
  t.true(readFileSync('/proc/self/mountinfo', 'utf8').includes(' - tmpfs cover '));
  t.is((await run('umount', [mnt])).code, 0);
  t.deepEqual(await fsp.readFile(path.join(mnt, 'data.bin')), content);
  await m.unmount();
  await assertGone(t, mnt, src, before);
});

// ---- the serving process ends

interface ChildLayout {
  src: string;
  mnt: string;
  before: Record<string, string>;
  child: JsonChild;
}

async function childMount(
  t: ExecutionContext,
  mode: 'hold' | 'unref',
  options: Partial<MountOptions> = {},
): Promise<ChildLayout> {
  const root = await tmpdir(t);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  await fill(src);
  const before = await snapshot(src);
  const spec = { options: { source: src, mountpoint: mnt, ...options }, mode };
  const child = spawnChild(t, nodeArgv('test/helpers/child-mount.ts', JSON.stringify(spec)), {
    mountpoints: [mnt],
  });
  const msg = await child.message((m) => 'ok' in m);
  t.true(msg.ok, JSON.stringify(msg));
  return { src, mnt, before, child };
}

test('a serving process killed with SIGKILL leaves a usable mount point (the watchdog detaches it)', async (t) => {
  const { src, mnt, before, child } = await childMount(t, 'hold');
  t.true(isMounted(mnt));
  t.deepEqual(await fsp.readFile(path.join(mnt, 'data.bin')), content);
  child.kill('SIGKILL');
  const { signal } = await within('child exit', child.exited);
  t.is(signal, 'SIGKILL');
  await waitFor('the watchdog to detach the mount', () => !isMounted(mnt), 30_000);
  // No ENOTCONN: the mount point is an ordinary directory again.
  await assertGone(t, mnt, src, before);
});

test('SIGKILL while a file is open: the watchdog still detaches, the file fails instead of hanging', async (t) => {
  const { src, mnt, before, child } = await childMount(t, 'hold', { passthrough: 'off' });
  const fh = await fsp.open(path.join(mnt, 'data.bin'), 'r');
  t.teardown(() => fh.close().catch(() => undefined));
  child.kill('SIGKILL');
  await within('child exit', child.exited);
  await waitFor('the watchdog to detach the mount', () => !isMounted(mnt), 30_000);
  const e = await t.throwsAsync(
    within('read on a dead connection', fh.read(Buffer.alloc(10), 0, 10, 0)),
  );
  t.is((e as NodeJS.ErrnoException).code, 'ENOTCONN');
  await fh.close().catch(() => undefined);
  await assertGone(t, mnt, src, before);
});

const endings: [
  string,
  (c: JsonChild) => void,
  { code: number | null; signal: NodeJS.Signals | null },
][] = [
  ['SIGINT', (c) => c.kill('SIGINT'), { code: null, signal: 'SIGINT' }],
  ['SIGTERM', (c) => c.kill('SIGTERM'), { code: null, signal: 'SIGTERM' }],
  ['SIGHUP', (c) => c.kill('SIGHUP'), { code: null, signal: 'SIGHUP' }],
  ['process.exit()', (c) => c.send('exit'), { code: 0, signal: null }],
  ['an uncaught exception', (c) => c.send('throw'), { code: 1, signal: null }],
];

for (const [what, end, expected] of endings) {
  test(`a serving process ended by ${what} leaves no mount`, async (t) => {
    const { src, mnt, before, child } = await childMount(t, 'hold');
    t.is(await fsp.readFile(path.join(mnt, 'small.txt'), 'utf8'), 'small\n');
    end(child);
    t.deepEqual(await within('child exit', child.exited), expected);
    await waitFor('the mount to be gone', () => !isMounted(mnt), 30_000);
    await assertGone(t, mnt, src, before);
  });

  // Closing that file at exit needs an answer from the very process that is exiting: unless the
  // connection is aborted first, the exit waits forever (an unkillable process, a mount left).
  for (const transport of ['dev', 'auto'] as const) {
    test(`a serving process with a file of its own mount open (transport ${transport}), ended by ${what}, exits and leaves no mount`, async (t) => {
      const { src, mnt, before, child } = await childMount(t, 'hold', { transport });
      child.send('open data.bin');
      await child.message((m) => typeof m.opened === 'number');
      end(child);
      t.deepEqual(await within('child exit', child.exited), expected);
      await waitFor('the mount to be gone', () => !isMounted(mnt), 30_000);
      await assertGone(t, mnt, src, before);
    });
  }
}

const fusectl = mountTable().some((e) => e.fstype === 'fusectl');

test(`a lazily detached mount still in use: unmount is EBUSY, never a hang; force ${fusectl ? 'aborts it (fusectl mounted)' : 'needs fusectl (not mounted)'}`, async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'off' }, fill);
  const before = await snapshot(src);
  const fh = await fsp.open(path.join(mnt, 'data.bin'), 'r');
  t.teardown(() => fh.close().catch(() => undefined));
  await m.unmount({ lazy: true });
  t.false(isMounted(mnt));
  const e1 = await t.throwsAsync(within('unmount', m.unmount()));
  t.is((e1 as FusekitError).code, 'EBUSY');
  t.regex(e1.message, /detached but still in use/);
  t.false(m.isClosed);
  t.deepEqual(await readAll(fh), content, 'still serving the open file');
  if (fusectl) {
    await within('force unmount', m.unmount({ force: true }));
    t.true(m.isClosed);
    const e2 = await t.throwsAsync(fh.read(Buffer.alloc(10), 0, 10, 0));
    t.is((e2 as NodeJS.ErrnoException).code, 'ENOTCONN');
  } else {
    const e2 = await t.throwsAsync(within('force unmount', m.unmount({ force: true })));
    t.is((e2 as FusekitError).code, 'EBUSY');
    t.regex(e2.message, /fusectl/);
    await fh.close();
    await within('m.closed after the last file closed', m.closed);
  }
  await assertGone(t, mnt, src, before);
});

test('an unref()ed mount lets the process exit, and the exit removes the mount', async (t) => {
  const { src, mnt, before, child } = await childMount(t, 'unref');
  t.deepEqual(await within('child exit', child.exited), { code: 0, signal: null });
  await waitFor('the mount to be gone', () => !isMounted(mnt), 30_000);
  await assertGone(t, mnt, src, before);
});

test('a child serving with unmount via its API: the mount ends cleanly', async (t) => {
  const { src, mnt, before, child } = await childMount(t, 'hold');
  child.send('unmount');
  await child.message((m) => m.unmounted === true);
  t.deepEqual(await within('child exit', child.exited), { code: 0, signal: null });
  await assertGone(t, mnt, src, before);
});

// ---- many mounts, statistics

test('eight mounts at once in one process, each serving its own source', async (t) => {
  const root = await tmpdir(t);
  const n = 8;
  const dirs = Array.from({ length: n }, (_, i) => ({
    src: path.join(root, `src${i}`),
    mnt: path.join(root, `mnt${i}`),
    data: Buffer.from(`mount number ${i}\n`.repeat(1000 + i)),
  }));
  for (const d of dirs) {
    await fsp.mkdir(d.src);
    await fsp.mkdir(d.mnt);
    await fsp.writeFile(path.join(d.src, 'id'), d.data);
    await fsp.writeFile(path.join(d.src, `only-in-${path.basename(d.src)}`), '');
  }
  const mounts: Mount[] = await Promise.all(
    dirs.map((d) => mount({ source: d.src, mountpoint: d.mnt })),
  );
  for (const m of mounts) unmountInTeardown(t, m);
  t.is(new Set(dirs.map((d) => devOf(d.mnt))).size, n, 'eight distinct filesystems');
  await Promise.all(
    dirs.map(async (d, i) => {
      t.deepEqual(await fsp.readFile(path.join(d.mnt, 'id')), d.data);
      t.deepEqual((await fsp.readdir(d.mnt)).sort(), ['id', `only-in-src${i}`]);
      await fsp.writeFile(path.join(d.mnt, 'written'), `via mnt${i}`);
    }),
  );
  for (const [i, d] of dirs.entries())
    t.is(await fsp.readFile(path.join(d.src, 'written'), 'utf8'), `via mnt${i}`);
  await Promise.all(mounts.map((m) => m.unmount()));
  for (const d of dirs) {
    t.false(isMounted(d.mnt));
    t.deepEqual(await fsp.readdir(d.mnt), []);
  }
});

test('stats(): operation counts grow with use and errors are counted by errno name', async (t) => {
  const { mnt, m } = await mountFixture(t, { transport: 'dev' }, fill);
  const s0 = m.stats();
  await fsp.writeFile(path.join(mnt, 'new.txt'), 'hello');
  t.is(await fsp.readFile(path.join(mnt, 'new.txt'), 'utf8'), 'hello');
  await fsp.readdir(path.join(mnt, 'sub'));
  for (let i = 0; i < 5; i++) {
    await t.throwsAsync(fsp.stat(path.join(mnt, `missing-${i}`)), { code: 'ENOENT' });
  }
  const s1 = m.stats();
  t.true(s1.ops.create!.count >= 1);
  t.true(s1.ops.lookup!.count > (s0.ops.lookup?.count ?? 0));
  t.true(s1.ops.opendir!.count >= 1);
  // negativeTimeout 0: every stat of a missing name is a failing lookup.
  t.true((s1.ops.lookup!.errnos.ENOENT ?? 0) >= 5, JSON.stringify(s1.ops.lookup));
  t.true(s1.ops.lookup!.errors >= 5);
  t.is(s1.ops.create!.errors, 0);
  const lat = s1.ops.lookup!.latencyLog2Ns.reduce((a, b) => a + b, 0);
  t.is(lat, s1.ops.lookup!.count, 'every lookup is in the latency histogram');

  for (let i = 0; i < 3; i++) await t.throwsAsync(fsp.stat(path.join(mnt, `more-missing-${i}`)));
  const s2 = m.stats();
  t.true(s2.ops.lookup!.count >= s1.ops.lookup!.count + 3);
  t.true(s2.ops.lookup!.errnos.ENOENT! >= s1.ops.lookup!.errnos.ENOENT! + 3);
  t.is(s2.transport, 'dev');
  t.is(m.transport, 'dev');
  t.true(s2.requests.dev > 0);
  t.is(s2.requests.ioUring, 0);
});

const uringOn = ['Y', '1'].includes(
  readFileSync('/sys/module/fuse/parameters/enable_uring', 'utf8').trim(),
);

for (const transport of ['auto', 'io_uring'] as const) {
  test(`transport '${transport}' reports what carries the requests (enable_uring=${uringOn ? 'Y' : 'N'})`, async (t) => {
    if (!uringOn && transport === 'io_uring') {
      const root = await tmpdir(t);
      const err = await t.throwsAsync(mount({ source: root, mountpoint: root, transport }));
      t.is((err as FusekitError).code, 'EOPNOTSUPP');
      return;
    }
    const { mnt, m } = await mountFixture(t, { transport }, fill);
    t.deepEqual(await fsp.readFile(path.join(mnt, 'data.bin')), content);
    const s = m.stats();
    t.is(m.transport, uringOn ? 'io_uring' : 'dev');
    t.is(s.transport, m.transport);
    if (uringOn) t.true(s.requests.ioUring > 0);
    else t.is(s.requests.ioUring, 0);
  });
}

// ---- resources

for (const [label, kind, options] of [
  ['passthrough, descriptors', 'pt', { fileHandles: 'off' }],
  ['passthrough, file handles', 'pt', { fileHandles: 'auto' }],
  ['overlay', 'ov', {}],
] as const) {
  for (const force of [false, true]) {
    test(`${label}: ${force ? 'a forced' : 'an'} unmount closes every descriptor at once, without garbage collection`, async (t) => {
      const root = await tmpdir(t);
      const mnt = path.join(root, 'mnt');
      await fsp.mkdir(mnt);
      let opts: MountOptions;
      if (kind === 'pt') {
        const src = path.join(root, 'src');
        await fsp.mkdir(src);
        opts = { source: src, mountpoint: mnt, ...options };
      } else {
        for (const d of ['lower', 'upper', 'work']) await fsp.mkdir(path.join(root, d));
        await fsp.writeFile(path.join(root, 'lower', 'low'), 'low\n');
        opts = {
          mountpoint: mnt,
          overlay: {
            lower: [path.join(root, 'lower')],
            upper: path.join(root, 'upper'),
            work: path.join(root, 'work'),
          },
        };
      }
      t.teardown(async () => {
        if (isMounted(mnt)) umountLazy(mnt);
      });
      const r = await run(
        process.execPath,
        nodeArgv(
          'test/helpers/child-fds.ts',
          JSON.stringify({ options: opts, files: 400, force }),
        ).slice(1),
        { timeoutMs: 60_000 },
      );
      t.is(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
        baseline: number;
        during: number;
        after: number;
        left: string[];
        inodes: number;
      };
      t.log(out);
      t.true(out.during >= out.baseline + 1, 'the mount holds descriptors while it serves');
      t.deepEqual(out.left, [], 'every descriptor of the mount is closed once unmount() resolved');
      t.is(out.after, out.baseline);
      t.false(isMounted(mnt));
    });
  }
}
