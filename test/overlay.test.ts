// The fusekit overlay's semantics and edge cases, through real mounts and real system calls:
// merged lookup (shadowing, opaque directories, whiteouts), copy-up (data byte for byte, holes,
// mode, owner, times, xattrs; atomic, and never touching a lower layer), inode numbers, lower
// hard links, readdir, the hidden trusted.overlay.* namespace, copy-up under open readers,
// read-only overlays, directory renames, ENOSPC on the upper, and every bad set of layers.
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { FusekitError, type Mount, mount } from '../lib';
import { tmpdir } from './helpers/fixture';
import * as ops from './helpers/fsops';
import type { Server } from './helpers/fsops';
import {
  DT,
  buildStandardLowers,
  fsopsServer,
  fusekitOverlay,
  kernelWhiteout,
  mkdirs,
  mountsUnder,
  pattern,
  sha256,
  snapshot,
  tmpfs,
  treeDigest,
  typeOf,
  writeSparse,
} from './helpers/overlay-util';

interface Env {
  root: string;
  lower: string[];
  upper: string;
  work: string;
  mnt: string;
  s: Server;
}

/** n empty lower layers (top first), an upper, a work dir and a mount point. */
async function dirs(t: ExecutionContext, n = 1): Promise<Env> {
  const root = await tmpdir(t, 'fusekit-ov-');
  const e: Env = {
    root,
    lower: Array.from({ length: n }, (_, i) => path.join(root, `l${i + 1}`)),
    upper: path.join(root, 'upper'),
    work: path.join(root, 'work'),
    mnt: path.join(root, 'mnt'),
    s: fsopsServer(t),
  };
  mkdirs(...e.lower, e.upper, e.work, e.mnt);
  return e;
}

const hex = (s: string | Buffer): string => Buffer.from(s).toString('hex');
const m = (e: Env, rel: string): string => path.join(e.mnt, rel);

function mountRw(
  t: ExecutionContext,
  e: Env,
  extra: Parameters<typeof fusekitOverlay>[2] = {},
): Promise<Mount> {
  return fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt }, extra);
}

async function xattrs(s: Server, p: string): Promise<Record<string, string>> {
  const r = await s.ok('llistxattr', p);
  const out: Record<string, string> = {};
  for (const n of (r.names as string[]).slice().sort())
    out[n] = (await s.ok('lgetxattr', p, n)).value as string;
  return out;
}

// ---- merged lookup

test('lookup: the top layer wins, directories merge, opaque directories and whiteouts hide what is below', async (t) => {
  const root = await tmpdir(t, 'fusekit-ov-');
  const s = fsopsServer(t);
  const lower = await buildStandardLowers(s, root);
  const mnt = path.join(root, 'mnt');
  mkdirs(mnt, path.join(root, 'u'), path.join(root, 'w'));
  await fusekitOverlay(t, { lower, upper: path.join(root, 'u'), work: path.join(root, 'w'), mnt });
  const p = (rel: string): string => path.join(mnt, rel);
  t.deepEqual(fs.readdirSync(mnt).sort(), ['a', 'd2', 'hl3', 'l1only', 'opq', 'x', 'y']);
  t.deepEqual(fs.readdirSync(p('a')).sort(), [
    'b',
    'dangling',
    'dirlink',
    'f0',
    'f1',
    'f4k',
    'fbig',
    'fifo',
    'hl2',
    'link',
    'sparse',
    'top1',
  ]);
  t.deepEqual(fs.readdirSync(p('a/b')).sort(), ['c', 'hl1', 'only1']);
  t.is(fs.readFileSync(p('a/f1'), 'utf8'), 'top f1 shadows bottom\n');
  t.is(fs.readFileSync(p('a/link'), 'utf8'), 'top f1 shadows bottom\n'); // resolved in the merge
  t.deepEqual(fs.readdirSync(p('a/dirlink')).sort(), ['c', 'hl1', 'only1']);
  // A merged directory shows the top directory's own attributes.
  t.is(fs.statSync(p('a/b')).mode & 0o7777, 0o750);
  t.is(
    Buffer.from((await s.ok('lgetxattr', p('a'), 'user.dir')).value as string, 'hex').toString(),
    'top',
  );
  // Opaque: nothing of the layer below.
  t.deepEqual(fs.readdirSync(p('opq')), ['p1']);
  t.throws(() => fs.lstatSync(p('opq/o1')), { code: 'ENOENT' });
  // Whiteouts (a file and a directory) hide, and are never listed.
  for (const gone of ['a/gone', 'a/gonedir', 'a/gonedir/sub/x'])
    t.throws(() => fs.lstatSync(p(gone)), { code: 'ENOENT' });
  // A directory above a file, a file above a directory: the top one, unmerged.
  t.deepEqual(fs.readdirSync(p('x')), ['x1']);
  t.true(fs.lstatSync(p('y')).isFile());
  t.is(fs.readFileSync(p('y'), 'utf8'), 'y is a file above\n');
  // getdents: no duplicates, no whiteouts, the right d_type everywhere.
  const snap = await snapshot(s, mnt, { dirents: true });
  for (const [rel, o] of snap) {
    if (o.type !== 'dir') continue;
    for (const [name, [, dt]] of Object.entries(o.entries!)) {
      const child = snap.get(rel ? `${rel}/${name}` : name)!;
      t.is(dt, DT[child.type], `${rel}/${name}`);
      t.not(child.type, 'chr', `${rel}/${name} is no whiteout`);
    }
  }
  // Lookup order across three lowers with no upper: the first layer that has a name wins.
  const e = await dirs(t, 3);
  e.lower.forEach((l, i) => {
    fs.writeFileSync(path.join(l, 'who'), `layer ${i + 1}`);
    fs.writeFileSync(path.join(l, `only${i + 1}`), '');
    mkdirs(path.join(l, 'dir', `sub${i + 1}`));
  });
  fs.rmSync(path.join(e.lower[0]!, 'who'));
  await fusekitOverlay(t, { lower: e.lower, mnt: e.mnt });
  t.is(fs.readFileSync(m(e, 'who'), 'utf8'), 'layer 2');
  t.deepEqual(fs.readdirSync(e.mnt).sort(), ['dir', 'only1', 'only2', 'only3', 'who']);
  t.deepEqual(fs.readdirSync(m(e, 'dir')).sort(), ['sub1', 'sub2', 'sub3']);
  t.is(fs.statSync(m(e, 'dir')).nlink, 2 + 3); // merged: 2 + subdirectories
});

