// Layer compatibility with kernel overlayfs, both ways: an upper layer written through fusekit
// mounts under the kernel with the same merged view (and the kernel's on-disk format: whiteout
// devices, opaque/redirect/origin/impure xattrs, the hard-link index), and an upper layer written
// through the kernel mounts under fusekit with the same view. Plus OCI whiteouts (`.wh.<name>`,
// `.wh..wh..opq`), read only with ociWhiteouts, and kernel whiteouts read in every mode.
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Mount } from '../lib';
import { tmpdir } from './helpers/fixture';
import type { Server } from './helpers/fsops';
import {
  type Obj,
  buildStandardLowers,
  fsopsServer,
  fusekitOverlay,
  inodeClasses,
  kernelOverlay,
  kernelWhiteout,
  mkdirs,
  mountsUnder,
  pattern,
  snapshot,
  umountQuiet,
  view,
} from './helpers/overlay-util';

interface Env {
  root: string;
  lower: string[];
  upper: string;
  work: string;
  mnt: string;
  s: Server;
}

async function setup(t: ExecutionContext): Promise<Env> {
  const root = await tmpdir(t, 'fusekit-ovcompat-');
  const s = fsopsServer(t);
  const lower = await buildStandardLowers(s, root);
  const env = {
    root,
    lower,
    upper: path.join(root, 'upper'),
    work: path.join(root, 'work'),
    mnt: path.join(root, 'mnt'),
    s,
  };
  mkdirs(env.upper, env.work, env.mnt);
  return env;
}

const hex = (s: string): string => Buffer.from(s).toString('hex');

/** The same changes, made through whichever overlay is mounted at mnt: creations, copy-ups of
 * data and metadata, deletions of lower files and directories, a directory removed and made
 * again, directories renamed in place and to another parent, hard links written and removed. */
async function applyScript(mnt: string, s: Server): Promise<void> {
  const p = (rel: string): string => path.join(mnt, rel);
  // Creations.
  fs.writeFileSync(p('new.txt'), 'new file\n');
  mkdirs(p('newdir/sub'));
  fs.writeFileSync(p('newdir/sub/file'), pattern(10000, 11));
  fs.symlinkSync('../a/top1', p('newdir/toplink'));
  await s.ok('mknod', p('newdir/fifo'), 'fifo', '600');
  // Copy-ups: data, mode, owner, xattrs, times.
  fs.appendFileSync(p('a/fbig'), 'appended\n');
  fs.chmodSync(p('a/f4k'), 0o640);
  fs.chownSync(p('d2/g'), 1000, 1001);
  await s.ok('setxattr', p('a/f0'), 'user.added', hex('value'), '0');
  await s.ok('removexattr', p('a/fbig'), 'user.color');
  fs.utimesSync(p('a/top1'), 1_000_000_000, 1_000_000_001);
  const sparse = fs.openSync(p('a/sparse'), 'r+');
  fs.writeSync(sparse, Buffer.from('in the hole'), 0, 11, 1 << 20);
  fs.closeSync(sparse);
  // Deletions: lower file, lower directory tree, a file in a merged directory.
  fs.unlinkSync(p('a/f1'));
  fs.rmSync(p('d2/e'), { recursive: true });
  fs.unlinkSync(p('a/b/only1'));
  // Removed and made again: opaque.
  fs.rmSync(p('l1only'), { recursive: true });
  fs.mkdirSync(p('l1only'));
  fs.writeFileSync(p('l1only/fresh'), 'fresh\n');
  // Directory renames: in place (redirect) and to another parent (absolute redirect).
  fs.renameSync(p('a/b'), p('a/b-renamed'));
  fs.mkdirSync(p('moved'));
  fs.renameSync(p('d2'), p('moved/d2'));
  // Hard links: write through one name, add one, remove one.
  fs.appendFileSync(p('a/hl2'), 'through hl2\n');
  fs.linkSync(p('hl3'), p('newdir/hl4'));
  fs.unlinkSync(p('a/b-renamed/hl1'));
  // A file replaced by a rename, and two swapped.
  fs.renameSync(p('a/top1'), p('a/f0'));
  await s.ok('rename2', p('x'), p('y'), 'exchange');
}

/** What the on-disk format of an upper layer holding applyScript's changes must contain, in the
 * kernel's terms; both writers must produce it. */
