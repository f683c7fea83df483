// A daemon with no descriptor to spare: before an operation the daemon's process takes every free
// descriptor number (test/helpers/idmap-mount-child.ts "fill"), so the first descriptor the
// operation needs fails with EMFILE. The inode cache holds a hundred descriptors it can give back,
// and here gives them back one at a time (FUSEKIT_TEST_RECLAIM_ONE), so every open on a request's
// path meets EMFILE in turn: each must get one and the operation succeed, on the passthrough and
// on the overlay. Each operation has a daemon of its own, since a cache that gave descriptors
// back stays smaller for a while.
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type MountOptions, type MountStats } from '../lib';
import { tmpdir } from './helpers/fixture';
import * as fsops from './helpers/fsops';
import { mkdirs } from './helpers/overlay-util';
import { isMounted, nodeArgv, snapshot, spawnChild, waitFor, within } from './helpers/proc-util';

const LIMIT = 1024;
const CACHE = 128;
const FILES = 200;
const O_PATH = 0o10000000; // not in Node's fs.constants

interface Daemon {
  stats(): Promise<MountStats>;
  /** Runs op with the daemon out of descriptors; returns how many its cache gave back for it. */
  starved(op: () => unknown): Promise<number>;
  /** Unmounts and waits for the daemon to exit. */
  stop(): Promise<void>;
}

async function start(t: ExecutionContext, options: MountOptions): Promise<Daemon> {
  const mnt = options.mountpoint;
  const daemon = spawnChild(
    t,
    [
      'prlimit',
      `--nofile=${LIMIT}:${LIMIT}`,
      ...nodeArgv('test/helpers/idmap-mount-child.ts', JSON.stringify(options)),
    ],
    // Caches give descriptors back one at a time: each open on the way meets EMFILE in turn.
    { mountpoints: [mnt], env: { ...process.env, FUSEKIT_TEST_RECLAIM_ONE: '1' } },
  );
  const ok = await daemon.message((m) => 'ok' in m);
  t.true(ok.ok, JSON.stringify(ok));
  const ask = async (cmd: string, key: string): Promise<Record<string, unknown>> => {
    const from = daemon.messages.length;
    daemon.send(cmd);
    return daemon.message((m) => key in m && daemon.messages.indexOf(m) >= from);
  };
  const stats = async (): Promise<MountStats> => (await ask('stats', 'stats')).stats as MountStats;
  return {
    stats,
    starved: async (op) => {
      const before = (await stats()).inodeFds;
      const filled = await ask('fill', 'filled');
      t.is(filled.code, 'EMFILE');
      try {
        await op();
      } finally {
        await ask('unfill', 'unfilled');
      }
      return before.capacity - (await stats()).inodeFds.capacity;
    },
    stop: async () => {
      daemon.send('exit');
      await within('daemon exit', daemon.exited, 10_000);
      await waitFor(`${mnt} unmounted`, () => !isMounted(mnt), 5_000);
    },
  };
}

function fillSource(dir: string): void {
  mkdirs(path.join(dir, 'many'), path.join(dir, 'sub', 'deep'));
  for (let i = 0; i < FILES; i++) fs.writeFileSync(path.join(dir, 'many', `f${i}`), `file ${i}`);
  for (const n of ['a', 'b', 'c', 'd', 'e', 'f'])
    fs.writeFileSync(path.join(dir, n), `${n} `.repeat(1000));
  fs.writeFileSync(path.join(dir, 'sub', 'deep', 'g'), 'deep');
}

/** Runs every kind of request that needs a descriptor, each starved in a daemon of its own whose
 * cache is full; returns how many descriptors the cache gave back for each. */
