// Every operation of the passthrough filesystem through real system calls on a mount, compared with
// the source (the same file seen directly) and, for error semantics, with the same sequence of
// calls run in a control directory on the source's filesystem. The core set runs under every
// combination of data path (passthrough on/off) and transport (/dev/fuse, io_uring).
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { type BigIntStats, constants as C, promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { type Mounted, mountFixture } from './helpers/fixture';
import * as ops from './helpers/fsops';

const CONFIGS = [
  { passthrough: 'on', transport: 'dev' },
  { passthrough: 'on', transport: 'io_uring' },
  { passthrough: 'off', transport: 'dev' },
  { passthrough: 'off', transport: 'io_uring' },
] as const;
type Config = (typeof CONFIGS)[number];

interface Fixture extends Mounted {
  /** A plain directory on the source's filesystem: the reference for error semantics. */
  ctl: string;
}

async function setup(
  t: ExecutionContext,
  c: Config,
  prepare?: (src: string) => Promise<void>,
  extra: Record<string, unknown> = {},
): Promise<Fixture> {
  const f = await mountFixture(
    t,
    { passthrough: c.passthrough, transport: c.transport, ...extra },
    prepare,
  );
  t.is(f.m.transport, c.transport);
  t.is(f.m.passthrough, c.passthrough === 'on');
  // Same name length as "mnt" and "src", so path-length limits line up.
  const ctl = path.join(f.root, 'ctl');
  await fsp.mkdir(ctl);
  return { ...f, ctl };
}

/** Registers one test per configuration. */
function core(
  title: string,
  fn: (t: ExecutionContext, f: Fixture, c: Config) => Promise<void>,
  prepare?: (src: string) => Promise<void>,
  options: { serial?: boolean } = {},
): void {
  for (const c of CONFIGS) {
    const register = options.serial ? test.serial : test;
    register(`${title} [passthrough ${c.passthrough}, ${c.transport}]`, async (t) => {
      await fn(t, await setup(t, c, prepare), c);
    });
  }
}

// ---- comparison helpers

const STAT_FIELDS = [
  'mode',
  'uid',
  'gid',
  'size',
  'nlink',
  'ino',
  'rdev',
  'blocks',
  'blksize',
  'atimeNs',
  'mtimeNs',
  'ctimeNs',
] as const;

function pick(st: BigIntStats, skip: readonly string[] = []): Record<string, bigint> {
  const o: Record<string, bigint> = {};
  for (const k of STAT_FIELDS) if (!skip.includes(k)) o[k] = st[k];
  return o;
}

/** lstat through the mount equals lstat of the source, field by field. */
async function sameStat(
  t: ExecutionContext,
  mntPath: string,
  srcPath: string,
  skip: readonly string[] = [],
  label = `stat of ${path.basename(mntPath)}`,
): Promise<BigIntStats> {
  const m = await fsp.lstat(mntPath, { bigint: true });
  const s = await fsp.lstat(srcPath, { bigint: true });
  // The block count moves when the source's writeback allocates (extent tree blocks), which the
  // mount's cached attributes may not show yet: compare it after a sync, with a fresh GETATTR
  // (statx AT_STATX_FORCE_SYNC).
  t.deepEqual(pick(m, ['blocks', ...skip]), pick(s, ['blocks', ...skip]), label);
  if (!skip.includes('blocks')) {
    if (s.isFile()) {
      const h = await fsp.open(srcPath, 'r');
      await h.sync().finally(() => h.close());
    }
    const fresh = ops.statx(mntPath, { nofollow: true }).blocks;
    t.is(fresh, ops.statx(srcPath, { nofollow: true }).blocks, `${label}: blocks`);
    t.is(BigInt(fresh), (await fsp.lstat(srcPath, { bigint: true })).blocks);
  }
  return m;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** Everything about a tree that must not depend on where it lives (no inode numbers or times). */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(rel: string): Promise<void> {
    const names = (await fsp.readdir(path.join(dir, rel))).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(dir, r);
      const st = await fsp.lstat(p);
      let d = `mode=${st.mode.toString(8)} owner=${st.uid}:${st.gid} nlink=${st.nlink}`;
      if (st.isFile()) d += ` size=${st.size} sha=${sha(await fsp.readFile(p))}`;
      else if (st.isSymbolicLink()) d += ` -> ${await fsp.readlink(p)}`;
      else if (st.isCharacterDevice() || st.isBlockDevice()) d += ` rdev=${st.rdev}`;
      out[r] = d;
      if (st.isDirectory()) await walk(r);
    }
  }
  await walk('');
  return out;
}

type Step = [label: string, fn: (dir: string) => unknown];

/** Runs steps in dir, recording each result or errno name. */
async function transcript(dir: string, steps: Step[]): Promise<string[]> {
  const out: string[] = [];
  for (const [label, fn] of steps) {
    try {
      const v = await fn(dir);
      out.push(`${label}: ${v === undefined ? 'OK' : JSON.stringify(v)}`);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (typeof code !== 'string') throw e;
      out.push(`${label}: ${code}`);
    }
  }
  return out;
}

/** The same steps on the mount and in the control directory: same results, same trees, and the
 * mount's tree is the source's. Returns the mount's transcript for explicit checks. */
