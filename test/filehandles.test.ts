// File-handle mode: inodes keep kernel file handles and only a bounded cache of descriptors, so a
// tree far larger than RLIMIT_NOFILE can be served. The big test walks a million files through a
// daemon limited to 4096 descriptors (it runs in a child started by prlimit: the daemon lives in
// the mounting process); the others check the mode reporting and that a tiny cache (maxFds 16)
// changes nothing observable.
import test, { type ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

import { FusekitError, type MountOptions, type MountStats, mount } from '../lib';
import { mountFixture, tmpdir, unmountInTeardown } from './helpers/fixture';
import * as ops from './helpers/fsops';
import { toolsPath } from './helpers/idmap-tools';

const repo = path.resolve(__dirname, '..');

function mounted(dir: string): boolean {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

/** Runs a command to completion (asynchronously: the event loop stays free). */
function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('error', reject);
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A mount held by a child process under `prlimit --nofile=N:N`; torn down with the test. */
class MountChild {
  readonly proc: ChildProcess;
  readonly lines: Record<string, unknown>[] = [];
  stderr = '';
  readonly closed: Promise<void>;
  #wake: (() => void) | undefined;

  constructor(t: ExecutionContext, nofile: number, options: MountOptions) {
    const script = path.join(repo, 'test', 'helpers', 'idmap-mount-child.ts');
    const tsx = path.join(repo, 'node_modules', 'tsx', 'dist', 'loader.mjs');
    this.proc = spawn(
      'prlimit',
      [
        `--nofile=${nofile}:${nofile}`,
        process.execPath,
        '--import',
        `file://${tsx}`,
        script,
        JSON.stringify(options),
      ],
      { stdio: ['pipe', 'pipe', 'pipe'], cwd: repo },
    );
    readline.createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      if (l.startsWith('{')) this.lines.push(JSON.parse(l) as Record<string, unknown>);
      this.#wake?.();
    });
    this.proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.closed = new Promise((r) => this.proc.on('close', () => r()));
    void this.closed.then(() => this.#wake?.());
    t.teardown(async () => {
      if (this.proc.exitCode === null && this.proc.signalCode === null) {
        this.proc.stdin!.end('exit\n');
        const timer = setTimeout(() => this.proc.kill('SIGKILL'), 30_000);
        await this.closed;
        clearTimeout(timer);
      }
      // The child detaches its mount; never leave one behind if it could not.
      const mnt = options.mountpoint;
      if (mounted(mnt)) await run('umount', ['-l', mnt], 30_000);
    });
  }

  async next(pred: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    for (;;) {
      const i = this.lines.findIndex(pred);
      if (i >= 0) return this.lines.splice(i, 1)[0]!;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null)
        throw new Error(`mount child exited: ${this.stderr}`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 1000);
        this.#wake = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
  }

  async stats(): Promise<MountStats> {
    this.proc.stdin!.write('stats\n');
    return (await this.next((l) => 'stats' in l)).stats as MountStats;
  }
}

const N_DIRS = 1000;
const N_FILES = 1000;

test.serial('a million files walk through a daemon limited to 4096 descriptors', async (t) => {
  t.timeout(15 * 60_000);
  // /var/tmp: a real disk filesystem (with file handles), and big trees do not belong in /tmp.
  const root = await fsp.mkdtemp(path.join('/var/tmp', 'fusekit-fh-'));
  t.teardown(() => run('rm', ['-rf', root], 10 * 60_000).then(() => undefined));
  await fsp.chmod(root, 0o755);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  const mnt2 = path.join(root, 'mnt2');
  for (const d of [src, mnt, mnt2]) await fsp.mkdir(d);
  const made = await run(
    toolsPath(),
    ['mktree', src, String(N_DIRS), String(N_FILES)],
    10 * 60_000,
  );
  t.is(made.code, 0, made.stderr);
  // A sample with contents, owners and modes of their own, to compare after the walk.
  const samples: string[] = [];
  for (let i = 0; i < 300; i++) {
    const d = (i * 7919) % N_DIRS;
    const f = (i * 104729) % N_FILES;
    const rel = `d${String(d).padStart(4, '0')}/f${String(f).padStart(4, '0')}`;
    if (samples.includes(rel)) continue;
    samples.push(rel);
    const p = path.join(src, rel);
    fs.writeFileSync(p, `sample ${rel} ${'x'.repeat(i)}`);
    fs.chownSync(p, 1000 + i, 2000 + i);
    fs.chmodSync(p, 0o600 + (i % 0o100));
  }

  const child = new MountChild(t, 4096, { source: src, mountpoint: mnt });
  const ok = await child.next(() => true);
  t.true(ok.ok, JSON.stringify(ok));
  t.is(ok.nofile, '4096/4096', 'the daemon runs with the limit');
  const before = await child.stats();
  t.is(before.inodeFds.mode, 'handles');
  t.is(before.inodeFds.capacity, 2048, 'default: RLIMIT_NOFILE less a reserve of half');

  // The walk, from another process. -size forces a lookup (and attributes) of every file.
  const walking = run('sh', ['-c', `find ${mnt} -type f -size -100000k | wc -l`], 12 * 60_000);
  // Sampled while it runs (anything on the machine dropping the kernel's caches makes the kernel
  // forget inodes, so the end state alone proves little): the cache never exceeds its capacity.
  let done = false;
  void walking.finally(() => (done = true));
  let maxInodes = 0;
  let maxOpen = 0;
  while (!done) {
    const s = await child.stats();
    maxInodes = Math.max(maxInodes, s.inodes);
    maxOpen = Math.max(maxOpen, s.inodeFds.open);
    await new Promise((r) => setTimeout(r, 1000));
  }
  const walk = await walking;
  t.is(walk.code, 0, walk.stderr);
  t.is(walk.stdout.trim(), String(N_DIRS * N_FILES));
  t.is(walk.stderr, '', 'no errors on the way');

  // Every sample, read through the mount, is its source file.
  for (const rel of samples) {
    const a = fs.lstatSync(path.join(mnt, rel));
    const b = fs.lstatSync(path.join(src, rel));
    t.deepEqual(
      [a.mode, a.uid, a.gid, a.size, a.mtimeMs],
      [b.mode, b.uid, b.gid, b.size, b.mtimeMs],
      rel,
    );
    t.deepEqual(fs.readFileSync(path.join(mnt, rel)), fs.readFileSync(path.join(src, rel)), rel);
  }
  const after = await child.stats();
  t.log({ maxInodes, maxOpen, inodes: after.inodes, inodeFds: after.inodeFds });
  t.is(after.inodeFds.mode, 'handles');
  t.true(after.inodeFds.open <= after.inodeFds.capacity, 'the cache stays bounded');
  // While walking, each request thread may hold one new descriptor for a moment before the
  // clock evicts one: a few over, never growing with the tree.
  t.true(maxOpen <= after.inodeFds.capacity + 16, 'also while walking');
  t.true(maxInodes > after.inodeFds.capacity * 10, 'far more inodes known than descriptors held');
  t.true(after.inodeFds.reopens > 0, 'evicted descriptors were reopened from their handles');
  const pid = ok.pid as number;
  t.true(fs.readdirSync(`/proc/${pid}/fd`).length <= 4096);

  // The control: the same limit in descriptor mode runs out long before.
  const off = new MountChild(t, 4096, { source: src, mountpoint: mnt2, fileHandles: 'off' });
  const ok2 = await off.next(() => true);
  t.true(ok2.ok, JSON.stringify(ok2));
  t.is((await off.stats()).inodeFds.mode, 'descriptors');
  const dirs = Array.from({ length: 10 }, (_, i) =>
    path.join(mnt2, `d${String(i).padStart(4, '0')}`),
  );
  const short = await run(
    'sh',
    ['-c', `find ${dirs.join(' ')} -type f -size -100000k | wc -l`],
    5 * 60_000,
  );
  t.regex(short.stderr, /Too many open files/);
  t.true(Number(short.stdout.trim()) < 10 * N_FILES);
});

test.serial(
  'overlay: a million files in a lower layer walk through a daemon limited to 4096 descriptors',
  async (t) => {
    t.timeout(20 * 60_000);
    const root = await fsp.mkdtemp(path.join('/var/tmp', 'fusekit-ovfh-'));
    t.teardown(() => run('rm', ['-rf', root], 10 * 60_000).then(() => undefined));
    await fsp.chmod(root, 0o755);
    const lower = path.join(root, 'lower');
    const [upper, work, mnt] = ['upper', 'work', 'mnt'].map((d) => path.join(root, d)) as [
      string,
      string,
      string,
    ];
    const [upper2, work2, mnt2] = ['upper2', 'work2', 'mnt2'].map((d) => path.join(root, d)) as [
      string,
      string,
      string,
    ];
    for (const d of [lower, upper, work, mnt, upper2, work2, mnt2]) await fsp.mkdir(d);
    const made = await run(
      toolsPath(),
      ['mktree', lower, String(N_DIRS), String(N_FILES)],
      10 * 60_000,
    );
    t.is(made.code, 0, made.stderr);
    const samples: string[] = [];
    for (let i = 0; i < 200; i++) {
      const rel = `d${String((i * 7919) % N_DIRS).padStart(4, '0')}/f${String((i * 104729) % N_FILES).padStart(4, '0')}`;
      if (samples.includes(rel)) continue;
      samples.push(rel);
      const p = path.join(lower, rel);
      fs.writeFileSync(p, `lower sample ${rel} ${'y'.repeat(i)}`);
      fs.chownSync(p, 1000 + i, 2000 + i);
      fs.chmodSync(p, 0o600 + (i % 0o100));
    }

    const child = new MountChild(t, 4096, {
      overlay: { lower: [lower], upper, work },
      mountpoint: mnt,
    });
    const ok = await child.next(() => true);
    t.true(ok.ok, JSON.stringify(ok));
    t.is(ok.nofile, '4096/4096', 'the daemon runs with the limit');
    const before = await child.stats();
    t.is(before.inodeFds.mode, 'handles', 'every layer is on a filesystem with file handles');
    t.is(before.inodeFds.capacity, 2048, 'default: RLIMIT_NOFILE less a reserve of half');

    const walking = run('sh', ['-c', `find ${mnt} -type f -size -100000k | wc -l`], 15 * 60_000);
    let done = false;
    void walking.finally(() => (done = true));
    let maxInodes = 0;
    let maxOpen = 0;
    while (!done) {
      const s = await child.stats();
      maxInodes = Math.max(maxInodes, s.inodes);
      maxOpen = Math.max(maxOpen, s.inodeFds.open);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const walk = await walking;
    t.is(walk.code, 0, walk.stderr);
    t.is(walk.stdout.trim(), String(N_DIRS * N_FILES));
    t.is(walk.stderr, '', 'no errors on the way');

    // Every sample, read through the overlay, is its lower file (attributes and bytes).
    const attrs = (st: fs.Stats): number[] => [st.mode, st.uid, st.gid, st.size, st.mtimeMs];
    for (const rel of samples) {
      const a = fs.lstatSync(path.join(mnt, rel));
      const b = fs.lstatSync(path.join(lower, rel));
      t.deepEqual(attrs(a), attrs(b), rel);
      t.deepEqual(
        fs.readFileSync(path.join(mnt, rel)),
        fs.readFileSync(path.join(lower, rel)),
        rel,
      );
    }
    const after = await child.stats();
    t.log({ maxInodes, maxOpen, inodes: after.inodes, inodeFds: after.inodeFds });
    t.is(after.inodeFds.mode, 'handles');
    t.true(after.inodeFds.open <= after.inodeFds.capacity, 'the cache stays bounded');
    // While walking, states in use by a request cannot be closed: a few over, never growing with
    // the tree.
    t.true(maxOpen <= after.inodeFds.capacity + 64, 'also while walking');
    t.true(maxInodes > after.inodeFds.capacity * 10, 'far more inodes known than descriptors held');
    t.true(after.inodeFds.reopens > 0, 'evicted descriptors were reopened from their handles');
    const pid = ok.pid as number;
    t.true(fs.readdirSync(`/proc/${pid}/fd`).length <= 4096);

    // Copy-up of lower files whose descriptors the walk evicted long ago, then rename the copies
    // (their handles follow them) and read them back after more evictions.
    const changed = samples.slice(0, 20);
    const lowerBefore = changed.map((rel) => fs.readFileSync(path.join(lower, rel)));
    for (const rel of changed) fs.appendFileSync(path.join(mnt, rel), ' appended');
    for (const [i, rel] of changed.entries()) {
      const want = Buffer.concat([lowerBefore[i]!, Buffer.from(' appended')]);
      t.deepEqual(fs.readFileSync(path.join(mnt, rel)), want, rel);
      t.deepEqual(fs.readFileSync(path.join(upper, rel)), want, `${rel} in the upper layer`);
      t.deepEqual(
        fs.readFileSync(path.join(lower, rel)),
        lowerBefore[i],
        `${rel}: lower unchanged`,
      );
      const a = fs.lstatSync(path.join(mnt, rel));
      const b = fs.lstatSync(path.join(lower, rel));
      t.deepEqual([a.mode, a.uid, a.gid], [b.mode, b.uid, b.gid], `${rel}: copied-up attributes`);
      fs.renameSync(path.join(mnt, rel), path.join(mnt, `${rel}.moved`));
    }
    // Evict everything again: walk two thousand other files.
    const rewalk = await run(
      'sh',
      ['-c', `find ${mnt}/d0998 ${mnt}/d0999 -type f -size -100000k | wc -l`],
      5 * 60_000,
    );
    t.is(rewalk.stdout.trim(), String(2 * N_FILES), rewalk.stderr);
    for (const [i, rel] of changed.entries()) {
      const want = Buffer.concat([lowerBefore[i]!, Buffer.from(' appended')]);
      t.deepEqual(fs.readFileSync(path.join(mnt, `${rel}.moved`)), want, `${rel}.moved`);
      t.false(fs.existsSync(path.join(mnt, rel)), `${rel} is gone (whiteout)`);
    }
    const end = await child.stats();
    t.true(end.inodeFds.open <= end.inodeFds.capacity);

    // The control: the same limit in descriptor mode runs out long before.
    const off = new MountChild(t, 4096, {
      overlay: { lower: [lower], upper: upper2, work: work2 },
      mountpoint: mnt2,
      fileHandles: 'off',
    });
    const ok2 = await off.next(() => true);
    t.true(ok2.ok, JSON.stringify(ok2));
    t.is((await off.stats()).inodeFds.mode, 'descriptors');
    const dirs = Array.from({ length: 10 }, (_, i) =>
      path.join(mnt2, `d${String(i).padStart(4, '0')}`),
    );
    const short = await run(
      'sh',
      ['-c', `find ${dirs.join(' ')} -type f -size -100000k | wc -l`],
      5 * 60_000,
    );
    t.regex(short.stderr, /Too many open files/);
    t.true(Number(short.stdout.trim()) < 10 * N_FILES);
  },
);

test("fileHandles 'off' keeps one descriptor per inode and says so", async (t) => {
  const f = await mountFixture(t, { fileHandles: 'off' }, async (src) => {
    for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(src, `f${i}`), String(i));
  });
  // Held open, so nothing (not even caches dropped machine-wide) makes the kernel forget them.
  const held = Array.from({ length: 50 }, (_, i) => fs.openSync(path.join(f.mnt, `f${i}`), 'r'));
  t.teardown(() => held.forEach((fd) => fs.closeSync(fd)));
  const st = f.m.stats();
  t.is(st.inodeFds.mode, 'descriptors');
  t.is(st.inodeFds.reopens, 0);
  t.true(st.inodeFds.open >= 50, 'a descriptor for every known inode');
  t.is(st.inodeFds.open, st.inodes);
});

test("fileHandles 'auto' uses handles where it can, 'on' and maxFds set the cache", async (t) => {
  const a = await mountFixture(t);
  t.is(a.m.stats().inodeFds.mode, 'handles', 'this source (a disk filesystem) has them');
  const b = await mountFixture(t, { fileHandles: 'on', maxFds: 64 });
  t.deepEqual([b.m.stats().inodeFds.mode, b.m.stats().inodeFds.capacity], ['handles', 64]);
});

/**
 * 300 files held open at once through a daemon limited to 512 descriptors, whose cache holds most
 * of them: the daemon's opens meet EMFILE unless the cache gives descriptors back.
 */
async function openAllUnderPressure(t: ExecutionContext, overlay: boolean): Promise<void> {
  const root = await tmpdir(t);
  const [data, upper, work, mnt] = ['data', 'upper', 'work', 'mnt'].map((d) =>
    path.join(root, d),
  ) as [string, string, string, string];
  for (const d of [data, upper, work, mnt]) fs.mkdirSync(d);
  const names = Array.from({ length: 300 }, (_, i) => `f${String(i).padStart(3, '0')}`);
  for (const [i, n] of names.entries())
    fs.writeFileSync(path.join(data, n), `${n} ${'z'.repeat(i)}`);
  const options: MountOptions = overlay
    ? { overlay: { lower: [data], upper, work }, mountpoint: mnt }
    : { source: data, mountpoint: mnt };
  const child = new MountChild(t, 512, options);
  const ok = await child.next(() => true);
  t.true(ok.ok, JSON.stringify(ok));
  const before = await child.stats();
  t.deepEqual([before.inodeFds.mode, before.inodeFds.capacity], ['handles', 512 - 256]);
  // Every name looked up: the cache fills to its capacity. (The kernel may forget some of them
  // when something drops its caches: the opens below look those up again.)
  for (const n of names) fs.lstatSync(path.join(mnt, n));
  const full = await child.stats();

  const held: fsp.FileHandle[] = [];
  t.teardown(() => Promise.all(held.map((h) => h.close())).then(() => undefined));
  // All at once: several request threads run short of descriptors together.
  const opened = await Promise.allSettled(names.map((n) => fsp.open(path.join(mnt, n), 'r')));
  for (const o of opened) if (o.status === 'fulfilled') held.push(o.value);
  t.deepEqual(
    opened.filter((o) => o.status === 'rejected').map((o) => String(o.reason)),
    [],
    'every open succeeded',
  );
  if (held.length !== names.length) return;
  for (const [i, h] of held.entries()) {
    const want = fs.readFileSync(path.join(data, names[i]!));
    const got = Buffer.alloc(want.length + 16);
    const { bytesRead } = await h.read(got, 0, got.length, 0);
    t.deepEqual(got.subarray(0, bytesRead), want, names[i]);
  }
  const after = await child.stats();
  t.log({ before: before.inodeFds, full: full.inodeFds, after: after.inodeFds });
  t.true(after.inodeFds.capacity < before.inodeFds.capacity, 'the cache gave descriptors back');
  t.true(after.inodeFds.open <= after.inodeFds.capacity);
  t.true(fs.readdirSync(`/proc/${ok.pid as number}/fd`).length <= 512);
  // Still serving: a new file through the mount, read back from where it landed.
  await fsp.writeFile(path.join(mnt, 'new'), 'after the shortage');
  t.is(fs.readFileSync(path.join(overlay ? upper : data, 'new'), 'utf8'), 'after the shortage');

  // The shortage ends with the open files: once none came for a while (5 s), the cache grows
  // back to its size as it is used, instead of staying small for the daemon's life.
  await Promise.all(held.splice(0).map((h) => h.close()));
  await new Promise((r) => setTimeout(r, 6_000));
  for (const n of names) fs.readFileSync(path.join(mnt, n)); // an open takes the inode's descriptor
  const regrown = await child.stats();
  t.log({ regrown: regrown.inodeFds });
  t.true(regrown.inodeFds.capacity > after.inodeFds.capacity, 'the cache grew back');
  t.true(regrown.inodeFds.capacity <= before.inodeFds.capacity, 'no larger than configured');
}

test('open files take descriptors back from the cache when the daemon runs out', async (t) => {
  await openAllUnderPressure(t, false);
});

test('overlay: open files take descriptors back from the cache when the daemon runs out', async (t) => {
  await openAllUnderPressure(t, true);
});

test("fileHandles 'on' over a filesystem without file handles fails clearly; 'auto' falls back", async (t) => {
  // procfs cannot encode file handles (name_to_handle_at: EOPNOTSUPP).
  const src = '/proc/sys';
  const mnt = path.join(await tmpdir(t), 'mnt');
  await fsp.mkdir(mnt);
  const err = await t.throwsAsync(
    mount({ source: src, mountpoint: mnt, fileHandles: 'on', readOnly: true }),
  );
  t.true(err instanceof FusekitError);
  t.is((err as FusekitError).code, 'EOPNOTSUPP');
  t.regex(err.message, /file-handle mode is not available for \/proc\/sys/);
  t.false(mounted(mnt), 'nothing left mounted');
  const m = await mount({ source: src, mountpoint: mnt, fileHandles: 'auto', readOnly: true });
  unmountInTeardown(t, m);
  t.is(m.stats().inodeFds.mode, 'descriptors');
  t.deepEqual(
    fs.readdirSync(path.join(mnt, 'kernel')).sort(),
    fs.readdirSync('/proc/sys/kernel').sort(),
  );
});

// ---- correctness under eviction

/** Deterministic PRNG (mulberry32), so a failure can be replayed from the logged seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Everything observable about a tree: names, types, contents, modes, link counts, xattrs. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string): void => {
    for (const n of fs.readdirSync(d).sort()) {
      const p = path.join(d, n);
      const r = rel ? `${rel}/${n}` : n;
      const st = fs.lstatSync(p);
      const x = ops
        .listxattr(p)
        .sort()
        .map((k) => `${k}=${ops.getxattr(p, k).value.toString('hex')}`);
      if (st.isDirectory()) {
        out[r] = `dir ${(st.mode & 0o7777).toString(8)} ${x.join(',')}`;
        walk(p, r);
      } else {
        out[r] =
          `file ${(st.mode & 0o7777).toString(8)} n${st.nlink} ${st.size} ` +
          `${fs.readFileSync(p).toString('hex')} ${x.join(',')}`;
      }
    }
  };
  walk(dir, '');
  return out;
}

test('maxFds 16: random create/rename/unlink/read/write/chmod/xattr through the mount match a plain directory', async (t) => {
  const f = await mountFixture(t, { fileHandles: 'on', maxFds: 16 });
  const ctl = path.join(f.root, 'ctl');
  await fsp.mkdir(ctl);
  t.deepEqual([f.m.stats().inodeFds.mode, f.m.stats().inodeFds.capacity], ['handles', 16]);
  const seed = Number(process.env.FUSEKIT_SEED ?? Date.now() % 1e9);
  t.log(`seed ${seed} (FUSEKIT_SEED replays it)`);
  const rnd = prng(seed);
  const pick = <T>(a: T[]): T => a[Math.floor(rnd() * a.length)]!;
  const dirs = ['', 'a', 'b', 'c', 'a/x', 'b/y'];
  for (const d of dirs.slice(1)) {
    await fsp.mkdir(path.join(f.mnt, d));
    await fsp.mkdir(path.join(ctl, d));
  }
  const name = (): string => path.join(pick(dirs), `n${Math.floor(rnd() * 400)}`);
  const data = (): Buffer =>
    Buffer.from(Array.from({ length: Math.floor(rnd() * 3000) }, () => Math.floor(rnd() * 256)));

  // Sampled as it runs: anything on the machine dropping the kernel's caches makes it forget.
  let maxInodes = 0;
  // One step: the same call on both trees; what each returned (data or errno) must agree.
  const step = (i: number): void => {
    const r = rnd();
    let what: string;
    let act: (root: string) => string;
    if (r < 0.25) {
      const n = name();
      const d = data();
      what = `create ${n}`;
      act = (root) => String(ops.errnoOf(() => fs.writeFileSync(path.join(root, n), d)));
    } else if (r < 0.35) {
      const n = name();
      const d = data();
      const off = Math.floor(rnd() * 4000);
      what = `pwrite ${n} @${off}`;
      act = (root) =>
        ops.errnoOf(() => {
          const fd = fs.openSync(path.join(root, n), 'r+');
          try {
            fs.writeSync(fd, d, 0, d.length, off);
          } finally {
            fs.closeSync(fd);
          }
        });
    } else if (r < 0.5) {
      const n = name();
      what = `read ${n}`;
      act = (root) => {
        try {
          return fs.readFileSync(path.join(root, n)).toString('hex');
        } catch (e) {
          return (e as NodeJS.ErrnoException).code ?? 'ERR';
        }
      };
    } else if (r < 0.62) {
      const a = name();
      const b = name();
      what = `rename ${a} ${b}`;
      act = (root) => ops.errnoOf(() => fs.renameSync(path.join(root, a), path.join(root, b)));
    } else if (r < 0.7) {
      const n = name();
      what = `unlink ${n}`;
      act = (root) => ops.errnoOf(() => fs.unlinkSync(path.join(root, n)));
    } else if (r < 0.76) {
      const a = name();
      const b = name();
      what = `link ${a} ${b}`;
      act = (root) => ops.errnoOf(() => fs.linkSync(path.join(root, a), path.join(root, b)));
    } else if (r < 0.83) {
      const n = name();
      const mode = Math.floor(rnd() * 0o777) | 0o600;
      what = `chmod ${n} ${mode.toString(8)}`;
      act = (root) => ops.errnoOf(() => fs.chmodSync(path.join(root, n), mode));
    } else if (r < 0.88) {
      const n = name();
      const len = Math.floor(rnd() * 5000);
      what = `truncate ${n} ${len}`;
      act = (root) => ops.errnoOf(() => fs.truncateSync(path.join(root, n), len));
    } else if (r < 0.93) {
      const n = name();
      const v = data().subarray(0, 64);
      what = `setxattr ${n}`;
      act = (root) => ops.errnoOf(() => ops.setxattr(path.join(root, n), `user.k${i % 3}`, v));
    } else if (r < 0.97) {
      const n = name();
      what = `stat ${n}`;
      act = (root) => {
        try {
          const st = fs.lstatSync(path.join(root, n));
          return `${st.mode} ${st.nlink} ${st.size}`;
        } catch (e) {
          return (e as NodeJS.ErrnoException).code ?? 'ERR';
        }
      };
    } else {
      const d = pick(dirs);
      what = `readdir ${d}`;
      act = (root) => fs.readdirSync(path.join(root, d)).sort().join(',');
    }
    const got = act(f.mnt);
    const want = act(ctl);
    if (got !== want)
      t.fail(`step ${i}: ${what}: mount ${got.slice(0, 80)} vs plain ${want.slice(0, 80)}`);
    const st = f.m.stats();
    if (st.inodeFds.open > st.inodeFds.capacity)
      t.fail(`step ${i}: ${what}: ${st.inodeFds.open} descriptors cached`);
    maxInodes = Math.max(maxInodes, st.inodes);
  };
  for (let i = 0; i < 3000; i++) {
    step(i);
    // Now and then make the kernel drop what it cached, so inodes are looked up again.
    if (i % 500 === 499) await f.m.invalidate();
  }
  t.deepEqual(snapshot(f.mnt), snapshot(ctl));
  t.deepEqual(snapshot(f.src), snapshot(ctl), 'and the source holds the same');
  const s = f.m.stats().inodeFds;
  t.log(s, { maxInodes });
  t.true(s.open <= 16);
  t.true(s.reopens > 0, 'descriptors were evicted and reopened');
  t.true(maxInodes > 100, 'far more inodes than descriptors');
});

test('an inode number reused by a new file after a delete behind the mount is a new file', async (t) => {
  // File-handle mode holds nothing that keeps a deleted file's inode number from being reused:
  // deleted in the source while the kernel still knows it, its number can go to the next new
  // file, which must not be taken for the old one (its handle is stale: ESTALE).
  // attrTimeout 0: every stat below reaches the daemon, and so its descriptor cache.
  const f = await mountFixture(t, { fileHandles: 'on', maxFds: 16, attrTimeout: 0 });
  const reused: number[] = [];
  for (let j = 0; j < 20; j++) fs.writeFileSync(path.join(f.mnt, `other${j}`), 'o');
  for (let i = 0; i < 200; i++) {
    fs.writeFileSync(path.join(f.mnt, `old${i}`), 'old');
    const ino = fs.lstatSync(path.join(f.src, `old${i}`)).ino;
    fs.lstatSync(path.join(f.mnt, `old${i}`)); // the kernel keeps it
    // The daemon's descriptor of it leaves the cache (a cached one would pin the number).
    for (let j = 0; j < 20; j++) fs.lstatSync(path.join(f.mnt, `other${j}`));
    fs.unlinkSync(path.join(f.src, `old${i}`)); // behind its back
    fs.writeFileSync(path.join(f.mnt, `new${i}`), `new ${i}`);
    if (fs.lstatSync(path.join(f.src, `new${i}`)).ino === ino) reused.push(i);
    t.is(fs.readFileSync(path.join(f.mnt, `new${i}`), 'utf8'), `new ${i}`);
    t.is(fs.lstatSync(path.join(f.mnt, `new${i}`)).size, `new ${i}`.length);
    fs.unlinkSync(path.join(f.mnt, `new${i}`));
  }
  t.log(`${reused.length} of 200 new files got the deleted one's inode number`);
  t.true(reused.length > 0, 'the filesystem did reuse numbers (else this proves nothing)');
});

test('a name replaced behind the mount by a file that reuses the old inode number is the new file', async (t) => {
  // A lookup of a name the mount answered before trusts one stat to find the inode it knows: the
  // handle must still tell a new file that got the old one's number from the old one. Entry and
  // attribute timeouts 0: every stat below is a lookup in the daemon.
  const f = await mountFixture(t, {
    fileHandles: 'on',
    maxFds: 16,
    entryTimeout: 0,
    attrTimeout: 0,
  });
  const reused: number[] = [];
  for (let j = 0; j < 20; j++) fs.writeFileSync(path.join(f.mnt, `other${j}`), 'o');
  for (let i = 0; i < 200; i++) {
    const name = `x${i}`;
    fs.writeFileSync(path.join(f.src, name), 'old');
    const old = fs.lstatSync(path.join(f.mnt, name)); // the kernel keeps the inode
    for (let j = 0; j < 20; j++) fs.lstatSync(path.join(f.mnt, `other${j}`)); // its fd leaves
    fs.unlinkSync(path.join(f.src, name)); // behind the mount's back, then a new file
    fs.writeFileSync(path.join(f.src, name), `new ${i}`);
    const now = fs.lstatSync(path.join(f.src, name));
    if (now.ino === old.ino) reused.push(i);
    const seen = fs.lstatSync(path.join(f.mnt, name));
    t.is(seen.ino, now.ino);
    t.is(seen.size, `new ${i}`.length);
    t.is(fs.readFileSync(path.join(f.mnt, name), 'utf8'), `new ${i}`);
    fs.unlinkSync(path.join(f.mnt, name));
  }
  t.log(`${reused.length} of 200 new files got the replaced one's inode number`);
  t.true(reused.length > 0, 'the filesystem did reuse numbers (else this proves nothing)');
});

test('a daemon out of descriptors still lists every name: readdirplus drops none', async (t) => {
  const root = await tmpdir(t);
  const [data, mnt] = ['data', 'mnt'].map((d) => path.join(root, d));
  for (const d of [data!, mnt!]) fs.mkdirSync(d);
  fs.mkdirSync(path.join(data!, 'b'));
  const names = Array.from({ length: 600 }, (_, i) => `g${i}`);
  for (const n of names) fs.writeFileSync(path.join(data!, 'b', n), '');
  // One descriptor per inode under a limit of 100.
  const child = new MountChild(t, 100, { source: data!, mountpoint: mnt!, fileHandles: 'off' });
  const ok = await child.next(() => true);
  t.true(ok.ok, JSON.stringify(ok));
  // Opened first: the daemon's directory stream needs a descriptor of its own.
  const dir = await fsp.opendir(path.join(mnt!, 'b'));
  // Look names up until the descriptors run out: the kernel keeps those, and a lookup of a name
  // the daemon already answered needs no new descriptor.
  const known = await run(
    'sh',
    ['-c', `cd ${mnt}/b && for i in $(seq 0 599); do stat -c %i g$i >/dev/null || break; done`],
    60_000,
  );
  t.regex(known.stderr, /Too many open files/, 'the daemon ran out of descriptors');
  // The first getdents of b is a readdirplus: the known names' lookups succeed, the others fail,
  // interleaved in the directory's order. Those must be listed (without attributes), not dropped
  // from the listing unseen.
  const listed: string[] = [];
  for await (const e of dir) listed.push(e.name);
  t.deepEqual(listed.sort(), [...names].sort());
});
