// Many processes at once against one mount: lookup vs forget under cache pressure, readdirplus
// during churn, shared passthrough backing files with concurrent writers, overlay copy-up racing
// opens of the same files, and a forced unmount with requests in flight. Load runs in child processes (test/helpers/child-load.ts) doing plain
// synchronous Node fs calls, so the requests really overlap.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { type MountOptions, type MountStats } from '../lib';
import { mountFixture, tmpdir } from './helpers/fixture';
import { fusekitOverlay, mkdirs, tmpfs } from './helpers/overlay-util';
import {
  type JsonChild,
  isMounted,
  nodeArgv,
  pattern,
  snapshot,
  spawnChild,
  waitFor,
  within,
} from './helpers/proc-util';

function load(t: ExecutionContext, spec: Record<string, unknown>): JsonChild {
  return spawnChild(t, nodeArgv('test/helpers/child-load.ts', JSON.stringify(spec)));
}

async function results(
  children: JsonChild[],
  timeoutMs = 150_000,
): Promise<Record<string, number>[]> {
  const done = await Promise.all(children.map((c) => c.message((m) => m.done === true, timeoutMs)));
  return done.map((d) => d.counts as Record<string, number>);
}

/** Every outcome recorded must be 'ok' or one of the errno names allowed for that operation. */
function assertOutcomes(
  t: ExecutionContext,
  counts: Record<string, number>,
  allowed: Record<string, string[]>,
): void {
  for (const key of Object.keys(counts)) {
    const [op, outcome] = key.split(':') as [string, string];
    t.true(
      outcome === 'ok' || (allowed[op] ?? []).includes(outcome),
      `unexpected ${key} (x${counts[key]})`,
    );
  }
}

/** The outcomes child-load's hammer mode may meet; every operation succeeds some of the time. */
function assertHammerOutcomes(t: ExecutionContext, all: Record<string, number>): void {
  assertOutcomes(t, all, {
    stat: ['ENOENT'],
    create: ['EISDIR', 'ENOENT'],
    unlink: ['ENOENT', 'EISDIR'],
    rename: ['ENOENT', 'EISDIR', 'ENOTDIR', 'ENOTEMPTY'],
    mkdir: ['EEXIST'],
    rmdir: ['ENOENT', 'ENOTDIR'],
    read: ['ENOENT', 'EISDIR'],
  });
  for (const op of ['stat', 'create', 'unlink', 'rename', 'mkdir', 'rmdir', 'readdir', 'read'])
    t.true((all[`${op}:ok`] ?? 0) > 0, `some ${op} succeeded`);
}