async function sameAsControl(t: ExecutionContext, f: Fixture, steps: Step[]): Promise<string[]> {
  const onMount = await transcript(f.mnt, steps);
  const onControl = await transcript(f.ctl, steps);
  t.deepEqual(onMount, onControl);
  const [mt, ct, st] = [await tree(f.mnt), await tree(f.ctl), await tree(f.src)];
  t.deepEqual(mt, ct);
  t.deepEqual(mt, st);
  return onMount;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const j = (...parts: string[]): string => path.join(...parts);
const MiB = 1 << 20;

// ---- lookup / getattr

async function prepareNodes(src: string): Promise<void> {
  await fsp.writeFile(j(src, 'f'), 'hello world');
  await fsp.chmod(j(src, 'f'), 0o640);
  await fsp.chown(j(src, 'f'), 1234, 5678);
  ops.utimens(j(src, 'f'), [1600000000, 123456789], [1500000000, 987654321]);
  await fsp.mkdir(j(src, 'd'), 0o751);
  await fsp.mkdir(j(src, 'd', 'sub'));
  await fsp.writeFile(j(src, 'd', 'x'), 'x');
  await fsp.symlink('f', j(src, 'l'));
  await fsp.symlink('nowhere/at/all', j(src, 'dangling'));
  ops.mknod(j(src, 'fifo'), 'fifo', 0o620);
  ops.mknod(j(src, 'sock'), 'sock', 0o600);
  await fsp.link(j(src, 'f'), j(src, 'hard'));
  await fsp.writeFile(j(src, 'suid'), '#!/bin/sh\n');
  await fsp.chmod(j(src, 'suid'), 0o6755);
  const h = await fsp.open(j(src, 'sparse'), 'w');
  await h.truncate(1 << 30);
  await h.write('end', (1 << 30) - 3);
  await h.close();
}

core(
  'lookup/getattr: every field of every node type matches the source',
  async (t, { src, mnt }) => {
    const names = [
      '',
      'f',
      'd',
      'd/sub',
      'd/x',
      'l',
      'dangling',
      'fifo',
      'sock',
      'hard',
      'suid',
      'sparse',
    ];
    for (const n of names) await sameStat(t, j(mnt, n), j(src, n));
    const f = await fsp.lstat(j(mnt, 'f'), { bigint: true });
    t.is(f.mode, BigInt(C.S_IFREG | 0o640));
    t.is(f.uid, 1234n);
    t.is(f.nlink, 2n);
    t.is(f.atimeNs, 1600000000123456789n);
    t.is(f.mtimeNs, 1500000000987654321n);
    t.is((await fsp.lstat(j(mnt, 'hard'), { bigint: true })).ino, f.ino);
    t.true((await fsp.lstat(j(mnt, 'fifo'))).isFIFO());
    t.true((await fsp.lstat(j(mnt, 'sock'))).isSocket());
    t.is((await fsp.lstat(j(mnt, 'suid'))).mode & 0o7777, 0o6755);
    // stat follows the symlink, lstat does not
    t.is((await fsp.stat(j(mnt, 'l'), { bigint: true })).ino, f.ino);
    await t.throwsAsync(fsp.stat(j(mnt, 'dangling')), { code: 'ENOENT' });
    await t.throwsAsync(fsp.lstat(j(mnt, 'missing')), { code: 'ENOENT' });
    await t.throwsAsync(fsp.lstat(j(mnt, 'f', 'below')), { code: 'ENOTDIR' });
  },
  prepareNodes,
);

// ---- setattr

core(
  'setattr: chmod, chown, truncate and utimes by path and through a descriptor',
  async (t, { src, mnt }) => {
    const mf = j(mnt, 'f');
    const sf = j(src, 'f');
    await fsp.writeFile(mf, 'abcdef');
    const check = (label: string, skip: string[] = []): Promise<BigIntStats> =>
      sameStat(t, mf, sf, skip, label);

    await fsp.chmod(mf, 0o600);
    t.is((await check('chmod')).mode & 0o7777n, 0o600n);
    await fsp.chmod(mf, 0o4711);
    t.is((await check('chmod suid')).mode & 0o7777n, 0o4711n);
    await fsp.chown(mf, 1234, 5678);
    let st = await check('chown');
    t.deepEqual([st.uid, st.gid], [1234n, 5678n]);
    await fsp.chown(mf, -1, 42);
    st = await check('chown gid only');
    t.deepEqual([st.uid, st.gid], [1234n, 42n]);
    await fsp.chown(mf, 0, 0);
    await fsp.chmod(mf, 0o644);

    await fsp.truncate(mf, 10000);
    t.is((await check('truncate grow')).size, 10000n);
    const grown = await fsp.readFile(mf);
    t.deepEqual(grown, Buffer.concat([Buffer.from('abcdef'), Buffer.alloc(10000 - 6)]));
    t.deepEqual(await fsp.readFile(sf), grown);
    await fsp.truncate(mf, 3);
    t.is((await check('truncate shrink', ['atimeNs'])).size, 3n);
    t.is(await fsp.readFile(mf, 'utf8'), 'abc');
    t.is(await fsp.readFile(sf, 'utf8'), 'abc');

    // The same through an open descriptor (setattr with a file handle).
    const h = await fsp.open(mf, 'r+');
    try {
      await h.truncate(5);
      await h.chmod(0o640);
      await h.chown(7, 8);
      const hs = await h.stat({ bigint: true });
      t.deepEqual([hs.size, hs.mode & 0o7777n, hs.uid, hs.gid], [5n, 0o640n, 7n, 8n]);
    } finally {
      await h.close();
    }
    st = await check('through fd', ['atimeNs']);
    t.deepEqual([st.size, st.mode & 0o7777n, st.uid, st.gid], [5n, 0o640n, 7n, 8n]);
    t.deepEqual(await fsp.readFile(sf), Buffer.from('abc\0\0'));

    // Timestamps with nanoseconds, by path and through a descriptor.
    ops.utimens(mf, [1000000000, 111111111], [1100000000, 222222222]);
    st = await check('utimens');
    t.deepEqual([st.atimeNs, st.mtimeNs], [1000000000111111111n, 1100000000222222222n]);
    ops.utimens(mf, [1000000001, 1], [1100000001, 2], 'fd');
    st = await check('futimens');
    t.deepEqual([st.atimeNs, st.mtimeNs], [1000000001000000001n, 1100000001000000002n]);
    ops.utimens(mf, [1200000000, 5], 'omit');
    st = await check('atime only');
    t.deepEqual([st.atimeNs, st.mtimeNs], [1200000000000000005n, 1100000001000000002n]);
    ops.utimens(mf, 'omit', [1300000000, 7]);
    st = await check('mtime only');
    t.deepEqual([st.atimeNs, st.mtimeNs], [1200000000000000005n, 1300000000000000007n]);
    const before = BigInt(Date.now() - 2000) * 1000000n;
    ops.utimens(mf, 'now', 'omit');
    st = await check('atime now');
    t.true(st.atimeNs > before, 'UTIME_NOW sets the current time');
    t.is(st.mtimeNs, 1300000000000000007n);
    ops.utimens(mf, 'omit', 'now', 'fd');
    st = await check('mtime now through fd');
    t.true(st.mtimeNs > before);
    t.true(st.atimeNs > before);

    // A symlink's own times (utimensat AT_SYMLINK_NOFOLLOW) leave the target alone.
    await fsp.symlink('f', j(mnt, 'l'));
    const targetBefore = await fsp.lstat(sf, { bigint: true });
    ops.utimens(j(mnt, 'l'), [900000000, 9], [900000000, 10], 'nofollow');
    const ls = await sameStat(t, j(mnt, 'l'), j(src, 'l'));
    t.deepEqual([ls.atimeNs, ls.mtimeNs], [900000000000000009n, 900000000000000010n]);
    t.is((await fsp.lstat(sf, { bigint: true })).mtimeNs, targetBefore.mtimeNs);
    // Directories too.
    await fsp.mkdir(j(mnt, 'd'));
    await fsp.chmod(j(mnt, 'd'), 0o700);
    ops.utimens(j(mnt, 'd'), [800000000, 1], [800000000, 2]);
    t.is((await sameStat(t, j(mnt, 'd'), j(src, 'd'))).mode & 0o7777n, 0o700n);
    // Errors as on the source.
    await t.throwsAsync(fsp.truncate(j(mnt, 'd'), 0), { code: 'EISDIR' });
    await t.throwsAsync(fsp.chmod(j(mnt, 'missing'), 0o600), { code: 'ENOENT' });
  },
);

// ---- readlink / symlink

core('symlink and readlink: relative, absolute, long and dangling targets', async (t, f) => {
  const long = 'seg/'.repeat(1000) + 'end'; // 4003 bytes
  const out = await sameAsControl(t, f, [
    ['symlink rel', (d) => fsp.symlink('target/rel', j(d, 'rel'))],
    ['symlink abs', (d) => fsp.symlink('/abs/path/x', j(d, 'abs'))],
    ['symlink long', (d) => fsp.symlink(long, j(d, 'long'))],
    ['symlink too long', (d) => fsp.symlink('x'.repeat(4096), j(d, 'toolong'))],
    ['symlink exists', (d) => fsp.symlink('other', j(d, 'rel'))],
    ['readlink rel', (d) => fsp.readlink(j(d, 'rel'))],
    ['readlink abs', (d) => fsp.readlink(j(d, 'abs'))],
    ['readlink long', async (d) => (await fsp.readlink(j(d, 'long'))) === long],
    ['file', (d) => fsp.writeFile(j(d, 'file'), 'data')],
    ['readlink file', (d) => fsp.readlink(j(d, 'file'))],
    ['readlink missing', (d) => fsp.readlink(j(d, 'missing'))],
    ['mkdir', (d) => fsp.mkdir(j(d, 'dir'))],
    ['file in dir', (d) => fsp.writeFile(j(d, 'dir', 'in'), 'inside')],
    ['symlink to dir', (d) => fsp.symlink('dir', j(d, 'todir'))],
    ['through symlink', (d) => fsp.readFile(j(d, 'todir', 'in'), 'utf8')],
    ['readdir through symlink', (d) => fsp.readdir(j(d, 'todir'))],
    ['loop a', (d) => fsp.symlink('b', j(d, 'a'))],
    ['loop b', (d) => fsp.symlink('a', j(d, 'b'))],
    ['follow loop', (d) => fsp.readFile(j(d, 'a'))],
  ]);
  t.true(out.includes('readlink rel: "target/rel"'));
  t.true(out.includes('readlink long: true'));
  t.true(out.includes('through symlink: "inside"'));
  t.true(out.includes('follow loop: ELOOP'));
  t.is(await fsp.readlink(j(f.src, 'long')), long);
  await sameStat(t, j(f.mnt, 'long'), j(f.src, 'long'));
});

// ---- mknod

core(
  'mknod: fifos and sockets are created as on the source; device nodes need devices',
  async (t, f) => {
    const out = await sameAsControl(t, f, [
      ['fifo', (d) => ops.mknod(j(d, 'fifo'), 'fifo', 0o640)],
      ['sock', (d) => ops.mknod(j(d, 'sock'), 'sock', 0o604)],
      ['fifo again', (d) => ops.mknod(j(d, 'fifo'), 'fifo', 0o640)],
      ['whiteout-like 0/0 chr', (d) => ops.mknod(j(d, 'wh'), 'chr', 0o600, [0, 0])],
    ]);
    t.deepEqual(out, ['fifo: OK', 'sock: OK', 'fifo again: EEXIST', 'whiteout-like 0/0 chr: OK']);
    t.true((await fsp.lstat(j(f.src, 'fifo'))).isFIFO());
    t.true((await fsp.lstat(j(f.src, 'sock'))).isSocket());
    t.is((await fsp.lstat(j(f.src, 'wh'))).rdev, 0);
    await sameStat(t, j(f.mnt, 'fifo'), j(f.src, 'fifo'));
    await sameStat(t, j(f.mnt, 'sock'), j(f.src, 'sock'));
    // Without `devices` the mount refuses device nodes (the source would allow them to root).
    t.is(
      ops.errnoOf(() => ops.mknod(j(f.mnt, 'null'), 'chr', 0o666, [1, 3])),
      'EPERM',
    );
    t.is(
      ops.errnoOf(() => ops.mknod(j(f.mnt, 'loop'), 'blk', 0o600, [7, 0])),
      'EPERM',
    );
    await t.throwsAsync(fsp.lstat(j(f.src, 'null')), { code: 'ENOENT' });
    t.is(
      ops.errnoOf(() => ops.mknod(j(f.ctl, 'null'), 'chr', 0o666, [1, 3])),
      'OK',
    );
  },
);

test('mknod with devices: device nodes are created and usable', async (t) => {
  const f = await mountFixture(t, { devices: true });
  ops.mknod(j(f.mnt, 'null'), 'chr', 0o666, [1, 3]);
  ops.mknod(j(f.mnt, 'loop'), 'blk', 0o600, [7, 0]);
  const n = await sameStat(t, j(f.mnt, 'null'), j(f.src, 'null'));
  t.true((await fsp.lstat(j(f.src, 'null'))).isCharacterDevice());
  t.is(n.rdev, BigInt((await fsp.stat('/dev/null')).rdev));
  t.true((await fsp.lstat(j(f.src, 'loop'))).isBlockDevice());
  await sameStat(t, j(f.mnt, 'loop'), j(f.src, 'loop'));
  // The mount honours the node: writing to this /dev/null discards, reading gives EOF.
  await fsp.writeFile(j(f.mnt, 'null'), 'discarded');
  t.is((await fsp.readFile(j(f.mnt, 'null'))).length, 0);
});

// ---- mkdir / unlink / rmdir

core('mkdir, unlink and rmdir with their errors', async (t, f) => {
  const out = await sameAsControl(t, f, [
    ['mkdir a', (d) => fsp.mkdir(j(d, 'a'), 0o750)],
    ['mkdir a again', (d) => fsp.mkdir(j(d, 'a'))],
    ['mkdir a/b', (d) => fsp.mkdir(j(d, 'a', 'b'))],
    ['write a/f', (d) => fsp.writeFile(j(d, 'a', 'f'), 'x')],
    ['rmdir a', (d) => fsp.rmdir(j(d, 'a'))],
    ['rmdir a/f', (d) => fsp.rmdir(j(d, 'a', 'f'))],
    ['unlink a/b', (d) => fsp.unlink(j(d, 'a', 'b'))],
    ['unlink a/missing', (d) => fsp.unlink(j(d, 'a', 'missing'))],
    ['mkdir in missing', (d) => fsp.mkdir(j(d, 'nope', 'x'))],
    ['mkdir below file', (d) => fsp.mkdir(j(d, 'a', 'f', 'x'))],
    ['rmdir .', (d) => fsp.rmdir(j(d, 'a', 'b') + '/.')],
    ['mkdir c', (d) => fsp.mkdir(j(d, 'c'), 0o700)],
    ['unlink a/f', (d) => fsp.unlink(j(d, 'a', 'f'))],
    ['rmdir a/b', (d) => fsp.rmdir(j(d, 'a', 'b'))],
    ['stat a/b', (d) => fsp.stat(j(d, 'a', 'b'))],
    ['rmdir a', (d) => fsp.rmdir(j(d, 'a'))],
  ]);
  t.deepEqual(out, [
    'mkdir a: OK',
    'mkdir a again: EEXIST',
    'mkdir a/b: OK',
    'write a/f: OK',
    'rmdir a: ENOTEMPTY',
    'rmdir a/f: ENOTDIR',
    'unlink a/b: EISDIR',
    'unlink a/missing: ENOENT',
    'mkdir in missing: ENOENT',
    'mkdir below file: ENOTDIR',
    'rmdir .: EINVAL',
    'mkdir c: OK',
    'unlink a/f: OK',
    'rmdir a/b: OK',
    'stat a/b: ENOENT',
    'rmdir a: OK',
  ]);
  t.deepEqual(await fsp.readdir(f.src), ['c']);
  t.is((await fsp.lstat(j(f.src, 'c'))).mode & 0o7777, 0o700);
});

// ---- rename

core(
  'rename: plain, over existing, NOREPLACE, EXCHANGE, WHITEOUT and directories',
  async (t, f) => {
    const w = (n: string, v: string) => (d: string) => fsp.writeFile(j(d, n), v);
    const r = (n: string) => (d: string) => fsp.readFile(j(d, n), 'utf8');
    const out = await sameAsControl(t, f, [
      ['write a', w('a', 'A')],
      ['write b', w('b', 'B')],
      ['rename a c', (d) => fsp.rename(j(d, 'a'), j(d, 'c'))],
      ['stat a', (d) => fsp.stat(j(d, 'a')).then(() => 'exists')],
      ['rename c over b', (d) => fsp.rename(j(d, 'c'), j(d, 'b'))],
      ['read b', r('b')],
      ['write x', w('x', 'X')],
      ['noreplace x b', (d) => ops.rename2(j(d, 'x'), j(d, 'b'), ['noreplace'])],
      ['noreplace x y', (d) => ops.rename2(j(d, 'x'), j(d, 'y'), ['noreplace'])],
      ['exchange y b', (d) => ops.rename2(j(d, 'y'), j(d, 'b'), ['exchange'])],
      ['read b', r('b')],
      ['read y', r('y')],
      ['exchange with missing', (d) => ops.rename2(j(d, 'y'), j(d, 'nope'), ['exchange'])],
      ['both flags', (d) => ops.rename2(j(d, 'y'), j(d, 'b'), ['exchange', 'noreplace'])],
      ['mkdir d1', (d) => fsp.mkdir(j(d, 'd1'))],
      ['write d1/in', w('d1/in', 'IN')],
      ['rename dir', (d) => fsp.rename(j(d, 'd1'), j(d, 'd2'))],
      ['read d2/in', r('d2/in')],
      ['dir over file', (d) => fsp.rename(j(d, 'd2'), j(d, 'y'))],
      ['file over dir', (d) => fsp.rename(j(d, 'y'), j(d, 'd2'))],
      ['mkdir e', (d) => fsp.mkdir(j(d, 'e'))],
      ['dir over empty dir', (d) => fsp.rename(j(d, 'd2'), j(d, 'e'))],
      ['mkdir g', (d) => fsp.mkdir(j(d, 'g'))],
      ['write g/z', w('g/z', 'Z')],
      ['dir over non-empty dir', (d) => fsp.rename(j(d, 'e'), j(d, 'g'))],
      ['dir into itself', (d) => fsp.rename(j(d, 'g'), j(d, 'g', 'sub'))],
      ['exchange file and dir', (d) => ops.rename2(j(d, 'y'), j(d, 'g'), ['exchange'])],
      ['read g (was y)', r('g')],
      ['read y/z (was g/z)', r('y/z')],
      ['across directories', (d) => fsp.rename(j(d, 'y', 'z'), j(d, 'e', 'z2'))],
      ['read e/z2', r('e/z2')],
      ['missing source', (d) => fsp.rename(j(d, 'missing'), j(d, 'm2'))],
      ['into missing dir', (d) => fsp.rename(j(d, 'b'), j(d, 'missing', 'b'))],
      ['onto itself', (d) => fsp.rename(j(d, 'b'), j(d, 'b'))],
      ['write wsrc', w('wsrc', 'W')],
      ['whiteout', (d) => ops.rename2(j(d, 'wsrc'), j(d, 'wdst'), ['whiteout'])],
      ['read wdst', r('wdst')],
      [
        'whiteout left',
        (d) => fsp.lstat(j(d, 'wsrc')).then((s) => [s.isCharacterDevice(), s.rdev]),
      ],
    ]);
    for (const line of [
      'rename c over b: OK',
      'read b: "A"',
      'noreplace x b: EEXIST',
      'read y: "A"',
      'dir over non-empty dir: ENOTEMPTY',
      'dir into itself: EINVAL',
      'read y/z (was g/z): "Z"',
      'read e/z2: "Z"',
      'whiteout left: [true,0]',
    ])
      t.true(out.includes(line), line);
  },
);

// ---- link

core('link: a second name for the same inode', async (t, f) => {
  const out = await sameAsControl(t, f, [
    ['write f', (d) => fsp.writeFile(j(d, 'f'), 'linked')],
    ['link f g', (d) => fsp.link(j(d, 'f'), j(d, 'g'))],
    ['nlink', async (d) => [(await fsp.stat(j(d, 'f'))).nlink, (await fsp.stat(j(d, 'g'))).nlink]],
    ['same ino', async (d) => (await fsp.stat(j(d, 'f'))).ino === (await fsp.stat(j(d, 'g'))).ino],
    ['link again', (d) => fsp.link(j(d, 'f'), j(d, 'g'))],
    ['mkdir d', (d) => fsp.mkdir(j(d, 'd'))],
    ['link dir', (d) => fsp.link(j(d, 'd'), j(d, 'd2'))],
    ['link into dir', (d) => fsp.link(j(d, 'g'), j(d, 'd', 'h'))],
    ['link missing', (d) => fsp.link(j(d, 'missing'), j(d, 'x'))],
    ['symlink s', (d) => fsp.symlink('f', j(d, 's'))],
    ['link symlink', (d) => fsp.link(j(d, 's'), j(d, 's2'))],
    ['s2 is symlink', async (d) => (await fsp.lstat(j(d, 's2'))).isSymbolicLink()],
    ['append via h', (d) => fsp.appendFile(j(d, 'd', 'h'), '+')],
    ['read f', (d) => fsp.readFile(j(d, 'f'), 'utf8')],
    ['unlink f', (d) => fsp.unlink(j(d, 'f'))],
    ['nlink g', async (d) => (await fsp.stat(j(d, 'g'))).nlink],
  ]);
  t.true(out.includes('nlink: [2,2]'));
  t.true(out.includes('same ino: true'));
  t.true(out.includes('read f: "linked+"'));
  t.true(out.includes('nlink g: 2'));
  const g = await sameStat(t, j(f.mnt, 'g'), j(f.src, 'g'), ['atimeNs']);
  t.is(g.ino, (await fsp.stat(j(f.mnt, 'd', 'h'), { bigint: true })).ino);
});

// ---- open / create

core('open and create: O_EXCL, O_TRUNC, O_APPEND and open errors', async (t, f) => {
  const out = await sameAsControl(t, f, [
    ['create excl', (d) => fsp.writeFile(j(d, 'n'), 'one', { flag: 'wx' })],
    ['create excl again', (d) => fsp.writeFile(j(d, 'n'), 'two', { flag: 'wx' })],
    ['trunc', (d) => fsp.writeFile(j(d, 'n'), 'two!', { flag: 'w' })],
    ['read', (d) => fsp.readFile(j(d, 'n'), 'utf8')],
    [
      'append from two descriptors',
      async (d) => {
        const a = await fsp.open(j(d, 'n'), 'a');
        const b = await fsp.open(j(d, 'n'), 'a');
        await a.write('x');
        await b.write('y');
        await a.write('z', null);
        await b.write('!', 0); // O_APPEND ignores the offset
        await a.close();
        await b.close();
      },
    ],
    ['read appended', (d) => fsp.readFile(j(d, 'n'), 'utf8')],
    ['open missing', (d) => fsp.open(j(d, 'missing'), 'r')],
    ['mkdir dir', (d) => fsp.mkdir(j(d, 'dir'))],
    ['open dir for write', (d) => fsp.open(j(d, 'dir'), 'r+')],
    ['O_DIRECTORY on file', (d) => fsp.open(j(d, 'n'), C.O_RDONLY | C.O_DIRECTORY)],
    ['symlink', (d) => fsp.symlink('n', j(d, 'sl'))],
    ['O_NOFOLLOW on symlink', (d) => fsp.open(j(d, 'sl'), C.O_RDONLY | C.O_NOFOLLOW)],
    ['dangling symlink', (d) => fsp.symlink('made', j(d, 'dang'))],
    ['O_CREAT|O_EXCL through dangling', (d) => fsp.open(j(d, 'dang'), 'wx')],
    ['O_CREAT through dangling', (d) => fsp.writeFile(j(d, 'dang'), 'via link')],
    ['read made', (d) => fsp.readFile(j(d, 'made'), 'utf8')],
    ['create 0600', (d) => fsp.writeFile(j(d, 'p'), '', { mode: 0o600 })],
    ['mode', async (d) => ((await fsp.stat(j(d, 'p'))).mode & 0o7777).toString(8)],
    ['chmod 000', (d) => fsp.chmod(j(d, 'p'), 0)],
    ['root opens 000 file', (d) => fsp.readFile(j(d, 'p'), 'utf8')],
    [
      'O_TRUNC on read-write open',
      (d) => fsp.open(j(d, 'n'), 'r+').then((h) => h.truncate(0).then(() => h.close())),
    ],
    ['size', async (d) => (await fsp.stat(j(d, 'n'))).size],
    ['create in missing dir', (d) => fsp.writeFile(j(d, 'nope', 'x'), '')],
  ]);
  for (const line of [
    'create excl again: EEXIST',
    'read: "two!"',
    'read appended: "two!xyz!"',
    'open dir for write: EISDIR',
    'O_DIRECTORY on file: ENOTDIR',
    'O_NOFOLLOW on symlink: ELOOP',
    'O_CREAT|O_EXCL through dangling: EEXIST',
    'read made: "via link"',
    'mode: "600"',
  ])
    t.true(out.includes(line), line);
});

// ---- read / write

core('read and write at random offsets match a model of the file', async (t, { src, mnt }) => {
  const seed = (Math.random() * 2 ** 32) >>> 0;
  t.log(`seed ${seed}`);
  const rnd = mulberry32(seed);
  let model = randomBytes(MiB);
  await fsp.writeFile(j(mnt, 'f'), model);
  const h = await fsp.open(j(mnt, 'f'), 'r+');
  const reader = await fsp.open(j(mnt, 'f'), 'r');
  try {
    for (let i = 0; i < 300; i++) {
      const op = rnd();
      if (op < 0.5) {
        const off = Math.floor(rnd() * 2 * MiB);
        const len = 1 + Math.floor(rnd() * 128 * 1024);
        const data = randomBytes(len);
        const { bytesWritten } = await h.write(data, 0, len, off);
        t.is(bytesWritten, len);
        if (off + len > model.length)
          model = Buffer.concat([model, Buffer.alloc(off + len - model.length)]);
        data.copy(model, off);
      } else if (op < 0.95) {
        const off = Math.floor(rnd() * model.length);
        const len = 1 + Math.floor(rnd() * 200 * 1024);
        const buf = Buffer.alloc(len);
        const { bytesRead } = await (op < 0.7 ? h : reader).read(buf, 0, len, off);
        const want = model.subarray(off, Math.min(model.length, off + len));
        t.is(bytesRead, want.length);
        if (!buf.subarray(0, bytesRead).equals(want))
          t.fail(`read mismatch at ${off}+${len} (op ${i})`);
      } else {
        const size = Math.floor(rnd() * 2 * MiB);
        await h.truncate(size);
        model =
          size <= model.length
            ? Buffer.from(model.subarray(0, size))
            : Buffer.concat([model, Buffer.alloc(size - model.length)]);
      }
    }
  } finally {
    await h.close();
    await reader.close();
  }
  t.true((await fsp.readFile(j(mnt, 'f'))).equals(model), 'mount content');
  t.true((await fsp.readFile(j(src, 'f'))).equals(model), 'source content');
  await sameStat(t, j(mnt, 'f'), j(src, 'f'), ['atimeNs']);
});

let big: Buffer | undefined;
const bigData = (): Buffer => (big ??= randomBytes(64 * MiB));

core(
  'a 64 MiB file written and read through the mount, byte for byte',
  async (t, { src, mnt }) => {
    const data = bigData();
    await fsp.writeFile(j(mnt, 'big'), data);
    t.true((await fsp.readFile(j(src, 'big'))).equals(data), 'source content');
    t.true((await fsp.readFile(j(mnt, 'big'))).equals(data), 'mount content');
    // Reads straddling 1 MiB request boundaries at odd offsets.
    const h = await fsp.open(j(mnt, 'big'), 'r');
    try {
      for (const off of [0, MiB - 1, 17 * MiB + 12345, 64 * MiB - 5000]) {
        const buf = Buffer.alloc(3 * MiB);
        const { bytesRead } = await h.read(buf, 0, buf.length, off);
        t.true(buf.subarray(0, bytesRead).equals(data.subarray(off, off + 3 * MiB)), `at ${off}`);
      }
    } finally {
      await h.close();
    }
    await sameStat(t, j(mnt, 'big'), j(src, 'big'), ['atimeNs']);
  },
  undefined,
  { serial: true },
);

core(
  'sparse files: holes read as zeros, sizes and allocation match the source',
  async (t, { src, mnt }) => {
    const h = await fsp.open(j(mnt, 's'), 'w');
    await h.write('head', 0);
    await h.write('middle', 10 * MiB + 3);
    await h.write('tail', 100 * MiB);
    await h.sync();
    await h.close();
    const st = await sameStat(t, j(mnt, 's'), j(src, 's'));
    t.is(st.size, BigInt(100 * MiB + 4));
    t.true(st.blocks < 1000n, `sparse on the source too (${st.blocks} blocks)`);
    const r = await fsp.open(j(mnt, 's'), 'r');
    try {
      const buf = Buffer.alloc(64 * 1024, 0xff);
      await r.read(buf, 0, buf.length, 50 * MiB);
      t.true(buf.equals(Buffer.alloc(buf.length)), 'hole reads as zeros');
      const mid = Buffer.alloc(10);
      await r.read(mid, 0, 10, 10 * MiB);
      t.deepEqual(mid, Buffer.from('\0\0\0middle\0'));
    } finally {
      await r.close();
    }
    t.deepEqual(ops.seekmap(j(mnt, 's')), ops.seekmap(j(src, 's')));
    await fsp.truncate(j(mnt, 's'), 200 * MiB);
    t.deepEqual(ops.seekmap(j(mnt, 's')), ops.seekmap(j(src, 's')));
    t.is(ops.seek(j(mnt, 's'), 'hole', 100 * MiB), ops.seek(j(src, 's'), 'hole', 100 * MiB));
  },
);

// ---- flush / fsync

core('fsync, fdatasync and close of files and directories', async (t, { src, mnt, m }) => {
  const h = await fsp.open(j(mnt, 'f'), 'w');
  await h.write('synced data');
  await h.sync();
  await h.write(' more');
  await h.datasync();
  await h.close();
  t.is(await fsp.readFile(j(src, 'f'), 'utf8'), 'synced data more');
  const r = await fsp.open(j(mnt, 'f'), 'r');
  await r.sync(); // fsync of a read-only descriptor is allowed
  await r.close();
  await fsp.mkdir(j(mnt, 'd'));
  const d = await fsp.open(j(mnt, 'd'), 'r');
  await d.sync();
  await d.datasync();
  await d.close();
  const s = m.stats();
  t.true((s.ops.flush?.count ?? 0) > 0, 'close sends FLUSH');
  t.true((s.ops.fsyncdir?.count ?? 0) > 0, 'directory fsync reaches the daemon');
  t.is(s.ops.fsync?.errors ?? 0, 0);
});

// ---- readdir / readdirplus

async function prepareBigDir(src: string): Promise<void> {
  const d = j(src, 'big');
  await fsp.mkdir(d);
  const fifos: string[] = [];
  for (let i = 0; i < 5000; i++) {
    const name = `e${i}-${'n'.repeat(i % 200)}`;
    switch (i % 4) {
      case 0:
        await fsp.mkdir(j(d, name));
        break;
      case 1:
        await fsp.writeFile(j(d, name), String(i));
        break;
      case 2:
        await fsp.symlink(`target-${i}`, j(d, name));
        break;
      default:
        fifos.push(name);
    }
  }
  const r = spawnSync('mkfifo', fifos, { cwd: d });
  if (r.status !== 0) throw new Error(`mkfifo: ${r.stderr.toString()}`);
}

core(
  'readdir of 5000 entries: names, d_ino and d_type match; readdirplus entries stat as the source',
  async (t, { src, mnt, m }) => {
    const byName = (e: [string, string, number][]): [string, string, number][] =>
      e.filter(([n]) => n !== '..').sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const mine = byName(ops.readdir(j(mnt, 'big')));
    const theirs = byName(ops.readdir(j(src, 'big')));
    t.is(mine.length, 5001);
    t.deepEqual(mine, theirs);
    t.true((m.stats().ops.readdirplus?.count ?? 0) > 0, 'readdirplus used');
    const dirents = await fsp.readdir(j(mnt, 'big'), { withFileTypes: true });
    const srcents = await fsp.readdir(j(src, 'big'), { withFileTypes: true });
    const desc = (e: typeof dirents): string[] =>
      e
        .map(
          (x) =>
            `${x.name}:${x.isDirectory() ? 'd' : x.isFile() ? 'f' : x.isSymbolicLink() ? 'l' : x.isFIFO() ? 'p' : '?'}`,
        )
        .sort();
    t.deepEqual(desc(dirents), desc(srcents));
    // Attributes handed out with readdirplus are the source's.
    let mismatches = 0;
    for (const e of dirents) {
      const a = await fsp.lstat(j(mnt, 'big', e.name), { bigint: true });
      const b = await fsp.lstat(j(src, 'big', e.name), { bigint: true });
      if (
        JSON.stringify(pick(a, ['atimeNs']), (_, v) => String(v)) !==
        JSON.stringify(pick(b, ['atimeNs']), (_, v) => String(v))
      )
        mismatches++;
    }
    t.is(mismatches, 0);
    // Entries created and removed through the mount show up in the next listing.
    await fsp.writeFile(j(mnt, 'big', 'new-file'), '');
    await fsp.rmdir(j(mnt, 'big', 'e0-'));
    const after = new Set(await fsp.readdir(j(mnt, 'big')));
    t.true(after.has('new-file'));
    t.false(after.has('e0-'));
    t.is(after.size, 5000);
  },
  prepareBigDir,
  // Serial: each mount holds a descriptor per inode the kernel knows, and four mounts of 5000
  // entries at once in this one process would exceed RLIMIT_NOFILE.
  { serial: true },
);

// ---- statfs

core('statfs reports the source filesystem', async (t, { src, mnt }) => {
  const a = ops.statvfs(j(mnt));
  const b = ops.statvfs(j(src));
  for (const k of ['bsize', 'frsize', 'blocks', 'files', 'namemax'] as const) t.is(a[k], b[k], k);
  // Free counts move with everything else writing to the disk: take the mount's value between two
  // identical readings of the source. Equal readings can still hide churn in between (another
  // test frees an inode and takes one again), so a mismatch there is retried; a mount that never
  // matches a stable source fails.
  let stable = 0;
  let matched = false;
  let last: unknown[] = [];
  for (let i = 0; i < 50 && !matched; i++) {
    const s1 = ops.statvfs(src);
    const mm = ops.statvfs(mnt);
    const s2 = ops.statvfs(src);
    if (s1.bfree !== s2.bfree || s1.ffree !== s2.ffree || s1.bavail !== s2.bavail) continue;
    stable++;
    const got = [mm.bfree, mm.bavail, mm.ffree];
    const want = [s1.bfree, s1.bavail, s1.ffree];
    matched = got.every((v, k) => v === want[k]);
    last = [got, want];
  }
  if (stable === 0) t.log('free counts never stable (busy disk); only static fields compared');
  else t.true(matched, `mount [bfree, bavail, ffree] vs source: ${JSON.stringify(last)}`);
  const n = await fsp.statfs(mnt);
  t.is(n.type, 0x65735546, 'FUSE_SUPER_MAGIC');
});

// ---- xattrs

core('extended attributes: set, get, list, remove, flags and errors', async (t, f) => {
  const bin = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 37) & 0xff));
  const longName = 'user.' + 'n'.repeat(250);
  const out = await sameAsControl(t, f, [
    ['file', (d) => fsp.writeFile(j(d, 'f'), 'x')],
    ['mkdir', (d) => fsp.mkdir(j(d, 'dir'))],
    ['symlink', (d) => fsp.symlink('f', j(d, 'l'))],
    ['fifo', (d) => ops.mknod(j(d, 'p'), 'fifo', 0o644)],
    ['list empty', (d) => ops.listxattr(j(d, 'f'))],
    ['set a', (d) => ops.setxattr(j(d, 'f'), 'user.a', 'value-a')],
    ['get a', (d) => ops.getxattr(j(d, 'f'), 'user.a').value.toString()],
    ['set binary', (d) => ops.setxattr(j(d, 'f'), 'user.bin', bin)],
    ['get binary', (d) => ops.getxattr(j(d, 'f'), 'user.bin').value.equals(bin)],
    ['size probe and ERANGE', (d) => ops.getxattr(j(d, 'f'), 'user.bin')],
    ['set empty', (d) => ops.setxattr(j(d, 'f'), 'user.empty', '')],
    ['get empty', (d) => ops.getxattr(j(d, 'f'), 'user.empty').size],
    ['create existing', (d) => ops.setxattr(j(d, 'f'), 'user.a', 'z', { flag: 'create' })],
    ['create new', (d) => ops.setxattr(j(d, 'f'), 'user.c', 'c', { flag: 'create' })],
    ['replace missing', (d) => ops.setxattr(j(d, 'f'), 'user.nope', 'z', { flag: 'replace' })],
    ['replace existing', (d) => ops.setxattr(j(d, 'f'), 'user.a', 'replaced', { flag: 'replace' })],
    ['get replaced', (d) => ops.getxattr(j(d, 'f'), 'user.a').value.toString()],
    ['get missing', (d) => ops.getxattr(j(d, 'f'), 'user.nope')],
    ['list', (d) => ops.listxattr(j(d, 'f')).sort()],
    ['remove bin', (d) => ops.removexattr(j(d, 'f'), 'user.bin')],
    ['remove bin again', (d) => ops.removexattr(j(d, 'f'), 'user.bin')],
    ['list after remove', (d) => ops.listxattr(j(d, 'f')).sort()],
    ['255-byte name', (d) => ops.setxattr(j(d, 'f'), longName, 'v')],
    ['256-byte name', (d) => ops.setxattr(j(d, 'f'), longName + 'n', 'v')],
    ['unknown namespace', (d) => ops.setxattr(j(d, 'f'), 'bogus.x', 'v')],
    ['on directory', (d) => ops.setxattr(j(d, 'dir'), 'user.d', 'dirval')],
    ['get on directory', (d) => ops.getxattr(j(d, 'dir'), 'user.d').value.toString()],
    ['user.* on symlink itself', (d) => ops.setxattr(j(d, 'l'), 'user.x', 'v', { nofollow: true })],
    [
      'trusted.* on symlink itself',
      (d) => ops.setxattr(j(d, 'l'), 'trusted.x', 'tv', { nofollow: true }),
    ],
    [
      'lget trusted',
      (d) => ops.getxattr(j(d, 'l'), 'trusted.x', { nofollow: true }).value.toString(),
    ],
    ['llist symlink', (d) => ops.listxattr(j(d, 'l'), { nofollow: true })],
    ['get through symlink', (d) => ops.getxattr(j(d, 'l'), 'user.a').value.toString()],
    ['lremove trusted', (d) => ops.removexattr(j(d, 'l'), 'trusted.x', { nofollow: true })],
    ['user.* on fifo', (d) => ops.setxattr(j(d, 'p'), 'user.x', 'v', { nofollow: true })],
    ['on missing file', (d) => ops.setxattr(j(d, 'missing'), 'user.x', 'v')],
  ]);
  for (const line of [
    'get a: "value-a"',
    'get binary: true',
    'size probe and ERANGE: {"value":{"type":"Buffer","data":[' +
      [...bin].join(',') +
      ']},"size":1000,"erangeWhenShort":true}',
    'get empty: 0',
    'create existing: EEXIST',
    'replace missing: ENODATA',
    'get replaced: "replaced"',
    'get missing: ENODATA',
    'list: ["user.a","user.bin","user.c","user.empty"]',
    'remove bin again: ENODATA',
    '255-byte name: OK',
    '256-byte name: ERANGE',
    'user.* on symlink itself: EPERM',
    'lget trusted: "tv"',
    'get through symlink: "replaced"',
  ])
    t.true(out.includes(line), line);
  // The attributes live on the source, and attributes set there are seen through the mount.
  t.is(ops.getxattr(j(f.src, 'f'), 'user.c').value.toString(), 'c');
  ops.setxattr(j(f.src, 'f'), 'user.fromsrc', 'S');
  t.is(ops.getxattr(j(f.mnt, 'f'), 'user.fromsrc').value.toString(), 'S');
  t.deepEqual(ops.listxattr(j(f.mnt, 'f')).sort(), ops.listxattr(j(f.src, 'f')).sort());
});

