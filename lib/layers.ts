/**
 * Layer workflows over overlay upper directories in the kernel overlayfs format: what a layer
 * changed, exporting it as an OCI layer tar, emptying it, and throwaway sandboxes.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import { FusekitError } from './errors';
import { type Mount, mount } from './mount';
import { native } from './native';
import type { MountOptions } from './options';
import { type TarEntry, type TarType, entryHeader, padding, trailer } from './tar';

export type ChangeKind = 'added' | 'modified' | 'deleted' | 'opaque';
export type EntryType =
  'file' | 'directory' | 'symlink' | 'fifo' | 'socket' | 'char-device' | 'block-device';

export interface LayerChange {
  /** Path relative to the layer root, '/'-separated. */
  path: string;
  /**
   * added: new; modified: an object of a lower layer, changed (copied up); deleted: a whiteout;
   * opaque: a directory that replaces whatever the lower layers had there.
   */
  kind: ChangeKind;
  type?: EntryType;
  /** Directories renamed through the overlay: where their lower content comes from. */
  renamedFrom?: string;
}

const OVL = 'trusted.overlay.';

function typeOf(st: import('node:fs').Stats): EntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'char-device';
  return 'block-device';
}

function xattrs(p: string): Record<string, Buffer> {
  try {
    return native().xattrs(p);
  } catch {
    return {};
  }
}

interface Node {
  abs: string;
  rel: string;
  st: import('node:fs').Stats;
  x: Record<string, Buffer>;
}

/** Whiteouts of every dialect: kernel 0/0 devices, xattr whiteouts, OCI ".wh." files. */
function whiteoutOf(n: Node, parentXattrWhiteouts: boolean): boolean {
  if (n.st.isCharacterDevice() && n.st.rdev === 0) return true;
  return parentXattrWhiteouts && n.st.isFile() && n.st.size === 0 && `${OVL}whiteout` in n.x;
}

async function* walk(
  root: string,
  rel = '',
  parentX = false,
): AsyncGenerator<Node & { whiteout: boolean }> {
  const dir = rel ? path.join(root, rel) : root;
  const names = (await fsp.readdir(dir)).sort();
  for (const name of names) {
    const r = rel ? `${rel}/${name}` : name;
    const abs = path.join(root, r);
    const st = await fsp.lstat(abs);
    const x = xattrs(abs);
    const n = { abs, rel: r, st, x };
    const whiteout = whiteoutOf(n, parentX);
    yield { ...n, whiteout };
    if (st.isDirectory() && !whiteout) {
      yield* walk(root, r, x[`${OVL}opaque`]?.toString() === 'x');
    }
  }
}

async function existsBelow(lower: string[] | undefined, rel: string): Promise<boolean> {
  for (const l of lower ?? []) {
    try {
      await fsp.lstat(path.join(l, rel));
      return true;
    } catch {
      // not in this layer
    }
  }
  return false;
}

/**
 * The changes an upper layer holds. Objects copied up from a lower layer carry
 * trusted.overlay.origin and count as modified; pass `lower` to also classify objects written
 * by tools that record no origin.
 */
export async function diff(
  upper: string,
  options: { lower?: string[] } = {},
): Promise<LayerChange[]> {
  await assertDir(upper, 'upper');
  const out: LayerChange[] = [];
  for await (const n of walk(upper)) {
    const name = path.posix.basename(n.rel);
    const parent = path.posix.dirname(n.rel);
    if (name === '.wh..wh..opq') {
      out.push({ path: parent === '.' ? '' : parent, kind: 'opaque', type: 'directory' });
      continue;
    }
    if (name.startsWith('.wh.')) {
      out.push({ path: (parent === '.' ? '' : parent + '/') + name.slice(4), kind: 'deleted' });
      continue;
    }
    if (n.whiteout) {
      out.push({ path: n.rel, kind: 'deleted' });
      continue;
    }
    const type = typeOf(n.st);
    const change: LayerChange = { path: n.rel, kind: 'added', type };
    if (type === 'directory' && n.x[`${OVL}opaque`]?.toString() === 'y') change.kind = 'opaque';
    else if (`${OVL}origin` in n.x || (await existsBelow(options.lower, n.rel)))
      change.kind = 'modified';
    const redirect = n.x[`${OVL}redirect`]?.toString();
    if (redirect) change.renamedFrom = redirect.replace(/^\//, '');
    out.push(change);
  }
  return out;
}

function tarType(t: EntryType): TarType | undefined {
  switch (t) {
    case 'file':
      return 'file';
    case 'directory':
      return 'directory';
    case 'symlink':
      return 'symlink';
    case 'fifo':
      return 'fifo';
    case 'char-device':
      return 'char';
    case 'block-device':
      return 'block';
    default:
      return undefined; // sockets cannot be archived
  }
}

function userXattrs(x: Record<string, Buffer>): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(x)) if (!k.startsWith(OVL)) out[k] = v;
  return out;
}