function sum(all: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of all) for (const [k, v] of Object.entries(c)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/** Makes the kernel drop unused dentries and inodes, which sends FORGETs to the daemon. "2" is
 * exactly that; "3" would also empty the page cache of the whole machine and slow down everything
 * else running on it without adding any FORGET. */
async function dropCaches(): Promise<void> {
  await fsp.writeFile('/proc/sys/vm/drop_caches', '2');
}

/**
 * Drops caches every 0.1 s until stopFile exists, then prints {drops}. Its own process, so the
 * drops keep coming whatever this process's thread pool is doing.
 */
function dropper(t: ExecutionContext, stopFile: string): JsonChild {
  return spawnChild(t, [
    'sh',
    '-c',
    'n=0; while [ ! -e "$1" ]; do echo 2 > /proc/sys/vm/drop_caches; n=$((n+1)); sleep 0.1; done; echo "{\\"drops\\":$n}"',
    'sh',
    stopFile,
  ]);
}

/**
 * 4 processes hammer dir (stat/create/unlink/rename/mkdir/rmdir/readdir/read of 16 names) while
 * caches are dropped; `during` runs meanwhile. Returns the summed outcomes and the drop count.
 */
async function hammerWhileDropping(
  t: ExecutionContext,
  root: string,
  dir: string,
  seedStep: number,
  during: () => Promise<void> = async () => {},
): Promise<{ all: Record<string, number>; drops: number }> {
  const children = [1, 2, 3, 4].map((seed) =>
    load(t, { mode: 'hammer', dir, names: 16, iterations: 3000, seed: seed * seedStep }),
  );
  const stopFile = path.join(root, 'stop-dropping');
  const dropping = dropper(t, stopFile);
  let counts: Record<string, number>[];
  try {
    await during();
    counts = await results(children);
  } finally {
    await fsp.writeFile(stopFile, '');
  }
  const drops = (await dropping.message((x) => typeof x.drops === 'number')).drops as number;
  return { all: sum(counts), drops };
}

test('lookup vs forget: stat/create/unlink/rename/mkdir/rmdir from 4 processes while caches are dropped', async (t) => {
  const { root, src, mnt, m } = await mountFixture(
    t,
    { entryTimeout: 0.01, attrTimeout: 0.01 },
    async (s) => {
      await fsp.mkdir(path.join(s, 'h'));
    },
  );
  const dir = path.join(mnt, 'h');
  const { all, drops } = await hammerWhileDropping(t, root, dir, 7919);
  t.log(`drop_caches x${drops}`, all);
  assertHammerOutcomes(t, all);

  // The mount still answers and mirrors the source exactly.
  const viaMount = await snapshot(dir);
  t.deepEqual(viaMount, await snapshot(path.join(src, 'h')));
  for (const [name, value] of Object.entries(viaMount)) {
    if (value !== '<dir>') t.regex(Buffer.from(value, 'base64').toString(), /^(n\d+)?$/, name);
  }
  const s = m.stats();
  t.true(s.ops.forget!.count > 0, 'the kernel sent forgets');
  t.true(s.ops.lookup!.count > 0);
  // With nothing in use any more, dropping caches makes the kernel forget every inode but the
  // root: a lookup count that went wrong under the race would keep one alive.
  await waitFor(
    'every inode forgotten',
    async () => {
      await dropCaches();
      return m.stats().inodes === 1;
    },
    30_000,
    200,
  ).catch(() => undefined);
  t.is(m.stats().inodes, 1, 'inodes still held after drop_caches');
  t.deepEqual(await snapshot(dir), await snapshot(path.join(src, 'h')));
});

test('lookup vs forget while open files squeeze the descriptor cache: 4 processes hammer a daemon limited to 256 descriptors', async (t) => {
  // The cache's default capacity (128 here) and 150 files held open do not fit under the limit:
  // the daemon's lookups and opens keep meeting EMFILE and the cache gives descriptors back,
  // while other lookups, forgets and evictions race it.
  const root = await tmpdir(t);
  const [src, mnt] = [path.join(root, 'src'), path.join(root, 'mnt')];
  for (const d of [src, mnt, path.join(src, 'h'), path.join(src, 'held')]) await fsp.mkdir(d);
  const heldNames = Array.from({ length: 150 }, (_, i) => `k${i}`);
  for (const n of heldNames) await fsp.writeFile(path.join(src, 'held', n), `held ${n}`);
  const options: MountOptions = {
    source: src,
    mountpoint: mnt,
    entryTimeout: 0.01,
    attrTimeout: 0.01,
  };
  const daemon = spawnChild(
    t,
    [
      'prlimit',
      '--nofile=256:256',
      ...nodeArgv('test/helpers/idmap-mount-child.ts', JSON.stringify(options)),
    ],
    { mountpoints: [mnt] },
  );
  const ok = await daemon.message((m) => 'ok' in m);
  t.true(ok.ok, JSON.stringify(ok));
  const stats = async (): Promise<MountStats> => {
    const from = daemon.messages.length;
    daemon.send('stats');
    const r = await daemon.message((m) => 'stats' in m && daemon.messages.indexOf(m) >= from);
    return r.stats as MountStats;
  };
  const before = (await stats()).inodeFds;
  t.deepEqual([before.mode, before.capacity], ['handles', 128]);

  const held: fsp.FileHandle[] = [];
  const closeHeld = async (): Promise<void> => {
    await Promise.all(held.splice(0).map((h) => h.close()));
  };
  t.teardown(closeHeld);

  const dir = path.join(mnt, 'h');
  // Opened while the others hammer: the reclaims race their lookups, forgets and evictions.
  const { all, drops } = await hammerWhileDropping(t, root, dir, 104729, async () => {
    for (const n of heldNames) held.push(await fsp.open(path.join(mnt, 'held', n), 'r'));
  });
  const after = await stats();
  t.log(`drop_caches x${drops}`, all, after.inodeFds);
  assertHammerOutcomes(t, all);
  t.true(after.inodeFds.capacity < 128, 'the cache gave descriptors back');

  // The mount mirrors the source, and every held file still reads its own bytes.
  t.deepEqual(await snapshot(dir), await snapshot(path.join(src, 'h')));
  for (const [i, h] of held.entries()) {
    const buf = Buffer.alloc(64);
    const { bytesRead } = await h.read(buf, 0, 64, 0);
    t.is(buf.subarray(0, bytesRead).toString(), `held ${heldNames[i]!}`);
  }
  await closeHeld();
});

test('readdirplus while other processes create and unlink in the same directory', async (t) => {
  const stable = Array.from({ length: 20 }, (_, i) => `s${i}`);
  const { src, mnt, m } = await mountFixture(t, {}, async (s) => {
    for (const n of stable) await fsp.writeFile(path.join(s, n), n);
  });
  const names = 50;
  const churn = [1, 2].map((seed) =>
    load(t, { mode: 'churn', dir: mnt, names, iterations: 3000, seed }),
  );
  const listers = [3, 4].map((seed) =>
    load(t, { mode: 'lister', dir: mnt, names, stable, iterations: 600, seed }),
  );
  await results([...churn, ...listers]);
  const done = await Promise.all(listers.map((c) => c.message((x) => x.done === true)));
  for (const d of done) {
    t.is(d.nproblems, 0, JSON.stringify(d.problems));
    assertOutcomes(t, d.counts as Record<string, number>, {});
  }
  const churnCounts = sum(await results(churn));
  t.log(churnCounts);
  assertOutcomes(t, churnCounts, { unlink: ['ENOENT'] });
  t.true(m.stats().ops.readdirplus!.count > 0, 'listings used readdirplus');
  t.deepEqual(await snapshot(mnt), await snapshot(src));
  for (const n of stable) t.is(await fsp.readFile(path.join(mnt, n), 'utf8'), n);
});

test('passthrough: one shared backing file, many readers, concurrent writers, correct data', async (t) => {
  const size = 2 << 20;
  const seed = 12345;
  const data = pattern(size, seed);
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'on' }, async (s) => {
    await fsp.writeFile(path.join(s, 'big.bin'), data);
  });
  t.true(m.passthrough);
  const file = path.join(mnt, 'big.bin');

  // Three opens at once share one backing file.
  const s0 = m.stats().passthrough;
  const fhs = await Promise.all([1, 2, 3].map(() => fsp.open(file, 'r')));
  try {
    const s1 = m.stats().passthrough;
    t.is(s1.opens - s0.opens, 3);
    t.is(s1.backingRegistered - s0.backingRegistered, 1, 'one backing file for the inode');
    t.is(s1.backingActive, 1);
    for (const fh of fhs) t.deepEqual(await fh.readFile(), data);
  } finally {
    await Promise.all(fhs.map((fh) => fh.close()));
  }
  await waitFor('backing file released', () => m.stats().passthrough.backingActive === 0);

  const readers = [1, 2, 3, 4].map((r) =>
    load(t, { mode: 'reader', path: file, size, seed, iterations: 150, seed2: r }),
  );
  const writers = [5, 6].map((r) =>
    load(t, { mode: 'writer', path: file, size, seed, iterations: 300, rngSeed: r }),
  );
  const [r1, r2, r3, r4, w1, w2] = await results([...readers, ...writers]);
  const reads = sum([r1!, r2!, r3!, r4!]);
  const writes = sum([w1!, w2!]);
  t.log(reads, writes, m.stats().passthrough);
  t.deepEqual(reads, { 'read:ok': 600 }, 'every read saw the exact bytes');
  t.deepEqual(writes, { 'write:ok': 600 });
  const st = m.stats().passthrough;
  t.true(st.opens >= 600, 'reads went through passthrough opens');
  t.is(st.failures, 0);
  t.deepEqual(await fsp.readFile(path.join(src, 'big.bin')), data);
  t.deepEqual(await fsp.readFile(file), data);
  await waitFor('every backing file released', () => m.stats().passthrough.backingActive === 0);
});