// ---- copy-up

test('copy-up keeps data, holes, mode, owner, times and user/security xattrs, and never touches the lower', async (t) => {
  const e = await dirs(t);
  const l = (rel: string): string => path.join(e.lower[0]!, rel);
  const data = pattern(200_000, 21);
  fs.writeFileSync(l('meta'), data);
  fs.chownSync(l('meta'), 1000, 1001);
  fs.chmodSync(l('meta'), 0o4750);
  await e.s.ok('setxattr', l('meta'), 'user.a', hex('one'), '0');
  await e.s.ok('setxattr', l('meta'), 'security.fusekit', hex('label'), '0');
  // File capabilities: a chown during copy-up would drop them.
  await e.s.ok(
    'setxattr',
    l('meta'),
    'security.capability',
    '0100000200200000000000000000000000000000',
    '0',
  );
  await e.s.ok('utimens', l('meta'), '1000000000:123456789', '1100000000:987654321', 'path');
  writeSparse(l('sparse'), 8 << 20, [
    [0, pattern(4096, 1)],
    [3 << 20, pattern(65536, 2)],
    [(8 << 20) - 4096, pattern(4096, 3)],
  ]);
  // Over 16 MiB of data: copied in parallel parts, split inside extents and across holes.
  writeSparse(l('sparse-big'), 64 << 20, [
    [0, pattern(5 << 20, 4)],
    [(9 << 20) + 4096, pattern((8 << 20) - 4096, 5)],
    [30 << 20, pattern(8 << 20, 6)],
    [(64 << 20) - 4096, pattern(4096, 7)],
  ]);
  mkdirs(l('dir'));
  fs.chownSync(l('dir'), 1002, 1003);
  fs.chmodSync(l('dir'), 0o2710);
  await e.s.ok('setxattr', l('dir'), 'user.d', hex('dir value'), '0');
  fs.symlinkSync('meta', l('sym'));
  fs.lchownSync(l('sym'), 1004, 1005);
  const before = await treeDigest(e.s, e.lower[0]!);
  const lst = (rel: string): fs.BigIntStats => fs.lstatSync(l(rel), { bigint: true });
  const metaX = await xattrs(e.s, l('meta'));
  await mountRw(t, e);

  // A metadata-only change copies the whole object up. (Reading the lower for the copy may move
  // its atime: the copy has the times from before.)
  const ls = lst('meta');
  await e.s.ok('setxattr', m(e, 'meta'), 'user.b', hex('two'), '0');
  const st = fs.lstatSync(m(e, 'meta'), { bigint: true });
  t.is(st.mode, ls.mode);
  t.is(st.mode & 0o7777n, 0o4750n);
  t.is(st.uid, 1000n);
  t.is(st.gid, 1001n);
  t.is(st.mtimeNs, 1100000000987654321n);
  t.is(st.atimeNs, ls.atimeNs);
  t.deepEqual(await xattrs(e.s, m(e, 'meta')), { ...metaX, 'user.b': hex('two') });
  t.is(sha256(fs.readFileSync(m(e, 'meta'))), sha256(data));
  t.is(sha256(fs.readFileSync(path.join(e.upper, 'meta'))), sha256(data));
  t.true('security.capability' in (await xattrs(e.s, path.join(e.upper, 'meta'))));

  // Holes stay holes: the same data extents and block count.
  fs.chmodSync(m(e, 'sparse'), 0o600);
  t.true(fs.existsSync(path.join(e.upper, 'sparse')));
  const seek = async (p: string): Promise<unknown> => (await e.s.ok('seekmap', p)).data;
  // st_blocks also counts the filesystem's extent-tree blocks, which depend on how fragmented
  // each file's allocation came out (other tests write at the same time): a few blocks either
  // way. A hole filled in would add hundreds.
  const sameBlocks = (a: string, b: string): void => {
    const [x, y] = [fs.lstatSync(a).blocks, fs.lstatSync(b).blocks];
    t.true(Math.abs(x - y) <= 32, `${a}: ${x} blocks of 512 bytes, ${b}: ${y}`);
  };
  t.deepEqual(await seek(m(e, 'sparse')), await seek(l('sparse')));
  sameBlocks(m(e, 'sparse'), l('sparse'));
  sameBlocks(path.join(e.upper, 'sparse'), l('sparse'));
  t.is(sha256(fs.readFileSync(m(e, 'sparse'))), sha256(fs.readFileSync(l('sparse'))));
  fs.chmodSync(m(e, 'sparse-big'), 0o600);
  t.deepEqual(await seek(m(e, 'sparse-big')), await seek(l('sparse-big')));
  sameBlocks(path.join(e.upper, 'sparse-big'), l('sparse-big'));
  t.is(sha256(fs.readFileSync(m(e, 'sparse-big'))), sha256(fs.readFileSync(l('sparse-big'))));

  // A directory is copied up (with its owner, mode and xattrs) when something is made in it.
  fs.writeFileSync(m(e, 'dir/new'), 'x');
  const ds = fs.lstatSync(path.join(e.upper, 'dir'));
  t.is(ds.mode & 0o7777, 0o2710);
  t.is(ds.uid, 1002);
  t.is(ds.gid, 1003);
  t.deepEqual(await xattrs(e.s, m(e, 'dir')), { 'user.d': hex('dir value') });

  // A symlink keeps its owner and target.
  fs.lchownSync(m(e, 'sym'), 1004, 1006);
  t.is(fs.readlinkSync(path.join(e.upper, 'sym')), 'meta');
  t.is(fs.lstatSync(m(e, 'sym')).uid, 1004);

  t.is(await treeDigest(e.s, e.lower[0]!), before, 'the lower layer is unchanged');
});