// ---- access

core('access(2) as root matches the source for every mode', async (t, f) => {
  const modes = [0o000, 0o100, 0o010, 0o001, 0o444, 0o644, 0o755];
  const masks = [C.F_OK, C.R_OK, C.W_OK, C.X_OK, C.R_OK | C.W_OK | C.X_OK];
  const steps: Step[] = [];
  for (const mode of modes) {
    steps.push([
      `file ${mode.toString(8)}`,
      (d) =>
        fsp.writeFile(j(d, `f${mode}`), '', { mode }).then(() => fsp.chmod(j(d, `f${mode}`), mode)),
    ]);
    steps.push([
      `dir ${mode.toString(8)}`,
      (d) => fsp.mkdir(j(d, `d${mode}`)).then(() => fsp.chmod(j(d, `d${mode}`), mode)),
    ]);
    for (const mask of masks) {
      steps.push([
        `access f${mode.toString(8)} ${mask}`,
        (d) => fsp.access(j(d, `f${mode}`), mask),
      ]);
      steps.push([
        `access d${mode.toString(8)} ${mask}`,
        (d) => fsp.access(j(d, `d${mode}`), mask),
      ]);
    }
  }
  steps.push(['access missing', (d) => fsp.access(j(d, 'missing'))]);
  const out = await sameAsControl(t, f, steps);
  t.true(out.includes('access f0 1: EACCES'), 'root cannot execute a file nobody may execute');
  t.true(out.includes('access f100 1: OK'));
  t.true(out.includes('access f0 4: OK'), 'root reads anything');
  t.true(out.includes('access f0 2: OK'), 'root writes anything');
  t.true(out.includes('access d0 1: OK'), 'root searches any directory');
});

