// Shared pieces of the overlay tests: kernel overlayfs and fusekit overlay mounts that are always
// unmounted in teardown, full snapshots of a merged view (or of a raw layer), and digests that
// prove a layer was not touched.
import type { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type Mount, type MountOptions, mount } from '../../lib';
import { unmountInTeardown } from './fixture';
import { type Server, server } from './fsops';

const unescapeMountinfo = (s: string): string =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mount points in this mount namespace at or below `prefix`. */
export function mountsUnder(prefix: string): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = unescapeMountinfo(f[4]!);
    if (mp === prefix || mp.startsWith(prefix + '/')) out.push(mp);
  }
  return out;
}

export function isMountPoint(p: string): boolean {
  return mountsUnder(p).includes(p);
}

/** The filesystem type /proc/self/mountinfo shows for mount point p, or undefined. */
export function fsTypeOf(p: string): string | undefined {
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unescapeMountinfo(f[4]!) === p) {
      const sep = f.indexOf('-');
      return f[sep + 1];
    }
  }
  return undefined;
}

/** Unmounts p (a kernel mount: overlay, tmpfs) if mounted; lazily when it is busy. */
export function umountQuiet(p: string): void {
  for (let i = 0; i < 3 && isMountPoint(p); i++) spawnSync('umount', [p]);
  if (isMountPoint(p)) spawnSync('umount', ['-l', p]);
}

/** Kernel overlay mount options matching what fusekit implements (redirects, an index for hard
 * links, no metacopy). */
export const KERNEL_OPTS = 'redirect_dir=on,index=on,metacopy=off';

export interface KernelLayers {
  lower: string[];
  upper?: string;
  work?: string;
  mnt: string;
  /** Extra mount options, comma separated (default KERNEL_OPTS). */
  options?: string;
}

// Kernel mounts outlive a worker that dies before its teardowns run: detach any left on exit.
const kernelMounts = new Set<string>();
process.on('exit', () => {
  for (const p of kernelMounts) if (isMountPoint(p)) spawnSync('umount', ['-l', p]);
});