async function* fileBody(abs: string, size: number): AsyncGenerator<Buffer> {
  const fh = await fsp.open(abs, 'r');
  try {
    let pos = 0;
    const buf = Buffer.alloc(1 << 20);
    while (pos < size) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) throw new FusekitError('EIO', `${abs} shrank while being archived`);
      yield Buffer.from(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

interface ExportOptions {
  /**
   * The lower layers (top first). Needed only when the upper holds directories renamed through
   * an overlay (trusted.overlay.redirect): an OCI layer cannot express a rename, so such a
   * directory is written whole, as an opaque directory with its merged content.
   */
  lower?: string[];
}

/**
 * Writes an upper layer as an OCI image layer tar to `out`: kernel whiteouts become `.wh.<name>`
 * entries, opaque directories get `.wh..wh..opq`, hard links stay hard links, xattrs (but not the
 * overlay's own) go into SCHILY.xattr pax records.
 */
export async function exportLayer(
  upper: string,
  out: Writable,
  options: ExportOptions = {},
): Promise<void> {
  await assertDir(upper, 'upper');
  let merged: { m: Mount; dir: string } | undefined;
  try {
    const gen = async function* (): AsyncGenerator<Buffer> {
      const links = new Map<string, string>();
      const emit = async function* (
        abs: string,
        rel: string,
        st: import('node:fs').Stats,
        x: Record<string, Buffer>,
      ): AsyncGenerator<Buffer> {
        const type = tarType(typeOf(st));
        if (!type) return;
        const base: TarEntry = {
          path: rel,
          type,
          mode: st.mode & 0o7777,
          uid: st.uid,
          gid: st.gid,
          mtime: Math.floor(st.mtimeMs) / 1000,
          xattrs: userXattrs(x),
        };
        if (type === 'file' && st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          const first = links.get(key);
          if (first) {
            yield entryHeader({ ...base, type: 'link', linkname: first });
            return;
          }
          links.set(key, rel);
        }
        if (type === 'symlink') base.linkname = await fsp.readlink(abs);
        if (type === 'char' || type === 'block') {
          base.devmajor = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
          base.devminor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
        }
        if (type === 'file') base.size = st.size;
        yield entryHeader(base);
        if (type === 'file' && st.size > 0) {
          yield* fileBody(abs, st.size);
          yield padding(st.size);
        }
      };
      const whiteout = (rel: string): Buffer =>
        entryHeader({ path: rel, type: 'file', mode: 0, uid: 0, gid: 0, mtime: 0, size: 0 });
      // The merged view of upper over the lowers, read-only, for what the upper alone cannot say.
      const mergedDir = async (why: string): Promise<string> => {
        if (!options.lower)
          throw new FusekitError(
            'EINVAL',
            `${upper} holds ${why}; pass the lower layers to export it`,
          );
        if (!merged) {
          const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fusekit-export-'));
          const m = await mount({ mountpoint: dir, overlay: { lower: [upper, ...options.lower] } });
          merged = { m, dir };
        }
        return merged.dir;
      };
      // A renamed directory, written whole from the merged view.
      const materialize = async function* (rel: string): AsyncGenerator<Buffer> {
        const base = path.join(
          await mergedDir(`directories renamed through an overlay (${rel})`),
          rel,
        );
        const st = await fsp.lstat(base);
        yield* emit(base, rel, st, xattrs(base));
        yield whiteout(`${rel}/.wh..wh..opq`);
        for await (const n of walk(base)) {
          if (n.whiteout) continue;
          yield* emit(n.abs, `${rel}/${n.rel}`, n.st, n.x);
        }
      };
      const skip: string[] = [];
      // Lower hard links copied up through one name (their data shared by work/index): the other
      // names still live in the lowers only, and an OCI consumer would keep the old data there.
      const aliased: string[] = [];
      for await (const n of walk(upper)) {
        if (skip.some((s) => n.rel.startsWith(s + '/'))) continue;
        const parent = path.posix.dirname(n.rel);
        const dirPrefix = parent === '.' ? '' : `${parent}/`;
        const name = path.posix.basename(n.rel);
        if (n.whiteout) {
          yield whiteout(`${dirPrefix}.wh.${name}`);
          continue;
        }
        if (name.startsWith('.wh.')) {
          // Already an OCI whiteout (an upper written by an OCI tool).
          yield whiteout(n.rel);
          continue;
        }
        if (n.st.isDirectory() && n.x[`${OVL}redirect`]) {
          skip.push(n.rel);
          yield* materialize(n.rel);
          continue;
        }
        yield* emit(n.abs, n.rel, n.st, n.x);
        if (n.st.isFile() && n.st.nlink > 1 && `${OVL}nlink` in n.x) aliased.push(n.rel);
        if (n.st.isDirectory() && n.x[`${OVL}opaque`]?.toString() === 'y')
          yield whiteout(`${n.rel}/.wh..wh..opq`);
      }
      if (aliased.length) {
        if (!options.lower)
          throw new FusekitError(
            'EINVAL',
            `${upper} holds lower hard links changed through one of their names (${aliased[0]}); pass the lower layers to export it`,
          );
        // Every other name of such an inode in the lowers becomes a hard link to the name the layer
        // holds. The copy came from the same path in a lower (or, after a rename, from the inode
        // its origin names).
        const names = new Map<string, Map<string, string[]>>(); // layer -> "dev:ino" -> paths
        const linksOf = async (layer: string): Promise<Map<string, string[]>> => {
          let m = names.get(layer);
          if (!m) {
            m = new Map();
            for await (const n of walk(layer)) {
              if (n.st.isDirectory() || n.st.nlink < 2) continue;
              const k = `${n.st.dev}:${n.st.ino}`;
              m.set(k, [...(m.get(k) ?? []), n.rel]);
            }
            names.set(layer, m);
          }
          return m;
        };
        const emitted = new Set<string>();
        for (const rel of aliased) {
          let found: { layer: string; key: string } | undefined;
          for (const l of options.lower) {
            const st = await fsp.lstat(path.join(l, rel)).catch(() => undefined);
            if (st && st.nlink > 1 && !st.isDirectory()) {
              found = { layer: l, key: `${st.dev}:${st.ino}` };
              break;
            }
          }
          if (!found) {
            const origin = xattrs(path.join(upper, rel))[`${OVL}origin`];
            // FILEID_INO32_GEN origins carry the inode number (ext4, xfs).
            if (origin && origin.length >= 29 && origin[4] === 1) {
              const ino = origin.readUInt32LE(21);
              for (const l of options.lower) {
                const dev = (await fsp.lstat(l)).dev;
                if ((await linksOf(l)).has(`${dev}:${ino}`)) {
                  found = { layer: l, key: `${dev}:${ino}` };
                  break;
                }
              }
            }
          }
          if (!found) continue;
          for (const q of (await linksOf(found.layer)).get(found.key) ?? []) {
            if (q === rel || emitted.has(q)) continue;
            // A name the upper has (copied up, replaced, or whited out) was written above.
            if (
              await fsp.lstat(path.join(upper, q)).then(
                () => true,
                () => false,
              )
            )
              continue;
            const st = await fsp.lstat(path.join(found.layer, q));
            emitted.add(q);
            yield entryHeader({
              path: q,
              type: 'link',
              linkname: rel,
              mode: st.mode & 0o7777,
              uid: st.uid,
              gid: st.gid,
              mtime: Math.floor(st.mtimeMs) / 1000,
            });
          }
        }
      }
      yield trailer();
    };
    await pipeline(Readable.from(gen()), out);
  } finally {
    if (merged) {
      await merged.m.unmount().catch(() => merged!.m.unmount({ lazy: true }));
      await fsp.rmdir(merged.dir).catch(() => undefined);
    }
  }
}

async function assertDir(p: string, what: string): Promise<void> {
  let st;
  try {
    st = await fsp.stat(p);
  } catch (e) {
    throw FusekitError.from(e, `${what} ${p} cannot be read`, p);
  }
  if (!st.isDirectory())
    throw new FusekitError('ENOTDIR', `${what} ${p} is not a directory`, { path: p });
}

async function inUseByKernelOverlay(dirs: string[]): Promise<string | undefined> {
  const info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of info.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [fstype, , superOpts] = line.slice(sep + 3).split(' ');
    if (fstype !== 'overlay' || !superOpts) continue;
    for (const o of superOpts.split(',')) {
      const [k, v] = o.split('=');
      if ((k === 'upperdir' || k === 'workdir') && v && dirs.includes(v)) return v;
    }
  }
  return undefined;
}

/**
 * Empties an upper layer and its work dir, keeping the directories. Refuses (EBUSY) while a
 * fusekit or kernel overlay mount uses them, and then changes nothing.
 */
export async function reset(upper: string, work: string): Promise<void> {
  await assertDir(upper, 'upper');
  await assertDir(work, 'work dir');
  const real = [await fsp.realpath(upper), await fsp.realpath(work)];
  if (native().dirLocked(real[1]!))
    throw new FusekitError('EBUSY', `work dir ${work} is in use by a mounted overlay`, {
      path: work,
    });
  const kernel = await inUseByKernelOverlay(real);
  if (kernel)
    throw new FusekitError('EBUSY', `${kernel} is in use by a kernel overlay mount`, {
      path: kernel,
    });
  for (const dir of real) {
    for (const name of await fsp.readdir(dir)) {
      await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
}

export interface SandboxLayer {
  upper: string;
  work: string;
  /** The changes the sandbox made. */
  diff(): Promise<LayerChange[]>;
  /** The changes as an OCI layer tar. */
  exportLayer(out: Writable): Promise<void>;
  /** Removes the layer. */
  discard(): Promise<void>;
}

export interface SandboxOptions {
  /** Keep the upper layer and return it (for a commit) instead of discarding it. */
  keep?: boolean;
  /** Where the temporary upper/work dirs go (default: the OS temp dir). */
  tmpdir?: string;
  /** Further mount options (cache timeouts, transport, ...). */
  mountOptions?: Omit<Partial<MountOptions>, 'source' | 'overlay' | 'mountpoint'>;
}

/**
 * Mounts a fresh temporary upper over `lower` (top first), runs `fn(mountpoint)`, unmounts, and
 * then discards the upper, or with `keep: true` returns it as a layer to commit.
 */
export async function sandbox<T>(
  lower: string[],
  fn: (mountpoint: string) => T | Promise<T>,
  options: SandboxOptions = {},
): Promise<{ result: T; layer?: SandboxLayer }> {
  const root = await fsp.mkdtemp(path.join(options.tmpdir ?? os.tmpdir(), 'fusekit-sandbox-'));
  const upper = path.join(root, 'upper');
  const work = path.join(root, 'work');
  const merged = path.join(root, 'merged');
  const discard = (): Promise<void> => fsp.rm(root, { recursive: true, force: true });
  let result: T;
  try {
    await Promise.all([fsp.mkdir(upper), fsp.mkdir(work), fsp.mkdir(merged)]);
    const m = await mount({
      ...options.mountOptions,
      mountpoint: merged,
      overlay: { lower, upper, work },
    });
    try {
      result = await fn(merged);
    } finally {
      await m.unmount().catch(() => m.unmount({ lazy: true }));
    }
  } catch (e) {
    await discard();
    throw e;
  }
  if (!options.keep) {
    await discard();
    return { result };
  }
  await fsp.rm(path.join(root, 'merged'), { recursive: true, force: true });
  return {
    result,
    layer: {
      upper,
      work,
      diff: () => diff(upper, { lower }),
      exportLayer: (out) => exportLayer(upper, out, { lower }),
      discard,
    },
  };
}