test('access(2) as an unprivileged user matches the source (allowOther)', async (t) => {
  const f = await mountFixture(t, { allowOther: true });
  await fsp.chmod(f.root, 0o755);
  const ctl = j(f.root, 'ctl');
  await fsp.mkdir(ctl);
  for (const dir of [f.mnt, ctl]) {
    for (const [name, mode, uid, gid] of [
      ['own000', 0o000, 1000, 0],
      ['own700', 0o700, 1000, 0],
      ['own070', 0o070, 1000, 0],
      ['grp070', 0o070, 0, 1000],
      ['oth007', 0o007, 0, 0],
      ['oth640', 0o640, 0, 0],
      ['root755', 0o755, 0, 0],
    ] as const) {
      await fsp.writeFile(j(dir, name), '');
      await fsp.chown(j(dir, name), uid, gid);
      await fsp.chmod(j(dir, name), mode);
    }
  }
  const script =
    'for f in *; do for m in r w x; do if test -$m "$f"; then echo "$f $m y"; else echo "$f $m n"; fi; done; done';
  const asUser = (dir: string): string => {
    const r = spawnSync('sh', ['-c', script], { cwd: dir, uid: 1000, gid: 1000, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    return r.stdout;
  };
  const a = asUser(f.mnt);
  t.is(a, asUser(ctl));
  t.regex(a, /own700 r y/);
  t.regex(a, /own070 r n/);
  t.regex(a, /grp070 w y/);
  t.regex(a, /oth640 r n/);
});

// ---- fallocate

core('fallocate: allocate, keep size, punch hole and zero range as on the source', async (t, f) => {
  const data = randomBytes(MiB);
  // Extent maps are compared between the mount and the source only: which parts of an unwritten
  // extent SEEK_DATA reports depends on page-cache state, not on the operation.
  const state = async (d: string, n: string): Promise<unknown> => {
    const st = await fsp.stat(j(d, n));
    return { size: st.size, sha: sha(await fsp.readFile(j(d, n))) };
  };
  const out = await sameAsControl(t, f, [
    ['allocate new', (d) => ops.fallocate(j(d, 'a'), [], 0, 4 * MiB)],
    ['state a', (d) => state(d, 'a')],
    ['write data', (d) => fsp.writeFile(j(d, 'b'), data)],
    ['keep size', (d) => ops.fallocate(j(d, 'b'), ['keep_size'], MiB, MiB)],
    ['size b', async (d) => (await fsp.stat(j(d, 'b'))).size],
    ['punch without keep_size', (d) => ops.fallocate(j(d, 'b'), ['punch_hole'], 0, 4096)],
    [
      'punch hole',
      (d) => ops.fallocate(j(d, 'b'), ['punch_hole', 'keep_size'], 64 * 1024, 128 * 1024),
    ],
    ['holes', (d) => ops.seekmap(j(d, 'b'))],
    ['state b', (d) => state(d, 'b')],
    ['zero range', (d) => ops.fallocate(j(d, 'b'), ['zero_range'], 512 * 1024, 64 * 1024)],
    ['state b after', (d) => state(d, 'b')],
    ['extend', (d) => ops.fallocate(j(d, 'b'), [], 2 * MiB, 4096)],
    ['state b extended', (d) => state(d, 'b')],
    ['bad range', (d) => ops.fallocate(j(d, 'b'), [], 0, 0)],
  ]);
  t.true(out.includes('punch without keep_size: EOPNOTSUPP'));
  t.true(out.includes(`size b: ${MiB}`));
  t.true(out.includes(`holes: {"size":${MiB},"data":[[0,65536],[196608,${MiB}]]}`));
  const want = Buffer.concat([data, Buffer.alloc(MiB + 4096)]);
  want.fill(0, 64 * 1024, 192 * 1024);
  want.fill(0, 512 * 1024, 576 * 1024);
  t.true((await fsp.readFile(j(f.mnt, 'b'))).equals(want), 'punched and zeroed ranges read zeros');
  t.true((await fsp.readFile(j(f.src, 'b'))).equals(want));
  for (const n of ['a', 'b']) {
    await sameStat(t, j(f.mnt, n), j(f.src, n), ['atimeNs']);
    t.deepEqual(ops.seekmap(j(f.mnt, n)), ops.seekmap(j(f.src, n)));
  }
  // The kernel's FUSE client forwards only KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE; the others fail
  // before reaching the daemon.
  t.is(
    ops.errnoOf(() => ops.fallocate(j(f.mnt, 'b'), ['collapse_range'], 0, 4096)),
    'EOPNOTSUPP',
  );
  t.is(
    ops.errnoOf(() => ops.fallocate(j(f.ctl, 'b'), ['collapse_range'], 0, 4096)),
    'OK',
  );
  t.true((f.m.stats().ops.fallocate?.count ?? 0) > 0);
});

// ---- copy_file_range

core('copy_file_range between files on the mount', async (t, { src, mnt, m }) => {
  const data = randomBytes(3 * MiB);
  await fsp.writeFile(j(mnt, 'a'), data);
  t.is(ops.copyFileRange(j(mnt, 'a'), 1000, j(mnt, 'b'), 0, 2 * MiB), 2 * MiB);
  let want = Buffer.from(data.subarray(1000, 1000 + 2 * MiB));
  t.true((await fsp.readFile(j(mnt, 'b'))).equals(want));
  // Into the middle of an existing file, and past the end of the input.
  t.is(ops.copyFileRange(j(mnt, 'a'), 0, j(mnt, 'b'), 5000, 4096), 4096);
  data.copy(want, 5000, 0, 4096);
  t.is(ops.copyFileRange(j(mnt, 'a'), 3 * MiB - 10, j(mnt, 'b'), 2 * MiB, 100), 10);
  want = Buffer.concat([want, data.subarray(3 * MiB - 10)]);
  t.true((await fsp.readFile(j(mnt, 'b'))).equals(want), 'mount content');
  t.true((await fsp.readFile(j(src, 'b'))).equals(want), 'source content');
  t.is(ops.copyFileRange(j(mnt, 'a'), 3 * MiB, j(mnt, 'b'), 0, 100), 0);
  t.true(
    (m.stats().ops.copy_file_range?.count ?? 0) > 0,
    'served by the daemon in the backing filesystem',
  );
});

// ---- lseek

core(
  'lseek SEEK_DATA/SEEK_HOLE at every boundary matches the source',
  async (t, { src, mnt }) => {
    const probes = [
      0,
      1,
      4095,
      4096,
      MiB - 1,
      MiB,
      2 * MiB,
      3 * MiB + 5,
      5 * MiB,
      8 * MiB - 1,
      8 * MiB,
      9 * MiB,
    ];
    const outcome = (p: string, w: 'data' | 'hole', off: number): number | string => {
      try {
        return ops.seek(p, w, off);
      } catch (e) {
        return (e as ops.FsopsError).code;
      }
    };
    for (const p of probes)
      for (const w of ['data', 'hole'] as const)
        t.is(outcome(j(mnt, 's'), w, p), outcome(j(src, 's'), w, p), `${w} from ${p}`);
    const map = ops.seekmap(j(mnt, 's'));
    t.deepEqual(map, ops.seekmap(j(src, 's')));
    t.deepEqual(map.data, [
      [MiB, 2 * MiB],
      [5 * MiB, 6 * MiB],
    ]);
    t.is(
      ops.errnoOf(() => ops.seek(j(mnt, 's'), 'data', 9 * MiB)),
      'ENXIO',
    );
  },
  async (src) => {
    const h = await fsp.open(j(src, 's'), 'w');
    await h.write(Buffer.alloc(MiB, 1), 0, MiB, MiB);
    await h.write(Buffer.alloc(MiB, 2), 0, MiB, 5 * MiB);
    await h.truncate(8 * MiB);
    await h.sync();
    await h.close();
  },
);

// ---- statx

core('statx: birth time and every basic field match the source', async (t, { src, mnt }) => {
  await fsp.writeFile(j(mnt, 'f'), 'born');
  await fsp.mkdir(j(mnt, 'd'));
  for (const n of ['f', 'd', '']) {
    const a = ops.statx(j(mnt, n));
    const b = ops.statx(j(src, n));
    t.truthy(a.mask & ops.STATX_BTIME, 'btime reported');
    t.deepEqual(a.btime, b.btime, `btime of ${n || 'root'}`);
    const { dev: _d1, mask: _m1, attributes: _a1, ...ra } = a;
    const { dev: _d2, mask: _m2, attributes: _a2, ...rb } = b;
    t.deepEqual(ra, rb);
  }
  const fx = ops.statx(j(mnt, 'f'));
  t.true(fx.btime![0] > 0);
  await fsp.symlink('f', j(mnt, 'l'));
  t.deepEqual(
    ops.statx(j(mnt, 'l'), { nofollow: true }).btime,
    ops.statx(j(src, 'l'), { nofollow: true }).btime,
  );
  t.is(ops.statx(j(mnt, 'l')).ino, fx.ino);
});

// ---- O_TMPFILE

core('O_TMPFILE: anonymous until linked, then an ordinary file', async (t, f) => {
  await fsp.mkdir(j(f.mnt, 'd'));
  await fsp.mkdir(j(f.ctl, 'd'));
  const anon = ops.tmpfile(j(f.mnt, 'd'), 0o600, 'never seen');
  t.is(anon.nlink, 0);
  t.deepEqual(await fsp.readdir(j(f.src, 'd')), []);
  const linked = ops.tmpfile(j(f.mnt, 'd'), 0o640, 'secret', j(f.mnt, 'd', 'named'));
  const reference = ops.tmpfile(j(f.ctl, 'd'), 0o640, 'secret', j(f.ctl, 'd', 'named'));
  t.deepEqual({ ...linked, ino: 0 }, { ...reference, ino: 0 });
  t.is(linked.nlink, 0);
  t.is(linked.nlinkAfter, 1);
  t.is(await fsp.readFile(j(f.src, 'd', 'named'), 'utf8'), 'secret');
  t.is(await fsp.readFile(j(f.mnt, 'd', 'named'), 'utf8'), 'secret');
  t.is((await fsp.stat(j(f.mnt, 'd', 'named'))).ino.toString(), linked.ino);
  await sameStat(t, j(f.mnt, 'd', 'named'), j(f.src, 'd', 'named'), ['atimeNs']);
  t.deepEqual(await fsp.readdir(j(f.src, 'd')), ['named']);
  t.true((f.m.stats().ops.tmpfile?.count ?? 0) > 0);
});

// ---- name and path lengths

core('names of 255 bytes work, 256 bytes give ENAMETOOLONG', async (t, f) => {
  const n255 = 'a'.repeat(255);
  const n256 = 'b'.repeat(256);
  const utf = 'é'.repeat(127) + 'x'; // 255 bytes
  const out = await sameAsControl(t, f, [
    ['create 255', (d) => fsp.writeFile(j(d, n255), '255')],
    ['read 255', (d) => fsp.readFile(j(d, n255), 'utf8')],
    ['create 256', (d) => fsp.writeFile(j(d, n256), '')],
    ['stat 256', (d) => fsp.stat(j(d, n256))],
    ['mkdir 256', (d) => fsp.mkdir(j(d, n256))],
    ['symlink 256', (d) => fsp.symlink('x', j(d, n256))],
    ['rename to 256', (d) => fsp.rename(j(d, n255), j(d, n256))],
    ['utf-8 255 bytes', (d) => fsp.mkdir(j(d, utf))],
    ['utf-8 256 bytes', (d) => fsp.mkdir(j(d, utf + 'y'))],
    ['list', (d) => fsp.readdir(d).then((l) => l.map((n) => Buffer.byteLength(n)).sort())],
  ]);
  t.deepEqual(out, [
    'create 255: OK',
    'read 255: "255"',
    'create 256: ENAMETOOLONG',
    'stat 256: ENAMETOOLONG',
    'mkdir 256: ENAMETOOLONG',
    'symlink 256: ENAMETOOLONG',
    'rename to 256: ENAMETOOLONG',
    'utf-8 255 bytes: OK',
    'utf-8 256 bytes: ENAMETOOLONG',
    'list: [255,255]',
  ]);
});

core('paths up to 4095 bytes work through the mount, 4096 give ENAMETOOLONG', async (t, f) => {
  // Directories of 250-byte names until the next one would not fit, then a file name that makes
  // the path exactly 4095 bytes (PATH_MAX with its NUL).
  let rel = '';
  while (f.mnt.length + rel.length + 1 + 250 + 1 + 1 < 4095) {
    rel += '/' + 'd'.repeat(250);
    await fsp.mkdir(f.mnt + rel);
  }
  const file = f.mnt + rel + '/' + 'f'.repeat(4095 - (f.mnt.length + rel.length + 1));
  t.is(file.length, 4095);
  await fsp.writeFile(file, 'deep');
  t.is(await fsp.readFile(file, 'utf8'), 'deep');
  const srcFile = f.src + file.slice(f.mnt.length);
  t.is(await fsp.readFile(srcFile, 'utf8'), 'deep');
  await sameStat(t, file, srcFile, ['atimeNs']);
  await t.throwsAsync(fsp.writeFile(file + 'x', ''), { code: 'ENAMETOOLONG' });
  // Longer paths are fine relative to a deep working directory (one component at a time).
  const r = spawnSync(
    'sh',
    ['-c', `cd "${f.mnt + rel}" && mkdir -p x/y && echo ok > x/y/z && cat x/y/z`],
    { encoding: 'utf8' },
  );
  t.is(r.stdout, 'ok\n');
  t.is(await fsp.readFile(f.src + rel + '/x/y/z', 'utf8'), 'ok\n');
});

// ---- the data path: passthrough really engaged, or really not

async function prepareData(src: string): Promise<void> {
  await fsp.writeFile(j(src, 'existing'), bigData().subarray(0, 16 * MiB));
}

test('passthrough on: reads and writes of large files bypass the daemon', async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'on' }, prepareData);
  t.true(m.passthrough);
  const data = bigData().subarray(0, 16 * MiB);
  t.true((await fsp.readFile(j(mnt, 'existing'))).equals(data));
  await fsp.writeFile(j(mnt, 'written'), data);
  t.true((await fsp.readFile(j(src, 'written'))).equals(data));
  const h = await fsp.open(j(mnt, 'written'), 'r+');
  await h.write(Buffer.from('patched'), 0, 7, 5 * MiB);
  await h.close();
  const s = m.stats();
  t.is(s.ops.read?.count ?? 0, 0, 'no READ reached the daemon');
  t.is(s.ops.write?.count ?? 0, 0, 'no WRITE reached the daemon');
  t.deepEqual(s.daemonBytes, { read: 0, written: 0 });
  t.true(s.passthrough.enabled);
  t.true(s.passthrough.backingRegistered > 0);
  t.true(s.passthrough.opens >= 3);
  t.is(s.passthrough.failures, 0);
});