async function everyOperation(
  t: ExecutionContext,
  options: MountOptions,
): Promise<Record<string, number>> {
  const mnt = options.mountpoint;
  const p = (...n: string[]): string => path.join(mnt, ...n);
  const withFd = (file: string, flags: string, fn: (fd: number) => void) => () => {
    const fd = fs.openSync(file, flags);
    try {
      fn(fd);
    } finally {
      fs.closeSync(fd);
    }
  };
  const withServer = (fn: (s: fsops.Server) => Promise<unknown>) => async () => {
    const s = new fsops.Server();
    try {
      await fn(s);
    } finally {
      await s.close();
    }
  };
  const ops: [string, () => unknown][] = [
    ['lookup', () => fs.statSync(p('sub', 'deep', 'g'))],
    ['create', () => fs.writeFileSync(p('new'), 'created while starved')],
    ['open read', () => t.is(fs.readFileSync(p('a'), 'utf8'), 'a '.repeat(1000))],
    ['open write', () => fs.appendFileSync(p('b'), 'appended')],
    ['truncate', () => fs.truncateSync(p('c'), 10)],
    ['chmod', () => fs.chmodSync(p('d'), 0o600)],
    ['utimes', () => fs.utimesSync(p('e'), 1000, 2000)],
    ['setxattr', () => fsops.setxattr(p('a'), 'user.k', 'v')],
    ['getxattr', () => t.is(fsops.getxattr(p('a'), 'user.k').value.toString(), 'v')],
    ['listxattr', () => t.true(fsops.listxattr(p('a')).includes('user.k'))],
    ['mkdir', () => fs.mkdirSync(p('dir'))],
    ['symlink', () => fs.symlinkSync('a', p('link'))],
    ['mknod', () => fsops.mknod(p('fifo'), 'fifo', 0o644)],
    ['link', () => fs.linkSync(p('a'), p('hard'))],
    ['readdir', () => t.is(fs.readdirSync(p('many')).length, FILES)],
    ['rename', () => fs.renameSync(p('new'), p('renamed'))],
    ['rename dir', () => fs.renameSync(p('sub'), p('sub2'))],
    ['tmpfile', () => fsops.tmpfile(mnt, 0o644, 'anonymous', p('tmp'))],
    ['copy_file_range', () => fsops.copyFileRange(p('a'), 0, p('copy'), 0, 100)],
    ['fsync', withFd(p('b'), 'r+', (fd) => fs.fsyncSync(fd))],
    [
      'flock',
      withServer(async (s) => {
        const fd = await s.open(p('f'), 'rw');
        await s.ok('flock', fd, 'ex');
        await s.ok('close', fd);
      }),
    ],
    [
      'posix lock',
      withServer(async (s) => {
        const fd = await s.open(p('f'), 'rw');
        await s.ok('setlk', fd, 'wr', 0, 10, 'wait');
        await s.ok('close', fd);
      }),
    ],
    ['statfs', () => fs.statfsSync(mnt)],
    ['unlink', () => fs.unlinkSync(p('d'))],
    ['rmdir', () => fs.rmdirSync(p('dir'))],
  ];
  const reclaimed: Record<string, number> = {};
  const failed: string[] = [];
  for (const [name, op] of ops) {
    const d = await start(t, options);
    t.is((await d.stats()).inodeFds.mode, 'handles');
    // Fills the cache: every name is a lookup that opens a descriptor. Held open (O_PATH, no
    // FUSE open) so that the kernel keeps the inodes: a drop_caches by another test would
    // otherwise make it forget them, and the daemon close what its cache had to give.
    const held = Array.from({ length: FILES }, (_, i) => fs.openSync(p('many', `f${i}`), O_PATH));
    try {
      reclaimed[name] = await d.starved(op);
    } catch (e) {
      failed.push(`${name}: ${String(e)}`);
    } finally {
      for (const fd of held) fs.closeSync(fd);
    }
    await d.stop();
  }
  t.deepEqual(failed, [], 'operations that failed while starved');
  t.log('descriptors the cache gave back', reclaimed);
  return reclaimed;
}

test('passthrough: every operation succeeds when the daemon has no descriptor left', async (t) => {
  const root = await tmpdir(t);
  const [src, mnt] = [path.join(root, 'src'), path.join(root, 'mnt')];
  mkdirs(src, mnt);
  fillSource(src);
  const reclaimed = await everyOperation(t, { source: src, mountpoint: mnt, maxFds: CACHE });
  // The starvation was real for what opens a descriptor.
  for (const op of ['lookup', 'create', 'open read', 'mkdir', 'readdir', 'tmpfile', 'flock'])
    t.true(reclaimed[op]! > 0, `${op} met EMFILE and got descriptors back`);
  const m = await start(t, { source: src, mountpoint: mnt });
  t.deepEqual(await snapshot(mnt), await snapshot(src));
  await m.stop();
  t.is(fs.readFileSync(path.join(src, 'b'), 'utf8'), 'b '.repeat(1000) + 'appended');
  t.is(fs.readFileSync(path.join(src, 'tmp'), 'utf8'), 'anonymous');
});