test('overlay: copy-up vs open: read, write, held-open read and chmod of lower files from 4 processes', async (t) => {
  const root = await tmpdir(t);
  const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((d) =>
    path.join(root, d),
  );
  mkdirs(lower!, upper!, work!, mnt!);
  const files = 48;
  const size = 64 << 10;
  const want = (k: number): Buffer => pattern(size, (k + 1) << 24);
  for (let k = 0; k < files; k++) await fsp.writeFile(path.join(lower!, `f${k}`), want(k));
  const m = await fusekitOverlay(t, { lower: [lower!], upper, work, mnt: mnt! });
  const children = [1, 2, 3, 4].map((seed) =>
    load(t, { mode: 'copyup', dir: mnt, files, size, iterations: 400, seed: seed * 104729 }),
  );
  const all = sum(await results(children));
  t.log(all);
  assertOutcomes(t, all, {});
  for (const op of ['read', 'write', 'held', 'chmod'])
    t.true((all[`${op}:ok`] ?? 0) > 0, `some ${op} succeeded`);
  for (let k = 0; k < files; k++) {
    const name = `f${k}`;
    t.deepEqual(await fsp.readFile(path.join(mnt!, name)), want(k), `${name} through the mount`);
    t.deepEqual(await fsp.readFile(path.join(lower!, name)), want(k), `${name} in the lower`);
    const up = await fsp.readFile(path.join(upper!, name)).catch(() => undefined);
    if (up) t.deepEqual(up, want(k), `${name} in the upper`);
  }
  t.true(m.stats().inodes >= 1);
  // No half-done copy-up left behind in work/work, where copies are made.
  t.deepEqual(await fsp.readdir(path.join(work!, 'work')), []);
});