test('passthrough off: the same I/O goes through the daemon', async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'off' }, prepareData);
  t.false(m.passthrough);
  const data = bigData().subarray(0, 16 * MiB);
  t.true((await fsp.readFile(j(mnt, 'existing'))).equals(data));
  await fsp.writeFile(j(mnt, 'written'), data);
  t.true((await fsp.readFile(j(src, 'written'))).equals(data));
  const s = m.stats();
  t.true((s.ops.read?.count ?? 0) > 0);
  t.true((s.ops.write?.count ?? 0) > 0);
  t.true(s.daemonBytes.read >= 16 * MiB, `daemon read ${s.daemonBytes.read}`);
  t.true(s.daemonBytes.written >= 16 * MiB, `daemon wrote ${s.daemonBytes.written}`);
  t.is(s.passthrough.backingRegistered, 0);
});

test('passthrough: a writer opening a file already open read-only is served by the daemon', async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'on' }, async (s) => {
    await fsp.writeFile(j(s, 'f'), Buffer.alloc(MiB, 'a'));
  });
  const reader = await fsp.open(j(mnt, 'f'), 'r');
  const writer = await fsp.open(j(mnt, 'f'), 'r+');
  try {
    const patch = randomBytes(100000);
    await writer.write(patch, 0, patch.length, 300000);
    await writer.write(Buffer.from('end'), 0, 3, MiB); // extends the file
    const want = Buffer.concat([Buffer.alloc(MiB, 'a'), Buffer.from('end')]);
    patch.copy(want, 300000);
    const viaWriter = Buffer.alloc(want.length + 10);
    const a = await writer.read(viaWriter, 0, viaWriter.length, 0);
    t.true(viaWriter.subarray(0, a.bytesRead).equals(want), 'read back through the writer');
    const viaReader = Buffer.alloc(want.length + 10);
    const b = await reader.read(viaReader, 0, viaReader.length, 0);
    t.true(viaReader.subarray(0, b.bytesRead).equals(want), 'seen by the earlier reader');
    t.true((await fsp.readFile(j(src, 'f'))).equals(want), 'source content');
  } finally {
    await writer.close();
    await reader.close();
  }
  const s = m.stats();
  t.true(s.passthrough.directOpens > 0, 'the writer was a direct (daemon) open');
  t.true((s.ops.write?.count ?? 0) > 0);
});