test('overlay: every operation, copy-ups included, succeeds when the daemon has no descriptor left', async (t) => {
  const root = await tmpdir(t);
  const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((d) =>
    path.join(root, d),
  ) as [string, string, string, string];
  mkdirs(lower, upper, work, mnt);
  fillSource(lower);
  const before = await snapshot(lower);
  const reclaimed = await everyOperation(t, {
    mountpoint: mnt,
    overlay: { lower: [lower], upper, work },
    maxFds: CACHE,
  });
  for (const op of ['lookup', 'create', 'open write', 'chmod', 'mkdir', 'readdir', 'tmpfile'])
    t.true(reclaimed[op]! > 0, `${op} met EMFILE and got descriptors back`);
  // The lower layer is as it was; what changed went up, and the merged view shows it.
  t.deepEqual(await snapshot(lower), before);
  t.is(fs.readFileSync(path.join(upper, 'b'), 'utf8'), 'b '.repeat(1000) + 'appended');
  t.is(fs.statSync(path.join(upper, 'c')).size, 10);
  t.is(fs.readFileSync(path.join(upper, 'tmp'), 'utf8'), 'anonymous');
  const m = await start(t, { mountpoint: mnt, overlay: { lower: [lower], upper, work } });
  t.false(fs.existsSync(path.join(mnt, 'd')));
  t.true(fs.existsSync(path.join(mnt, 'sub2', 'deep', 'g')));
  t.deepEqual(fs.readdirSync(mnt).sort(), [
    'a',
    'b',
    'c',
    'copy',
    'e',
    'f',
    'fifo',
    'hard',
    'link',
    'many',
    'renamed',
    'sub2',
    'tmp',
  ]);
  await m.stop();
});

test('overlay: with no descriptor to be had, copy-up and create fail with EMFILE and change no layer', async (t) => {
  const root = await tmpdir(t);
  const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((d) =>
    path.join(root, d),
  ) as [string, string, string, string];
  mkdirs(lower, upper, work, mnt);
  fillSource(lower);
  const lowerBefore = await snapshot(lower);
  // The smallest cache (16) never gives its last descriptors back: nothing can be had.
  const d = await start(t, {
    mountpoint: mnt,
    overlay: { lower: [lower], upper, work },
    maxFds: 16,
  });
  for (let i = 0; i < 32; i++) fs.statSync(path.join(mnt, 'many', `f${i}`));
  for (const n of ['b', 'sub']) fs.statSync(path.join(mnt, n)); // looked up before
  const upperBefore = await snapshot(upper);
  const errors: string[] = [];
  await d.starved(() => {
    for (const op of [
      () => fs.appendFileSync(path.join(mnt, 'b'), 'appended'), // copy-up of data
      () => fs.chmodSync(path.join(mnt, 'sub'), 0o700), // copy-up of a directory
      () => fs.writeFileSync(path.join(mnt, 'new'), 'new'), // create
    ]) {
      try {
        op();
        errors.push('OK');
      } catch (e) {
        errors.push((e as NodeJS.ErrnoException).code ?? String(e));
      }
    }
  });
  t.deepEqual(errors, ['EMFILE', 'EMFILE', 'EMFILE']);
  t.deepEqual(await snapshot(upper), upperBefore, 'nothing reached the upper layer');
  t.deepEqual(fs.readdirSync(path.join(work, 'work')), [], 'nothing left in the work dir');
  t.deepEqual(await snapshot(lower), lowerBefore);
  // Descriptors again: the same changes go through.
  fs.appendFileSync(path.join(mnt, 'b'), 'appended');
  t.is(fs.readFileSync(path.join(upper, 'b'), 'utf8'), 'b '.repeat(1000) + 'appended');
  await d.stop();
});