/** Mounts kernel overlayfs; unmounted in teardown whatever happens. */
export function kernelOverlay(t: ExecutionContext, l: KernelLayers): void {
  kernelMounts.add(l.mnt);
  t.teardown(() => {
    umountQuiet(l.mnt);
    kernelMounts.delete(l.mnt);
  });
  const opts = [`lowerdir=${l.lower.join(':')}`];
  if (l.upper) opts.push(`upperdir=${l.upper}`, `workdir=${l.work}`);
  opts.push(l.options ?? KERNEL_OPTS);
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', opts.join(','), l.mnt], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

/** Mounts a tmpfs of `size` (e.g. '4m') on dir; unmounted in teardown whatever happens. */
export function tmpfs(t: ExecutionContext, dir: string, size: string): void {
  kernelMounts.add(dir);
  t.teardown(() => {
    umountQuiet(dir);
    kernelMounts.delete(dir);
  });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

export interface FusekitLayers {
  lower: string[];
  upper?: string;
  work?: string;
  mnt: string;
  ociWhiteouts?: boolean;
  redirectDir?: boolean;
}

/** Mounts a fusekit overlay; unmounted in teardown whatever happens. */
export async function fusekitOverlay(
  t: ExecutionContext,
  l: FusekitLayers,
  extra: Partial<Omit<MountOptions, 'overlay' | 'mountpoint' | 'source'>> = {},
): Promise<Mount> {
  const m = await mount({
    ...extra,
    mountpoint: l.mnt,
    overlay: {
      lower: l.lower,
      ...(l.upper !== undefined ? { upper: l.upper, work: l.work! } : {}),
      ...(l.ociWhiteouts !== undefined ? { ociWhiteouts: l.ociWhiteouts } : {}),
      ...(l.redirectDir !== undefined ? { redirectDir: l.redirectDir } : {}),
    },
  });
  unmountInTeardown(t, m);
  return m;
}

/** mkdir -p for several paths. */
export function mkdirs(...dirs: string[]): void {
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
}

// ---- building layers

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Deterministic bytes: a fill pattern seeded by `seed`. */
export function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** A sparse file: `size` bytes with data only at the given offsets. */
export function writeSparse(p: string, size: number, chunks: [number, Buffer][]): void {
  const fd = fs.openSync(p, 'w');
  try {
    fs.ftruncateSync(fd, size);
    for (const [off, data] of chunks) fs.writeSync(fd, data, 0, data.length, off);
  } finally {
    fs.closeSync(fd);
  }
}

/** A kernel overlayfs whiteout (character device 0/0). */
export function kernelWhiteout(p: string, s: Server): Promise<unknown> {
  return s.ok('mknod', p, 'chr', '0', '0', '0');
}

// ---- snapshots

export interface Obj {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'chr' | 'blk' | 'sock';
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  blocks: bigint;
  nlink: number;
  ino: bigint;
  rdev: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  hash?: string;
  target?: string;
  /** name -> hex value */
  xattrs: Record<string, string>;
  /** Directories: entries as getdents reports them, name -> [d_ino, d_type]. */
  entries?: Record<string, [string, number]>;
}

export function typeOf(st: fs.BigIntStats): Obj['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  return 'sock';
}

/** DT_* of a type, as getdents reports it. */
export const DT: Record<Obj['type'], number> = {
  fifo: 1,
  chr: 2,
  dir: 4,
  blk: 6,
  file: 8,
  symlink: 10,
  sock: 12,
};

/** Extended attributes of p itself (not following a symlink), name -> hex. */
export async function xattrsOf(
  s: Server,
  p: string,
  filter: (name: string) => boolean = () => true,
): Promise<Record<string, string>> {
  const r = await s.call('llistxattr', p);
  if (r.errno) {
    if (r.errno === 'ENOTSUP' || r.errno === 'EOPNOTSUPP') return {};
    throw new Error(`llistxattr ${p}: ${r.errno}`);
  }
  const out: Record<string, string> = {};
  for (const name of (r.names as string[]).slice().sort()) {
    if (!filter(name)) continue;
    const v = await s.call('lgetxattr', p, name);
    if (v.errno) throw new Error(`lgetxattr ${p} ${name}: ${v.errno}`);
    out[name] = v.value as string;
  }
  return out;
}

export interface SnapshotOptions {
  /** Which xattrs to record (default: all the view shows). */
  xattrFilter?: (name: string) => boolean;
  /** Also record getdents d_ino/d_type of every directory (through fsops readdir). */
  dirents?: boolean;
  /** Skip names (at any depth) for which this returns true. */
  skip?: (rel: string, name: string) => boolean;
}

/** Every object under root, by path relative to root ('' is root itself). */
export async function snapshot(
  s: Server,
  root: string,
  o: SnapshotOptions = {},
): Promise<Map<string, Obj>> {
  const out = new Map<string, Obj>();
  const visit = async (rel: string): Promise<void> => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOf(st);
    const obj: Obj = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.size,
      blocks: st.blocks,
      nlink: Number(st.nlink),
      ino: st.ino,
      rdev: st.rdev,
      mtimeNs: st.mtimeNs,
      ctimeNs: st.ctimeNs,
      xattrs: await xattrsOf(s, abs, o.xattrFilter),
    };
    if (type === 'file') obj.hash = sha256(fs.readFileSync(abs));
    if (type === 'symlink') obj.target = fs.readlinkSync(abs);
    out.set(rel, obj);
    if (type !== 'dir') return;
    if (o.dirents) {
      const r = await s.call('readdir', abs);
      if (r.errno) throw new Error(`readdir ${abs}: ${r.errno}`);
      obj.entries = {};
      for (const [name, ino, dt] of r.entries as [string, string, number][]) {
        if (name === '.' || name === '..') continue;
        if (o.skip?.(rel, name)) continue;
        if (name in obj.entries) throw new Error(`readdir ${abs}: ${name} listed twice`);
        obj.entries[name] = [ino, dt];
      }
    }
    for (const name of fs.readdirSync(abs).sort()) {
      if (o.skip?.(rel, name)) continue;
      await visit(rel ? `${rel}/${name}` : name);
    }
  };
  await visit('');
  return out;
}