test('copy-up of a 256 MiB file: every byte arrives, the lower file is unchanged', async (t) => {
  const e = await dirs(t);
  const chunk = pattern(1 << 20, 99);
  const lowerHash = createHash('sha256');
  const mergedHash = createHash('sha256'); // the lower bytes, then what the test appends
  const fd = fs.openSync(path.join(e.lower[0]!, 'big'), 'w');
  for (let i = 0; i < 256; i++) {
    chunk.writeUInt32LE(i, 0); // every MiB different, so a misplaced chunk shows
    chunk.writeUInt32LE((i ^ 0xa5a5a5a5) >>> 0, (1 << 20) - 4);
    fs.writeSync(fd, chunk);
    lowerHash.update(chunk);
    mergedHash.update(chunk);
  }
  fs.closeSync(fd);
  mergedHash.update('tail');
  const lowerIno = fs.statSync(path.join(e.lower[0]!, 'big')).ino;
  await mountRw(t, e);
  fs.appendFileSync(m(e, 'big'), 'tail'); // the copy-up
  const hashOf = async (p: string): Promise<string> => {
    const h = createHash('sha256');
    for await (const c of fs.createReadStream(p, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
    return h.digest('hex');
  };
  t.is(fs.statSync(m(e, 'big')).size, 256 * (1 << 20) + 4);
  t.is(await hashOf(m(e, 'big')), mergedHash.digest('hex'));
  t.is(await hashOf(path.join(e.lower[0]!, 'big')), lowerHash.digest('hex'));
  t.is(fs.statSync(m(e, 'big')).ino, lowerIno);
});

test('copy-up is atomic: ENOSPC on a small upper leaves nothing behind, and the file still reads', async (t) => {
  const e = await dirs(t);
  // Upper and work on a 4 MiB tmpfs; the lower holds a 16 MiB file.
  const small = path.join(e.root, 'small');
  mkdirs(small);
  tmpfs(t, small, '4m');
  t.true(mountsUnder(small).includes(small), 'tmpfs mounted');
  const upper = path.join(small, 'upper');
  const work = path.join(small, 'work');
  mkdirs(upper, work, path.join(e.lower[0]!, 'd'));
  const data = pattern(16 << 20, 5);
  fs.writeFileSync(path.join(e.lower[0]!, 'd/big'), data);
  fs.writeFileSync(path.join(e.lower[0]!, 'd/small'), 'small');
  const before = await treeDigest(e.s, e.lower[0]!);
  const free = (): number => Number(fs.statfsSync(small).bfree);
  await fusekitOverlay(t, { lower: e.lower, upper, work, mnt: e.mnt });
  // The parent directory is copied up first: do it now, so what follows can only add the file.
  fs.writeFileSync(m(e, 'd/small'), 'changed');
  const upperBefore = await snapshot(e.s, upper);
  const freeBefore = free();

  t.throws(() => fs.openSync(m(e, 'd/big'), 'r+'), { code: 'ENOSPC' });
  t.throws(() => fs.appendFileSync(m(e, 'd/big'), 'x'), { code: 'ENOSPC' });
  t.throws(() => fs.chmodSync(m(e, 'd/big'), 0o600), { code: 'ENOSPC' });
  t.throws(() => fs.truncateSync(m(e, 'd/big'), 100), { code: 'ENOSPC' });

  // Nothing partial: the upper is as it was, work/work is empty, the space is back.
  const upperAfter = await snapshot(e.s, upper);
  t.deepEqual([...upperAfter.keys()], [...upperBefore.keys()]);
  t.false(fs.existsSync(path.join(upper, 'd/big')));
  t.deepEqual(fs.readdirSync(path.join(work, 'work')), []);
  t.deepEqual(fs.readdirSync(path.join(work, 'index')), []);
  t.is(free(), freeBefore);
  // The file still reads, from the lower, byte for byte; the lower never changed.
  t.is(sha256(fs.readFileSync(m(e, 'd/big'))), sha256(data));
  t.is(fs.statSync(m(e, 'd/big')).mode & 0o777, 0o644);
  t.is(await treeDigest(e.s, e.lower[0]!), before);
  // Truncating to zero (O_TRUNC) needs no copy of the data, so it fits.
  fs.writeFileSync(m(e, 'd/big'), '');
  t.is(fs.statSync(m(e, 'd/big')).size, 0);
  t.is(fs.statSync(path.join(upper, 'd/big')).size, 0);
});

// ---- inode numbers and hard links

test('st_ino is kept across copy-up, rename and remount, and unique within the mount', async (t) => {
  const e = await dirs(t);
  const l = e.lower[0]!;
  mkdirs(path.join(l, 'dir/sub'));
  fs.writeFileSync(path.join(l, 'file'), 'file');
  fs.writeFileSync(path.join(l, 'dir/inner'), 'inner');
  let mt = await mountRw(t, e);
  fs.writeFileSync(m(e, 'new'), 'new');
  const ino = (rel: string): bigint => fs.lstatSync(m(e, rel), { bigint: true }).ino;
  const orig = {
    file: ino('file'),
    dir: ino('dir'),
    inner: ino('dir/inner'),
    sub: ino('dir/sub'),
    new: ino('new'),
  };
  t.is(orig.file, fs.lstatSync(path.join(l, 'file'), { bigint: true }).ino);
  t.is(new Set(Object.values(orig)).size, 5);

  fs.appendFileSync(m(e, 'file'), ' more'); // copy-up
  fs.chmodSync(m(e, 'dir/inner'), 0o600); // copy-up of dir and inner
  t.is(ino('file'), orig.file);
  t.is(ino('dir/inner'), orig.inner);
  fs.renameSync(m(e, 'file'), m(e, 'file2'));
  fs.renameSync(m(e, 'dir'), m(e, 'dir2')); // a lower directory: redirect
  fs.renameSync(m(e, 'new'), m(e, 'dir2/new'));
  const moved = {
    file: ino('file2'),
    dir: ino('dir2'),
    inner: ino('dir2/inner'),
    sub: ino('dir2/sub'),
    new: ino('dir2/new'),
  };
  t.deepEqual(moved, orig);
  // readdir's d_ino agrees with st_ino.
  for (const [name, dino] of (await e.s.ok('readdir', m(e, 'dir2'))).entries as [
    string,
    string,
    number,
  ][]) {
    if (name !== '.' && name !== '..') t.is(BigInt(dino), ino(`dir2/${name}`), name);
  }
  await mt.unmount();
  mt = await mountRw(t, e);
  t.deepEqual(
    {
      file: ino('file2'),
      dir: ino('dir2'),
      inner: ino('dir2/inner'),
      sub: ino('dir2/sub'),
      new: ino('dir2/new'),
    },
    orig,
  );
  // Unique: every object of the view has its own number.
  const all = await snapshot(e.s, e.mnt);
  t.is(new Set([...all.values()].map((o) => o.ino)).size, all.size);
});

test('readdir d_ino is st_ino for copied-up entries, in plain readdir chunks as in readdirplus', async (t) => {
  const e = await dirs(t);
  const l = e.lower[0]!;
  mkdirs(path.join(l, 'd'));
  // Enough entries for several READDIR requests: after the first, the kernel asks for plain
  // entries (readdirplus 'auto'), whose d_ino the daemon computes from the listing itself.
  const names = Array.from({ length: 400 }, (_, i) => `entry-with-a-longer-name-${i}`);
  for (const [i, n] of names.entries()) {
    if (i % 2) mkdirs(path.join(l, 'd', n));
    else fs.writeFileSync(path.join(l, 'd', n), n);
  }
  await mountRw(t, e);
  // Copy every entry up (chmod): each gets its origin, and shows its lower inode number.
  for (const n of names) fs.chmodSync(m(e, `d/${n}`), 0o700);
  const want = new Map(
    names.map((n) => [n, fs.lstatSync(path.join(l, 'd', n), { bigint: true }).ino]),
  );
  for (const n of names)
    t.is(fs.lstatSync(m(e, `d/${n}`), { bigint: true }).ino, want.get(n) ?? -1n, n);
  const listed = (await e.s.ok('readdir', m(e, 'd'))).entries as [string, string, number][];
  t.is(listed.length, names.length + 2);
  for (const [name, dino] of listed) {
    if (name === '.' || name === '..') continue;
    t.is(BigInt(dino), want.get(name) ?? -1n, name);
  }
});

test('lower hard links share one inode before and after a copy-up, with the right nlink, also after remount', async (t) => {
  const e = await dirs(t);
  const l = e.lower[0]!;
  mkdirs(path.join(l, 'a'), path.join(l, 'b'));
  fs.writeFileSync(path.join(l, 'a/h1'), 'original\n');
  fs.linkSync(path.join(l, 'a/h1'), path.join(l, 'a/h2'));
  fs.linkSync(path.join(l, 'a/h1'), path.join(l, 'b/h3'));
  const before = await treeDigest(e.s, l);
  const names = ['a/h1', 'a/h2', 'b/h3'];
  const stats = (list: string[]): [bigint, bigint][] =>
    list.map((n) => {
      const st = fs.lstatSync(m(e, n), { bigint: true });
      return [st.ino, st.nlink];
    });
  let mt = await mountRw(t, e);
  const ino0 = fs.lstatSync(m(e, 'a/h1'), { bigint: true }).ino;
  t.deepEqual(
    stats(names),
    names.map(() => [ino0, 3n] as [bigint, bigint]),
  );

  // Written through one name, read through the others.
  fs.appendFileSync(m(e, 'a/h2'), 'via h2\n');
  for (const n of names) t.is(fs.readFileSync(m(e, n), 'utf8'), 'original\nvia h2\n', n);
  t.deepEqual(
    stats(names),
    names.map(() => [ino0, 3n] as [bigint, bigint]),
  );
  // One name removed (one that was never copied up), one renamed, one added.
  fs.unlinkSync(m(e, 'b/h3'));
  t.deepEqual(stats(['a/h1', 'a/h2']), [
    [ino0, 2n],
    [ino0, 2n],
  ]);
  fs.renameSync(m(e, 'a/h1'), m(e, 'b/h1-moved'));
  fs.linkSync(m(e, 'a/h2'), m(e, 'b/h4'));
  const live = ['b/h1-moved', 'a/h2', 'b/h4'];
  t.deepEqual(
    stats(live),
    live.map(() => [ino0, 3n] as [bigint, bigint]),
  );
  fs.writeFileSync(m(e, 'b/h4'), 'rewritten via h4\n');
  for (const n of live) t.is(fs.readFileSync(m(e, n), 'utf8'), 'rewritten via h4\n', n);

  await mt.unmount();
  mt = await mountRw(t, e);
  t.deepEqual(
    stats(live),
    live.map(() => [ino0, 3n] as [bigint, bigint]),
  );
  for (const n of live) t.is(fs.readFileSync(m(e, n), 'utf8'), 'rewritten via h4\n', n);
  t.throws(() => fs.lstatSync(m(e, 'b/h3')), { code: 'ENOENT' });
  t.throws(() => fs.lstatSync(m(e, 'a/h1')), { code: 'ENOENT' });
  fs.unlinkSync(m(e, 'a/h2'));
  t.deepEqual(stats(['b/h1-moved', 'b/h4']), [
    [ino0, 2n],
    [ino0, 2n],
  ]);
  t.is(await treeDigest(e.s, l), before);
});

// ---- readdir

test('readdir: merged listing without duplicates or whiteouts, stable while entries come and go', async (t) => {
  const e = await dirs(t, 2);
  const [l1, l2] = e.lower as [string, string];
  mkdirs(path.join(l1, 'd'), path.join(l2, 'd'));
  const long = (i: number): string => `entry-${String(i).padStart(5, '0')}-${'x'.repeat(40)}`;
  // 1500 names in the bottom layer, 500 of them repeated in the top one, 100 whited out there.
  for (let i = 0; i < 1500; i++) fs.writeFileSync(path.join(l2, 'd', long(i)), '');
  for (let i = 1000; i < 1500; i++) fs.writeFileSync(path.join(l1, 'd', long(i)), 'top');
  for (let i = 0; i < 100; i++) await kernelWhiteout(path.join(l1, 'd', long(i)), e.s);
  mkdirs(path.join(l2, 'd', 'subdir'));
  await mountRw(t, e);
  for (let i = 1500; i < 1600; i++) fs.writeFileSync(m(e, `d/${long(i)}`), 'upper');
  for (let i = 100; i < 150; i++) fs.unlinkSync(m(e, `d/${long(i)}`)); // new whiteouts

  const expected = new Set<string>(['subdir']);
  for (let i = 150; i < 1600; i++) expected.add(long(i));
  const listed = (await e.s.ok('readdir', m(e, 'd'))).entries as [string, string, number][];
  const names = listed.map(([n]) => n).filter((n) => n !== '.' && n !== '..');
  t.is(names.length, new Set(names).size, 'no duplicates');
  t.deepEqual(names.slice().sort(), [...expected].sort());
  for (const [n, , dt] of listed)
    if (n !== '.' && n !== '..') t.is(dt, n === 'subdir' ? DT.dir : DT.file);

  // Read part of the listing, change the directory, read the rest: every entry that existed
  // throughout shows exactly once.
  const dir = fs.opendirSync(m(e, 'd'), { bufferSize: 16 });
  const seen: string[] = [];
  for (let i = 0; i < 300; i++) seen.push(dir.readSync()!.name);
  const removed = new Set<string>();
  for (let i = 150; i < 1600; i += 7) {
    fs.unlinkSync(m(e, `d/${long(i)}`));
    removed.add(long(i));
  }
  for (let i = 2000; i < 2200; i++) fs.writeFileSync(m(e, `d/${long(i)}`), 'added');
  fs.renameSync(m(e, 'd/subdir'), m(e, 'd/subdir-renamed'));
  removed.add('subdir');
  for (let ent = dir.readSync(); ent; ent = dir.readSync()) seen.push(ent.name);
  dir.closeSync();
  t.is(seen.length, new Set(seen).size, 'no duplicates across the change');
  for (const n of expected) if (!removed.has(n)) t.true(seen.includes(n), `${n} listed`);
  // A new listing shows the new state.
  const now = new Set(fs.readdirSync(m(e, 'd')));
  for (const n of removed) t.false(now.has(n));
  t.true(now.has(long(2100)) && now.has('subdir-renamed'));
});

test('readdir: a stream opened anew and positioned with seekdir() goes on where another stopped', async (t) => {
  // The kernel's readdir cache does this: when it loses its pages mid-listing it goes on from the
  // daemon at the position it reached, with a directory open that never read from the daemon.
  // A merged directory (no kernel cache) and a lower-only one (cached) both keep their offsets.
  const e = await dirs(t, 1);
  const [l1] = e.lower as [string];
  mkdirs(path.join(l1, 'merged'), path.join(l1, 'lower-only'), path.join(e.upper, 'merged'));
  for (let i = 0; i < 600; i++) {
    fs.writeFileSync(path.join(l1, 'merged', `l${i}`), '');
    fs.writeFileSync(path.join(l1, 'lower-only', `l${i}`), '');
  }
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(e.upper, 'merged', `u${i}`), '');
  await mountRw(t, e);
  for (const d of ['merged', 'lower-only']) {
    const all = fs.readdirSync(m(e, d)).sort();
    t.is(all.length, d === 'merged' ? 650 : 600);
    for (const n of [0, 1, 2, 100, 333, 651]) {
      const { first, rest } = ops.readdirSeek(m(e, d), n);
      const names = [...first, ...rest].filter((x) => x !== '.' && x !== '..');
      t.deepEqual(names.slice().sort(), all, `${d}: ${n} names, then the rest`);
    }
  }
});

// ---- trusted.overlay.* is the overlay's own

test('trusted.overlay.* xattrs are hidden: get ENODATA, set/remove EPERM, never listed', async (t) => {
  const e = await dirs(t);
  mkdirs(path.join(e.lower[0]!, 'dir/sub'));
  fs.writeFileSync(path.join(e.lower[0]!, 'dir/f'), 'f');
  await mountRw(t, e);
  // Give the upper every kind of overlay xattr: origin (copy-up), impure, opaque, redirect.
  fs.appendFileSync(m(e, 'dir/f'), 'more');
  fs.rmSync(m(e, 'dir/sub'), { recursive: true });
  fs.mkdirSync(m(e, 'dir/sub'));
  fs.renameSync(m(e, 'dir'), m(e, 'dir2'));
  const ux = async (rel: string): Promise<string[]> =>
    ((await e.s.ok('llistxattr', path.join(e.upper, rel))).names as string[]).filter((n) =>
      n.startsWith('trusted.overlay.'),
    );
  t.true((await ux('dir2')).includes('trusted.overlay.redirect'));
  t.true((await ux('dir2/sub')).includes('trusted.overlay.opaque'));
  t.true((await ux('dir2/f')).includes('trusted.overlay.origin'));
  for (const rel of ['dir2', 'dir2/sub', 'dir2/f']) {
    const names = (await e.s.ok('llistxattr', m(e, rel))).names as string[];
    t.false(
      names.some((n) => n.startsWith('trusted.overlay.')),
      `${rel}: ${names.join(',')}`,
    );
    for (const x of [
      'trusted.overlay.origin',
      'trusted.overlay.opaque',
      'trusted.overlay.redirect',
      'trusted.overlay.impure',
    ]) {
      t.is(await e.s.errno('lgetxattr', m(e, rel), x), 'ENODATA', `${rel} get ${x}`);
      t.is(await e.s.errno('lsetxattr', m(e, rel), x, hex('y'), '0'), 'EPERM', `${rel} set ${x}`);
      t.is(await e.s.errno('lremovexattr', m(e, rel), x), 'EPERM', `${rel} remove ${x}`);
    }
  }
  // Other trusted.* xattrs are ordinary ones.
  await e.s.ok('lsetxattr', m(e, 'dir2/f'), 'trusted.other', hex('v'), '0');
  t.is((await e.s.ok('lgetxattr', m(e, 'dir2/f'), 'trusted.other')).value, hex('v'));
  // The upper's own overlay xattrs were not touched by the refused calls.
  t.is(
    Buffer.from(
      (await e.s.ok('lgetxattr', path.join(e.upper, 'dir2/sub'), 'trusted.overlay.opaque'))
        .value as string,
      'hex',
    ).toString(),
    'y',
  );
});

// ---- copy-up under open readers

for (const passthrough of ['on', 'off'] as const) {
  test(`copy-up while the file is open read-only (passthrough ${passthrough})`, async (t) => {
    const e = await dirs(t);
    const old = pattern(100_000, 3);
    fs.writeFileSync(path.join(e.lower[0]!, 'f'), old);
    const mt = await mountRw(t, e, { passthrough });
    t.is(mt.passthrough, passthrough === 'on');
    const reader = fsopsServer(t);
    const rfd = await reader.open(m(e, 'f'), 'r');
    const readAt = async (fd: number, off: number, len: number): Promise<Buffer> =>
      Buffer.from((await reader.ok('pread', fd, off, len)).data as string, 'hex');
    t.deepEqual(await readAt(rfd, 0, 1000), old.subarray(0, 1000));
    // Another process writes: the copy-up happens under the open reader.
    const fresh = pattern(100_000, 4);
    fs.writeFileSync(m(e, 'f'), fresh);
    // The reader keeps working. Served by the daemon it reads the copied-up file, as kernel
    // overlayfs does; with kernel passthrough it may still read the lower file it was opened on.
    const got = await readAt(rfd, 50_000, 1000);
    if (passthrough === 'off') t.deepEqual(got, fresh.subarray(50_000, 51_000));
    else
      t.true(
        got.equals(old.subarray(50_000, 51_000)) || got.equals(fresh.subarray(50_000, 51_000)),
      );
    // The new data is in the upper layer, and new readers see it (no lower page left in the cache
    // the inode's opens share, also after the old reader's read).
    t.is(sha256(fs.readFileSync(path.join(e.upper, 'f'))), sha256(fresh));
    t.is(sha256(fs.readFileSync(m(e, 'f'))), sha256(fresh));
    const rfd2 = await reader.open(m(e, 'f'), 'r');
    t.deepEqual(await readAt(rfd2, 99_000, 1000), fresh.subarray(99_000));
    t.is(sha256(fs.readFileSync(path.join(e.lower[0]!, 'f'))), sha256(old));
    await reader.ok('close', rfd);
    await reader.ok('close', rfd2);
    t.is(sha256(fs.readFileSync(m(e, 'f'))), sha256(fresh));
  });
}

// ---- read-only overlays

test('an overlay without upper is read-only (EROFS) and merges several lowers', async (t) => {
  const e = await dirs(t, 3);
  e.lower.forEach((l, i) => {
    mkdirs(path.join(l, 'common'));
    fs.writeFileSync(path.join(l, 'common', `f${i}`), `layer ${i}`);
  });
  fs.writeFileSync(path.join(e.lower[2]!, 'bottom'), 'bottom');
  await kernelWhiteout(path.join(e.lower[0]!, 'bottom'), e.s);
  const before = await Promise.all(e.lower.map((l) => treeDigest(e.s, l)));
  await fusekitOverlay(t, { lower: e.lower, mnt: e.mnt });
  t.deepEqual(fs.readdirSync(m(e, 'common')).sort(), ['f0', 'f1', 'f2']);
  t.throws(() => fs.lstatSync(m(e, 'bottom')), { code: 'ENOENT' });
  const erofs = { code: 'EROFS' };
  t.throws(() => fs.writeFileSync(m(e, 'new'), 'x'), erofs);
  t.throws(() => fs.openSync(m(e, 'common/f0'), 'r+'), erofs);
  t.throws(() => fs.appendFileSync(m(e, 'common/f1'), 'x'), erofs);
  t.throws(() => fs.truncateSync(m(e, 'common/f1'), 0), erofs);
  t.throws(() => fs.unlinkSync(m(e, 'common/f2')), erofs);
  t.throws(() => fs.mkdirSync(m(e, 'd')), erofs);
  t.throws(() => fs.rmdirSync(m(e, 'common')), erofs);
  t.throws(() => fs.renameSync(m(e, 'common/f0'), m(e, 'common/g')), erofs);
  t.throws(() => fs.symlinkSync('x', m(e, 'l')), erofs);
  t.throws(() => fs.linkSync(m(e, 'common/f0'), m(e, 'common/h')), erofs);
  t.throws(() => fs.chmodSync(m(e, 'common/f0'), 0o600), erofs);
  t.throws(() => fs.chownSync(m(e, 'common/f0'), 1, 1), erofs);
  t.throws(() => fs.utimesSync(m(e, 'common/f0'), 1, 1), erofs);
  t.is(await e.s.errno('setxattr', m(e, 'common/f0'), 'user.x', hex('v'), '0'), 'EROFS');
  t.is(await e.s.errno('mknod', m(e, 'fifo'), 'fifo', '644'), 'EROFS');
  t.is(fs.readFileSync(m(e, 'common/f1'), 'utf8'), 'layer 1');
  t.deepEqual(await Promise.all(e.lower.map((l) => treeDigest(e.s, l))), before);
});

// ---- directory renames and opaque directories

test('renaming a lower directory writes a redirect and keeps its lower content, also after remount', async (t) => {
  const e = await dirs(t, 2);
  const [l1, l2] = e.lower as [string, string];
  mkdirs(path.join(l2, 'src/deep'), path.join(l1, 'src'), path.join(l1, 'elsewhere'));
  fs.writeFileSync(path.join(l2, 'src/deep/f'), 'deep');
  fs.writeFileSync(path.join(l1, 'src/top'), 'top');
  let mt = await mountRw(t, e);
  fs.renameSync(m(e, 'src'), m(e, 'elsewhere/moved'));
  fs.renameSync(m(e, 'elsewhere/moved/deep'), m(e, 'deep-out'));
  const check = (): void => {
    t.deepEqual(fs.readdirSync(m(e, 'elsewhere/moved')).sort(), ['top']);
    t.is(fs.readFileSync(m(e, 'elsewhere/moved/top'), 'utf8'), 'top');
    t.is(fs.readFileSync(m(e, 'deep-out/f'), 'utf8'), 'deep');
  };
  check();
  t.throws(() => fs.lstatSync(m(e, 'src')), { code: 'ENOENT' });
  const redirect = async (rel: string): Promise<string> =>
    Buffer.from(
      (await e.s.ok('lgetxattr', path.join(e.upper, rel), 'trusted.overlay.redirect'))
        .value as string,
      'hex',
    ).toString();
  t.is(await redirect('elsewhere/moved'), '/src');
  t.is(await redirect('deep-out'), '/src/deep');
  t.true(fs.lstatSync(path.join(e.upper, 'src')).isCharacterDevice());
  // A new directory of the same name is empty (opaque), not the lower one back.
  fs.mkdirSync(m(e, 'src'));
  t.deepEqual(fs.readdirSync(m(e, 'src')), []);
  await mt.unmount();
  mt = await mountRw(t, e);
  check();
  t.deepEqual(fs.readdirSync(m(e, 'src')), []);
});

test('a redirect written into a layer cannot reach outside the lower layers (.., symlinks)', async (t) => {
  // A layer's author controls its xattrs (an image unpacked as root keeps trusted.*): redirects
  // that climb out of the lower layer or through a symlink must merge nothing from there.
  const e = await dirs(t, 1);
  const [l1] = e.lower as [string];
  const outside = path.join(e.root, 'outside');
  mkdirs(path.join(outside, 'secret'), path.join(l1, 'real'));
  fs.writeFileSync(path.join(outside, 'secret/stolen'), 'outside');
  fs.writeFileSync(path.join(l1, 'real/ok'), 'lower');
  fs.symlinkSync(outside, path.join(l1, 'ln'));
  const evil = [
    '/../outside/secret',
    '../outside/secret',
    '/real/../../outside/secret',
    '/ln/secret',
  ];
  evil.forEach((_, i) => mkdirs(path.join(e.upper, `d${i}`)));
  mkdirs(path.join(e.upper, 'good'));
  for (const [i, r] of evil.entries())
    await e.s.ok('lsetxattr', path.join(e.upper, `d${i}`), 'trusted.overlay.redirect', hex(r), '0');
  // The control: a redirect inside the layer does merge, so the test can tell the difference.
  await e.s.ok(
    'lsetxattr',
    path.join(e.upper, 'good'),
    'trusted.overlay.redirect',
    hex('/real'),
    '0',
  );
  await mountRw(t, e);
  t.deepEqual(fs.readdirSync(m(e, 'good')), ['ok']);
  for (const [i, r] of evil.entries()) {
    t.deepEqual(fs.readdirSync(m(e, `d${i}`)), [], `redirect ${r}`);
    t.throws(() => fs.readFileSync(m(e, `d${i}/stolen`)), { code: 'ENOENT' }, `redirect ${r}`);
  }
});
test('removing a lower directory and making it again gives an opaque directory', async (t) => {
  const e = await dirs(t);
  mkdirs(path.join(e.lower[0]!, 'd/sub'));
  fs.writeFileSync(path.join(e.lower[0]!, 'd/sub/f'), 'old');
  fs.writeFileSync(path.join(e.lower[0]!, 'd/g'), 'old');
  let mt = await mountRw(t, e);
  t.throws(() => fs.rmdirSync(m(e, 'd')), { code: 'ENOTEMPTY' });
  fs.rmSync(m(e, 'd'), { recursive: true });
  t.throws(() => fs.lstatSync(m(e, 'd')), { code: 'ENOENT' });
  t.true(fs.lstatSync(path.join(e.upper, 'd')).isCharacterDevice());
  fs.mkdirSync(m(e, 'd'));
  t.deepEqual(fs.readdirSync(m(e, 'd')), []);
  fs.writeFileSync(m(e, 'd/g'), 'new');
  t.is(
    Buffer.from(
      (await e.s.ok('lgetxattr', path.join(e.upper, 'd'), 'trusted.overlay.opaque'))
        .value as string,
      'hex',
    ).toString(),
    'y',
  );
  await mt.unmount();
  mt = await mountRw(t, e);
  t.deepEqual(fs.readdirSync(m(e, 'd')), ['g']);
  t.is(fs.readFileSync(m(e, 'd/g'), 'utf8'), 'new');
  // An empty directory removes with no ENOTEMPTY from hidden lower entries.
  fs.unlinkSync(m(e, 'd/g'));
  fs.rmdirSync(m(e, 'd'));
  t.throws(() => fs.lstatSync(m(e, 'd')), { code: 'ENOENT' });
});

// ---- bad layers

test('bad layers are refused with a clear error, nothing is mounted and nothing changes', async (t) => {
  const e = await dirs(t, 2);
  fs.writeFileSync(path.join(e.lower[0]!, 'f'), 'f');
  fs.writeFileSync(path.join(e.root, 'plainfile'), 'not a dir');
  const other = path.join(e.root, 'tmpfs');
  mkdirs(
    other,
    path.join(e.root, 'busywork'),
    path.join(e.root, 'busyupper'),
    path.join(e.root, 'busymnt'),
  );
  tmpfs(t, other, '1m');
  mkdirs(path.join(other, 'work'));
  const dirty = path.join(e.root, 'dirty-work');
  mkdirs(dirty);
  fs.writeFileSync(path.join(dirty, 'leftover'), 'x');
  mkdirs(path.join(e.lower[1]!, 'inner-upper'));
  const missing = path.join(e.root, 'missing');
  const cases: [string, Parameters<typeof mount>[0]['overlay'], string, string][] = [
    [
      'missing lower',
      { lower: [e.lower[0]!, missing], upper: e.upper, work: e.work },
      'ENOENT',
      missing,
    ],
    ['missing upper', { lower: e.lower, upper: missing, work: e.work }, 'ENOENT', missing],
    ['missing work dir', { lower: e.lower, upper: e.upper, work: missing }, 'ENOENT', missing],
    [
      'lower not a directory',
      { lower: [path.join(e.root, 'plainfile')], upper: e.upper, work: e.work },
      'ENOTDIR',
      'plainfile',
    ],
    [
      'upper not a directory',
      { lower: e.lower, upper: path.join(e.root, 'plainfile'), work: e.work },
      'ENOTDIR',
      'plainfile',
    ],
    [
      'upper and work on different filesystems',
      { lower: e.lower, upper: e.upper, work: path.join(other, 'work') },
      'EXDEV',
      'same filesystem',
    ],
    [
      'work dir not empty',
      { lower: e.lower, upper: e.upper, work: dirty },
      'ENOTEMPTY',
      'leftover',
    ],
    [
      'upper inside a lower',
      { lower: e.lower, upper: path.join(e.lower[1]!, 'inner-upper'), work: e.work },
      'EINVAL',
      'inside',
    ],
    [
      'lower inside the upper',
      { lower: [path.join(e.root, 'upper')], upper: e.root, work: e.work },
      'EINVAL',
      'inside',
    ],
    [
      'work dir inside the upper',
      { lower: e.lower, upper: e.root, work: e.work },
      'EINVAL',
      'inside',
    ],
  ];
  const digests = async (): Promise<string[]> =>
    Promise.all([e.root].map((d) => treeDigest(e.s, d)));
  const before = await digests();
  for (const [what, overlay, code, mentions] of cases) {
    const err = await t.throwsAsync(
      mount({ mountpoint: e.mnt, overlay: overlay! }),
      { instanceOf: FusekitError },
      what,
    );
    t.is(err?.code, code, `${what}: ${err?.message}`);
    t.true(
      err?.message.includes(mentions),
      `${what}: message "${err?.message}" mentions ${mentions}`,
    );
    t.deepEqual(mountsUnder(e.root), [other], `${what}: nothing mounted`);
  }
  t.deepEqual(await digests(), before, 'no backing file changed');

  // A work dir in use by a live mount: EBUSY, and the live mount is unaffected.
  const live = await fusekitOverlay(t, {
    lower: e.lower,
    upper: path.join(e.root, 'busyupper'),
    work: path.join(e.root, 'busywork'),
    mnt: path.join(e.root, 'busymnt'),
  });
  const err = await t.throwsAsync(
    mount({
      mountpoint: e.mnt,
      overlay: { lower: e.lower, upper: e.upper, work: path.join(e.root, 'busywork') },
    }),
    { instanceOf: FusekitError },
  );
  t.is(err?.code, 'EBUSY');
  t.true(err?.message.includes('busywork'));
  t.false(mountsUnder(e.root).includes(e.mnt));
  t.is(fs.readFileSync(path.join(e.root, 'busymnt', 'f'), 'utf8'), 'f');
  await live.unmount();
  t.deepEqual(mountsUnder(e.root), [other]);
});

test('the layers of a finished mount can be mounted again at once', async (t) => {
  const e = await dirs(t);
  fs.writeFileSync(path.join(e.lower[0]!, 'f'), 'f');
  for (let i = 0; i < 3; i++) {
    const mt = await mountRw(t, e);
    fs.appendFileSync(m(e, 'f'), String(i));
    await mt.unmount();
  }
  t.is(fs.readFileSync(path.join(e.upper, 'f'), 'utf8'), 'f012');
  t.true(typeOf(fs.lstatSync(e.mnt, { bigint: true })) === 'dir');
});