async function checkFormat(t: ExecutionContext, e: Env, who: string): Promise<void> {
  const u = (rel: string): string => path.join(e.upper, rel);
  const xattr = async (rel: string, name: string): Promise<Buffer | undefined> => {
    const r = await e.s.call('lgetxattr', u(rel), name);
    return r.errno ? undefined : Buffer.from(r.value as string, 'hex');
  };
  const isWhiteout = (rel: string): boolean => {
    const st = fs.lstatSync(u(rel));
    return st.isCharacterDevice() && st.rdev === 0;
  };
  for (const rel of ['a/f1', 'a/b-renamed/only1', 'moved/d2/e', 'a/top1'])
    t.true(isWhiteout(rel), `${who}: ${rel} is a whiteout (char 0/0)`);
  // a/b and d2 were renamed: whiteouts stay where their lower parts were.
  t.true(isWhiteout('a/b'), `${who}: a/b whiteout`);
  t.true(isWhiteout('d2'), `${who}: d2 whiteout`);
  // Removed and made again: an opaque directory holding only what is new (no whiteouts needed).
  t.is((await xattr('l1only', 'trusted.overlay.opaque'))?.toString(), 'y', `${who}: opaque`);
  t.deepEqual(fs.readdirSync(u('l1only')), ['fresh'], `${who}: opaque dir content`);
  // Redirects: relative or absolute are both valid for a rename in place; to another parent the
  // path must be absolute.
  t.regex(
    (await xattr('a/b-renamed', 'trusted.overlay.redirect'))?.toString() ?? '',
    /^(\/a\/)?b$/,
    `${who}: redirect`,
  );
  t.is(
    (await xattr('moved/d2', 'trusted.overlay.redirect'))?.toString(),
    '/d2',
    `${who}: absolute redirect`,
  );
  // Copied-up objects carry their origin as a struct ovl_fb (version 0, magic 0xfb).
  for (const rel of ['a/fbig', 'a/f4k', 'a/f0', 'a/sparse', 'moved/d2/g']) {
    const o = await xattr(rel, 'trusted.overlay.origin');
    t.truthy(o, `${who}: ${rel} has an origin`);
    if (o) {
      t.is(o[0], 0, `${who}: ${rel} origin version`);
      t.is(o[1], 0xfb, `${who}: ${rel} origin magic`);
      t.is(o[2], o.length, `${who}: ${rel} origin length`);
    }
  }
  t.truthy(await xattr('a', 'trusted.overlay.impure'), `${who}: a is impure`);
  // The hard link went through the index: one entry, named after the origin, with an nlink count.
  const index = fs.readdirSync(path.join(e.work, 'index')).filter((n) => !n.startsWith('#'));
  t.is(index.length, 1, `${who}: one index entry (${index.join(',')})`);
  const idx = path.join(e.work, 'index', index[0]!);
  const hl = fs.lstatSync(u('a/hl2'));
  t.is(fs.lstatSync(idx).ino, hl.ino, `${who}: the upper hl2 is the index entry`);
  const origin = (await xattr('a/hl2', 'trusted.overlay.origin'))!;
  t.is(index[0], origin.toString('hex'), `${who}: the index name is the origin in hex`);
  const nl = await e.s.call('lgetxattr', idx, 'trusted.overlay.nlink');
  t.regex(
    Buffer.from((nl.value as string) ?? '', 'hex').toString(),
    /^U[+-]\d+$/,
    `${who}: nlink xattr`,
  );
}

function sameInodes(
  t: ExecutionContext,
  a: Map<string, Obj>,
  b: Map<string, Obj>,
  what: string,
): void {
  t.deepEqual(inodeClasses(a), inodeClasses(b), `${what}: hard-link classes`);
  // Every layer is on one filesystem, where both show the real numbers (the origin's for
  // copied-up objects), so the numbers themselves agree.
  const ai: Record<string, string> = {};
  const bi: Record<string, string> = {};
  for (const [k, v] of a) ai[k] = v.ino.toString();
  for (const [k, v] of b) bi[k] = v.ino.toString();
  t.deepEqual(ai, bi, `${what}: inode numbers`);
}

test.serial(
  'an upper layer written through fusekit mounts under kernel overlayfs with the same view',
  async (t) => {
    const e = await setup(t);
    const m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    await applyScript(e.mnt, e.s);
    const viaFusekit = await snapshot(e.s, e.mnt);
    t.true(viaFusekit.size > 30);
    await m.unmount();
    await checkFormat(t, e, 'fusekit');

    kernelOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    const viaKernel = await snapshot(e.s, e.mnt);
    t.deepEqual(view(viaKernel), view(viaFusekit));
    sameInodes(t, viaKernel, viaFusekit, 'kernel on the fusekit upper');
    // The kernel keeps working on it: a change through the kernel shows in fusekit afterwards.
    fs.appendFileSync(path.join(e.mnt, 'a/hl2'), 'through the kernel\n');
    fs.renameSync(path.join(e.mnt, 'a/b-renamed'), path.join(e.mnt, 'b-again'));
    const after = await snapshot(e.s, e.mnt);
    umountQuiet(e.mnt);
    await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    const again = await snapshot(e.s, e.mnt);
    t.deepEqual(view(again), view(after));
    sameInodes(t, again, after, 'fusekit again after the kernel');
  },
);