for (const passthrough of ['on', 'off'] as const) {
  test(`mmap from another process sees and changes the data [passthrough ${passthrough}]`, async (t) => {
    const data = bigData().subarray(0, 4 * MiB);
    const { src, mnt } = await mountFixture(t, { passthrough }, async (s) => {
      await fsp.writeFile(j(s, 'prepared'), data);
    });
    await fsp.writeFile(j(mnt, 'written'), data);
    for (const n of ['prepared', 'written']) {
      const r = ops.mmap(j(mnt, n), 3 * MiB + 7, 64);
      t.is(r.size, data.length);
      t.deepEqual(r.data, data.subarray(3 * MiB + 7, 3 * MiB + 71));
      t.is(r.fnv1a, ops.fnv1a(data), `whole mapping of ${n}`);
    }
    const patch = Buffer.from('written through a shared mapping');
    const r = ops.mmap(j(mnt, 'written'), 100, patch.length, patch);
    t.deepEqual(r.data, patch);
    const srcData = await fsp.readFile(j(src, 'written'));
    t.deepEqual(srcData.subarray(100, 100 + patch.length), patch);
    t.true(srcData.subarray(0, 100).equals(data.subarray(0, 100)));
    t.deepEqual((await fsp.readFile(j(mnt, 'written'))).subarray(100, 100 + patch.length), patch);
  });
}

test('file handles: name_to_handle_at/open_by_handle_at reach the same inode', async (t) => {
  const { src, mnt } = await mountFixture(t, {}, async (s) => {
    await fsp.mkdir(j(s, 'd'));
    await fsp.writeFile(j(s, 'd', 'f'), 'x');
  });
  for (const n of ['d', 'd/f']) {
    const h = ops.handle(j(mnt, n), mnt);
    t.true(h.handleBytes > 0);
    t.is(h.ino, (await fsp.stat(j(src, n), { bigint: true })).ino.toString());
  }
});