for (const [transport, passthrough] of [
  ['dev', 'off'],
  ['auto', 'off'],
  ['auto', 'auto'],
] as const) {
  test(`force unmount with reads in flight (transport ${transport}, passthrough ${passthrough}): readers get errors, no hang`, async (t) => {
    const size = 1 << 20;
    const seed = 777;
    const { src, mnt, m } = await mountFixture(t, { transport, passthrough }, async (s) => {
      await fsp.writeFile(path.join(s, 'data.bin'), pattern(size, seed));
    });
    const before = await snapshot(src);
    const readers = [1, 2, 3].map((r) =>
      load(t, {
        mode: 'read-until-error',
        path: path.join(mnt, 'data.bin'),
        size,
        seed,
        rngSeed: r,
      }),
    );
    await Promise.all(readers.map((c) => c.message((x) => x.ready === true, 180_000)));
    await within('force unmount', m.unmount({ force: true }));
    t.true(m.isClosed);
    t.false(isMounted(mnt));
    const counts = await within('readers to give up', results(readers, 60_000), 90_000);
    for (const c of readers)
      t.deepEqual(await within('reader exit', c.exited), { code: 0, signal: null });
    const all = sum(counts);
    t.log(all);
    t.falsy(all['pread:BADDATA'], 'no read returned wrong data');
    t.falsy(all['reopen:BADDATA']);
    t.true(
      (all['reopen:ENOENT'] ?? 0) + (all['reopen:ENOTCONN'] ?? 0) > 0,
      'readers saw the mount go',
    );
    // ECONNABORTED: a request that was in flight when the connection was aborted.
    const gone = ['ENOTCONN', 'ECONNABORTED'];
    assertOutcomes(t, all, { pread: gone, reopen: ['ENOENT', ...gone], close: gone });
    t.deepEqual(await fsp.readdir(mnt), []);
    t.deepEqual(await snapshot(src), before);
  });
}

test('overlay over io_uring: a forced unmount during a copy-up lets it finish, and nothing leaks on the upper', async (t) => {
  const uringOn = ['Y', '1'].includes(
    (await fsp.readFile('/sys/module/fuse/parameters/enable_uring', 'utf8')).trim(),
  );
  if (!uringOn) return t.pass('FUSE-over-io_uring is off on this machine');
  const root = await tmpdir(t);
  const [lower, fs2, mnt] = ['lower', 'upperfs', 'mnt'].map((d) => path.join(root, d));
  mkdirs(lower!, fs2!, mnt!);
  // The upper on a tmpfs of its own: its used space shows a copy that lost its last reference.
  tmpfs(t, fs2!, '600m');
  const size = 256 << 20;
  const data = pattern(size, 4242);
  await fsp.writeFile(path.join(lower!, 'big'), data);
  const usedKiB = (): number =>
    Number(spawnSync('df', ['-k', '--output=used', fs2!]).stdout.toString().split('\n')[1]);
  for (let round = 0; round < 3; round++) {
    const upper = path.join(fs2!, `upper${round}`);
    const work = path.join(fs2!, `work${round}`);
    mkdirs(upper, work);
    const m = await fusekitOverlay(
      t,
      { lower: [lower!], upper, work, mnt: mnt! },
      { transport: 'io_uring' },
    );
    t.is(m.transport, 'io_uring');
    // Opening for append copies the 256 MiB file up (an O_TMPFILE in work, linked when done).
    const writer = spawn('sh', ['-c', 'exec 3>>"$1"', 'sh', path.join(mnt!, 'big')], {
      stdio: 'ignore',
    });
    await new Promise((r) => setTimeout(r, 100));
    // libfuse cancels its ring threads at the end of the session: one still copying was cut off
    // at its next system call, the copy's descriptor never closed (256 MiB held per round).
    await within('force unmount', m.unmount({ force: true }));
    await within(
      'writer exit',
      new Promise((r) => (writer.exitCode !== null ? r(0) : writer.on('exit', r))),
    );
    t.true(m.isClosed);
    const up = await fsp.readFile(path.join(upper, 'big')).catch(() => undefined);
    if (up) t.true(up.equals(data), 'a copy-up in the upper is the whole file');
    t.deepEqual(await fsp.readdir(path.join(work, 'work')), [], 'nothing left in work/work');
    await fsp.rm(upper, { recursive: true });
    await fsp.rm(work, { recursive: true });
    await waitFor('the upper space freed', () => usedKiB() < 4096, 10_000).catch(() => undefined);
    t.true(
      usedKiB() < 4096,
      `round ${round}: ${usedKiB()} KiB still used on the upper's filesystem`,
    );
  }
  t.true((await fsp.readFile(path.join(lower!, 'big'))).equals(data), 'the lower is unchanged');
});