/** The parts of an object two views of the same tree must agree on. */
export function comparable(
  o: Obj,
  opts: { nlinkDirs?: boolean; times?: boolean; blocks?: boolean } = {},
): Record<string, unknown> {
  const c: Record<string, unknown> = {
    type: o.type,
    mode: o.mode.toString(8),
    uid: o.uid,
    gid: o.gid,
    xattrs: o.xattrs,
  };
  if (o.type !== 'dir') {
    c.size = o.size.toString();
    c.nlink = o.nlink;
  } else if (opts.nlinkDirs) {
    c.nlink = o.nlink;
  }
  if (o.hash !== undefined) c.hash = o.hash;
  if (o.target !== undefined) c.target = o.target;
  if (o.type === 'chr' || o.type === 'blk') c.rdev = o.rdev.toString();
  if (opts.times) c.mtimeNs = o.mtimeNs.toString();
  if (opts.blocks) c.blocks = o.blocks.toString();
  return c;
}

/** Snapshot as a plain object of comparables, for one deepEqual with a readable diff. */
export function view(
  m: Map<string, Obj>,
  opts: Parameters<typeof comparable>[1] = {},
): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [k, v] of m) out[k || '.'] = comparable(v, opts);
  return out;
}

/** Paths grouped by inode number: the hard-link classes of a view, as sorted path lists. */
export function inodeClasses(m: Map<string, Obj>): string[][] {
  const by = new Map<bigint, string[]>();
  for (const [k, v] of m) {
    const l = by.get(v.ino) ?? [];
    l.push(k || '.');
    by.set(v.ino, l);
  }
  return [...by.values()].map((l) => l.sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
}

/**
 * A digest of a raw directory tree, everything that a change would touch: names, types, modes,
 * owners, sizes, data, link targets, device numbers, all xattrs (trusted.* included), mtime and
 * ctime. atime is left out: reading a lower updates it (relatime).
 */
export async function treeDigest(s: Server, root: string): Promise<string> {
  const snap = await snapshot(s, root);
  const h = createHash('sha256');
  for (const [k, v] of [...snap].sort(([a], [b]) => (a < b ? -1 : 1))) {
    h.update(
      JSON.stringify([
        k,
        comparable(v, { times: true }),
        v.ino.toString(),
        v.ctimeNs.toString(),
        v.nlink,
      ]),
    );
  }
  return h.digest('hex');
}

/** A Server (fsops serve) for xattr/readdir/mknod calls, killed in teardown. */
export function fsopsServer(t: ExecutionContext): Server {
  return server(t);
}

// ---- a standard pair of lower layers

/**
 * Builds two lower layers under `root` (returned top first) exercising everything a merge has to
 * handle: nested merged directories, files of assorted sizes (a sparse one included), symlinks
 * (one dangling), hard links (three names of one inode), a fifo, user xattrs, assorted modes and
 * owners, a kernel whiteout of a file and of a directory, an opaque directory, a directory over
 * a file and a file over a directory.
 */
export async function buildStandardLowers(s: Server, root: string): Promise<string[]> {
  const l1 = path.join(root, 'l1');
  const l2 = path.join(root, 'l2');
  const at = (l: string, rel: string): string => path.join(l, rel);
  const setx = (p: string, name: string, value: string): Promise<unknown> =>
    s.ok('lsetxattr', p, name, Buffer.from(value).toString('hex'), '0');

  // Bottom layer.
  mkdirs(
    at(l2, 'a/b/c'),
    at(l2, 'a/gonedir/sub'),
    at(l2, 'opq/inner'),
    at(l2, 'd2/e'),
    at(l2, 'y'),
  );
  fs.writeFileSync(at(l2, 'a/f0'), '');
  fs.writeFileSync(at(l2, 'a/f1'), 'bottom f1\n');
  fs.writeFileSync(at(l2, 'a/f4k'), pattern(4096, 1));
  fs.writeFileSync(at(l2, 'a/fbig'), pattern(70000, 2));
  writeSparse(at(l2, 'a/sparse'), 3 << 20, [
    [0, pattern(4096, 3)],
    [2 << 20, pattern(8192, 4)],
  ]);
  fs.writeFileSync(at(l2, 'a/b/c/deep'), pattern(100, 5));
  fs.writeFileSync(at(l2, 'a/b/hl1'), 'hard link data\n');
  fs.linkSync(at(l2, 'a/b/hl1'), at(l2, 'a/hl2'));
  fs.linkSync(at(l2, 'a/b/hl1'), at(l2, 'hl3'));
  fs.symlinkSync('f1', at(l2, 'a/link'));
  fs.symlinkSync('nothere', at(l2, 'a/dangling'));
  fs.symlinkSync('b', at(l2, 'a/dirlink'));
  await s.ok('mknod', at(l2, 'a/fifo'), 'fifo', '644');
  fs.writeFileSync(at(l2, 'a/gone'), 'whited out\n');
  fs.writeFileSync(at(l2, 'a/gonedir/sub/x'), 'x\n');
  fs.writeFileSync(at(l2, 'opq/o1'), 'o1\n');
  fs.writeFileSync(at(l2, 'opq/inner/o2'), 'o2\n');
  fs.writeFileSync(at(l2, 'd2/e/f'), pattern(5000, 6));
  fs.writeFileSync(at(l2, 'd2/g'), 'g\n');
  fs.writeFileSync(at(l2, 'x'), 'x is a file below\n');
  fs.writeFileSync(at(l2, 'y/under'), 'hidden by the file y above\n');
  fs.chmodSync(at(l2, 'a/f4k'), 0o600);
  fs.chmodSync(at(l2, 'd2/g'), 0o755);
  fs.chmodSync(at(l2, 'd2/e'), 0o2775);
  fs.chownSync(at(l2, 'a/fbig'), 1000, 1000);
  fs.chownSync(at(l2, 'd2'), 1001, 100);
  fs.lchownSync(at(l2, 'a/link'), 1000, 1001);
  await setx(at(l2, 'a/fbig'), 'user.color', 'blue');
  await setx(at(l2, 'a/fbig'), 'user.empty', '');
  await setx(at(l2, 'a'), 'user.dir', 'bottom');
  await setx(at(l2, 'a/b/hl1'), 'user.link', 'shared');

  // Top layer.
  mkdirs(at(l1, 'a/b'), at(l1, 'opq'), at(l1, 'x'), at(l1, 'l1only/deeper'));
  fs.writeFileSync(at(l1, 'a/f1'), 'top f1 shadows bottom\n');
  fs.writeFileSync(at(l1, 'a/top1'), pattern(12345, 7));
  fs.writeFileSync(at(l1, 'a/b/only1'), 'only in l1\n');
  await kernelWhiteout(at(l1, 'a/gone'), s);
  await kernelWhiteout(at(l1, 'a/gonedir'), s);
  await s.ok(
    'lsetxattr',
    at(l1, 'opq'),
    'trusted.overlay.opaque',
    Buffer.from('y').toString('hex'),
    '0',
  );
  fs.writeFileSync(at(l1, 'opq/p1'), 'p1\n');
  fs.writeFileSync(at(l1, 'x/x1'), 'x is a dir above\n');
  fs.writeFileSync(at(l1, 'y'), 'y is a file above\n');
  fs.writeFileSync(at(l1, 'l1only/deeper/z'), pattern(3000, 8));
  await setx(at(l1, 'a/top1'), 'user.top', 'yes');
  await setx(at(l1, 'a'), 'user.dir', 'top');
  fs.chmodSync(at(l1, 'a/b'), 0o750);
  return [l1, l2];
}