test.serial(
  'an upper layer written through kernel overlayfs mounts under fusekit with the same view',
  async (t) => {
    const e = await setup(t);
    kernelOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    await applyScript(e.mnt, e.s);
    const viaKernel = await snapshot(e.s, e.mnt);
    umountQuiet(e.mnt);
    await checkFormat(t, e, 'kernel');

    const m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    const viaFusekit = await snapshot(e.s, e.mnt);
    t.deepEqual(view(viaFusekit), view(viaKernel));
    sameInodes(t, viaFusekit, viaKernel, 'fusekit on the kernel upper');
    // fusekit keeps working on it, and the kernel sees the result.
    fs.appendFileSync(path.join(e.mnt, 'a/hl2'), 'through fusekit\n');
    fs.unlinkSync(path.join(e.mnt, 'newdir/hl4'));
    fs.renameSync(path.join(e.mnt, 'moved/d2'), path.join(e.mnt, 'd2-back'));
    fs.rmSync(path.join(e.mnt, 'opq'), { recursive: true });
    const after = await snapshot(e.s, e.mnt);
    await m.unmount();
    kernelOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
    const again = await snapshot(e.s, e.mnt);
    t.deepEqual(view(again), view(after));
    sameInodes(t, again, after, 'kernel again after fusekit');
  },
);

test.serial(
  'the same changes made through fusekit and through the kernel give the same merged view',
  async (t) => {
    const root = await tmpdir(t, 'fusekit-ovcompat-');
    const s = fsopsServer(t);
    const lower = await buildStandardLowers(s, root);
    const dirs = ['fu', 'fw', 'fm', 'ku', 'kw', 'km'].map((d) => path.join(root, d));
    mkdirs(...dirs);
    const [fu, fw, fm, ku, kw, km] = dirs as [string, string, string, string, string, string];
    await fusekitOverlay(t, { lower, upper: fu, work: fw, mnt: fm });
    kernelOverlay(t, { lower, upper: ku, work: kw, mnt: km });
    await applyScript(fm, s);
    await applyScript(km, s);
    const f = await snapshot(s, fm, { dirents: true });
    const k = await snapshot(s, km, { dirents: true });
    t.deepEqual(view(f), view(k));
    t.deepEqual(inodeClasses(f), inodeClasses(k));
  },
);

// ---- whiteout dialects in lower layers

/** Lower layers with OCI whiteouts in the top one, kernel and xattr whiteouts too. */
async function ociLowers(root: string, s: Server): Promise<string[]> {
  const top = path.join(root, 'oci-top');
  const bottom = path.join(root, 'oci-bottom');
  mkdirs(
    path.join(bottom, 'dir/gonedir/x'),
    path.join(bottom, 'opq/sub'),
    path.join(bottom, 'xdir'),
    path.join(top, 'dir'),
    path.join(top, 'opq'),
    path.join(top, 'xdir'),
  );
  for (const f of [
    'dir/keep',
    'dir/gone',
    'dir/kgone',
    'dir/both',
    'opq/o1',
    'opq/sub/o2',
    'xdir/xw',
    'xdir/stay',
    'rootgone',
  ])
    fs.writeFileSync(path.join(bottom, f), `${f} below\n`);
  // OCI: ".wh.<name>" hides <name> below, ".wh..wh..opq" hides everything below.
  fs.writeFileSync(path.join(top, 'dir/.wh.gone'), '');
  fs.writeFileSync(path.join(top, 'dir/.wh.gonedir'), '');
  fs.writeFileSync(path.join(top, '.wh.rootgone'), '');
  fs.writeFileSync(path.join(top, 'opq/.wh..wh..opq'), '');
  fs.writeFileSync(path.join(top, 'opq/new'), 'new above\n');
  // A whiteout only hides lower layers: the same layer's own "both" stays.
  fs.writeFileSync(path.join(top, 'dir/both'), 'both above\n');
  fs.writeFileSync(path.join(top, 'dir/.wh.both'), '');
  // Kernel whiteout.
  await kernelWhiteout(path.join(top, 'dir/kgone'), s);
  // xattr whiteout: a zero-size file with trusted.overlay.whiteout in a directory marked "x".
  await s.ok('lsetxattr', path.join(top, 'xdir'), 'trusted.overlay.opaque', hex('x'), '0');
  fs.writeFileSync(path.join(top, 'xdir/xw'), '');
  await s.ok('lsetxattr', path.join(top, 'xdir/xw'), 'trusted.overlay.whiteout', '', '0');
  return [top, bottom];
}

test.serial(
  'OCI whiteouts: honoured with ociWhiteouts, plain files without (as in the kernel); kernel and xattr whiteouts always',
  async (t) => {
    const root = await tmpdir(t, 'fusekit-ovcompat-');
    const s = fsopsServer(t);
    const lower = await ociLowers(root, s);
    const km = path.join(root, 'km');
    const plain = path.join(root, 'plain');
    const oci = path.join(root, 'oci');
    const ociRw = path.join(root, 'oci-rw');
    const upper = path.join(root, 'upper');
    const work = path.join(root, 'work');
    mkdirs(km, plain, oci, ociRw, upper, work);
    const mounts: Mount[] = [];
    mounts.push(await fusekitOverlay(t, { lower, mnt: plain }));
    mounts.push(await fusekitOverlay(t, { lower, mnt: oci, ociWhiteouts: true }));
    mounts.push(await fusekitOverlay(t, { lower, upper, work, mnt: ociRw, ociWhiteouts: true }));
    kernelOverlay(t, { lower, mnt: km, options: 'redirect_dir=on' });

    // Without ociWhiteouts fusekit shows what the kernel shows: the .wh. files as files.
    const k = await snapshot(s, km, { dirents: true });
    const p = await snapshot(s, plain, { dirents: true });
    t.deepEqual(view(p), view(k));
    t.true(k.has('dir/.wh.gone') && k.has('dir/gone') && k.has('opq/o1'));
    // Kernel and xattr whiteouts are honoured by both.
    t.false(k.has('dir/kgone'));
    t.false(k.has('xdir/xw'));
    t.true(k.has('xdir/stay'));

    for (const mnt of [oci, ociRw]) {
      const o = await snapshot(s, mnt, { dirents: true });
      const names = [...o.keys()].sort();
      t.deepEqual(names, [
        '',
        'dir',
        'dir/both',
        'dir/keep',
        'opq',
        'opq/new',
        'xdir',
        'xdir/stay',
      ]);
      t.is(fs.readFileSync(path.join(mnt, 'dir/both'), 'utf8'), 'both above\n');
      for (const hidden of [
        'dir/gone',
        'dir/gonedir',
        'dir/kgone',
        'opq/o1',
        'opq/sub',
        'rootgone',
        'dir/.wh.gone',
        'opq/.wh..wh..opq',
      ]) {
        t.throws(() => fs.lstatSync(path.join(mnt, hidden)), { code: 'ENOENT' }, hidden);
      }
      t.deepEqual(Object.keys(o.get('dir')!.entries!).sort(), ['both', 'keep']);
    }

    // Writable: a whited-out name can be made again, shows once, and its lower content stays gone.
    fs.writeFileSync(path.join(ociRw, 'dir/gone'), 'again\n');
    fs.mkdirSync(path.join(ociRw, 'dir/gonedir'));
    t.deepEqual(fs.readdirSync(path.join(ociRw, 'dir')).sort(), [
      'both',
      'gone',
      'gonedir',
      'keep',
    ]);
    t.deepEqual(fs.readdirSync(path.join(ociRw, 'dir/gonedir')), []);
    t.is(fs.readFileSync(path.join(ociRw, 'dir/gone'), 'utf8'), 'again\n');
    // ".wh." names are markers: they cannot be made through the overlay.
    t.throws(() => fs.writeFileSync(path.join(ociRw, 'dir/.wh.keep'), ''), { code: 'EINVAL' });
    t.throws(() => fs.mkdirSync(path.join(ociRw, '.wh.dir')), { code: 'EINVAL' });
    t.throws(() => fs.renameSync(path.join(ociRw, 'dir/gone'), path.join(ociRw, 'dir/.wh.x')), {
      code: 'EINVAL',
    });
    t.is(fs.readFileSync(path.join(ociRw, 'dir/keep'), 'utf8'), 'dir/keep below\n');
    // Deleting through the overlay writes kernel whiteouts, never .wh. files.
    fs.unlinkSync(path.join(ociRw, 'dir/keep'));
    t.true(fs.lstatSync(path.join(upper, 'dir/keep')).isCharacterDevice());
    t.false(fs.readdirSync(path.join(upper, 'dir')).some((n) => n.startsWith('.wh.')));
    for (const m of mounts) await m.unmount();
    t.deepEqual(mountsUnder(root), [km]);
  },
);
