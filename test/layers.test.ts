// Layer workflows over overlay upper directories (lib/layers.ts): diff() classifies a scripted
// set of changes; exportLayer() writes an OCI layer tar that GNU tar reads (whiteouts, opaque
// markers, hard links, xattrs) and that, applied onto the lower layers the way an OCI consumer
// applies a layer, gives exactly the merged view; reset() empties a layer but never one in use;
// sandbox() discards or keeps its layer and always unmounts.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { FusekitError, diff, exportLayer, reset, sandbox } from '../lib';
import { tmpdir } from './helpers/fixture';
import type { Server } from './helpers/fsops';
import {
  buildStandardLowers,
  fsopsServer,
  fusekitOverlay,
  kernelOverlay,
  mkdirs,
  mountsUnder,
  pattern,
  snapshot,
  treeDigest,
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
  const root = await tmpdir(t, 'fusekit-layers-');
  const s = fsopsServer(t);
  const lower = await buildStandardLowers(s, root);
  const e = {
    root,
    lower,
    upper: path.join(root, 'upper'),
    work: path.join(root, 'work'),
    mnt: path.join(root, 'mnt'),
    s,
  };
  mkdirs(e.upper, e.work, e.mnt);
  return e;
}

const hex = (s: string): string => Buffer.from(s).toString('hex');

/** Changes of every kind diff() tells apart, made through a fusekit mount. Lower hard links are
 * left alone here (see the test.failing below). */
async function changes(mnt: string, s: Server): Promise<void> {
  const p = (rel: string): string => path.join(mnt, rel);
  fs.writeFileSync(p('new.txt'), 'new\n');
  await s.ok('setxattr', p('new.txt'), 'user.note', hex('exported'), '0');
  mkdirs(p('newdir/sub'));
  fs.writeFileSync(p('newdir/sub/file'), pattern(30000, 1));
  fs.symlinkSync('../new.txt', p('newdir/toplink'));
  await s.ok('mknod', p('newdir/fifo'), 'fifo', '640');
  fs.writeFileSync(p('newdir/h1'), 'hard\n');
  fs.linkSync(p('newdir/h1'), p('newdir/h2'));
  fs.appendFileSync(p('a/fbig'), 'appended');
  fs.chmodSync(p('a/f4k'), 0o640);
  fs.chownSync(p('d2/g'), 1000, 1001);
  fs.unlinkSync(p('a/f1'));
  fs.rmSync(p('d2/e'), { recursive: true });
  fs.rmSync(p('l1only'), { recursive: true });
  fs.mkdirSync(p('l1only'));
  fs.writeFileSync(p('l1only/fresh'), 'fresh\n');
  fs.renameSync(p('a/b/c'), p('a/c-moved'));
}

test('diff() reports added, modified, deleted, opaque and renamed entries', async (t) => {
  const e = await setup(t);
  const m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  await changes(e.mnt, e.s);
  await m.unmount();
  const d = await diff(e.upper, { lower: e.lower });
  t.deepEqual(d, [
    { path: 'a', kind: 'modified', type: 'directory' },
    { path: 'a/b', kind: 'modified', type: 'directory' },
    { path: 'a/b/c', kind: 'deleted' },
    { path: 'a/c-moved', kind: 'modified', type: 'directory', renamedFrom: 'a/b/c' },
    { path: 'a/f1', kind: 'deleted' },
    { path: 'a/f4k', kind: 'modified', type: 'file' },
    { path: 'a/fbig', kind: 'modified', type: 'file' },
    { path: 'd2', kind: 'modified', type: 'directory' },
    { path: 'd2/e', kind: 'deleted' },
    { path: 'd2/g', kind: 'modified', type: 'file' },
    { path: 'l1only', kind: 'opaque', type: 'directory' },
    { path: 'l1only/fresh', kind: 'added', type: 'file' },
    { path: 'new.txt', kind: 'added', type: 'file' },
    { path: 'newdir', kind: 'added', type: 'directory' },
    { path: 'newdir/fifo', kind: 'added', type: 'fifo' },
    { path: 'newdir/h1', kind: 'added', type: 'file' },
    { path: 'newdir/h2', kind: 'added', type: 'file' },
    { path: 'newdir/sub', kind: 'added', type: 'directory' },
    { path: 'newdir/sub/file', kind: 'added', type: 'file' },
    { path: 'newdir/toplink', kind: 'added', type: 'symlink' },
  ]);
  // An empty upper has no changes; a missing one is an error.
  t.deepEqual(await diff(path.join(e.root, 'mnt')), []);
  await t.throwsAsync(diff(path.join(e.root, 'missing')), {
    instanceOf: FusekitError,
    code: 'ENOENT',
  });
});

/** Applies an extracted OCI layer (`staging`, with its .wh. files) onto `base` as an OCI
 * consumer does: an opaque marker empties the directory below, a `.wh.<name>` removes <name>,
 * every other entry replaces what is there (directories merge). */
function ociApply(staging: string, base: string): void {
  const walk = (rel: string): void => {
    const sdir = path.join(staging, rel);
    const bdir = path.join(base, rel);
    const names = fs.readdirSync(sdir);
    if (names.includes('.wh..wh..opq') && fs.existsSync(bdir)) {
      for (const n of fs.readdirSync(bdir))
        fs.rmSync(path.join(bdir, n), { recursive: true, force: true });
    }
    for (const n of names) {
      if (n.startsWith('.wh.')) {
        if (n !== '.wh..wh..opq')
          fs.rmSync(path.join(bdir, n.slice(4)), { recursive: true, force: true });
        fs.rmSync(path.join(sdir, n));
        continue;
      }
      const st = fs.lstatSync(path.join(sdir, n));
      const b = fs.lstatSync(path.join(bdir, n), { throwIfNoEntry: false });
      // A new object replaces the old one (never written through its other hard links).
      if (b && !(st.isDirectory() && b.isDirectory()))
        fs.rmSync(path.join(bdir, n), { recursive: true, force: true });
      if (st.isDirectory()) walk(rel ? `${rel}/${n}` : n);
    }
  };
  walk('');
  execFileSync('cp', ['-a', `${staging}/.`, base]);
}

async function exportTo(e: Env, file: string): Promise<void> {
  const out = fs.createWriteStream(file);
  await exportLayer(e.upper, out, { lower: e.lower });
}

test('exportLayer() writes an OCI layer that GNU tar reads and that applies onto the lowers as the merged view', async (t) => {
  const e = await setup(t);
  let m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  await changes(e.mnt, e.s);
  await m.unmount();
  const tar = path.join(e.root, 'layer.tar');
  await exportTo(e, tar);
  t.deepEqual(mountsUnder(e.root), [], 'the export mounts nothing it leaves behind');

  // GNU tar lists it: whiteouts, opaque markers, a hard link, no overlay internals.
  const listing = execFileSync('tar', ['-tvf', tar], { encoding: 'utf8' });
  const names = execFileSync('tar', ['-tf', tar], { encoding: 'utf8' }).trim().split('\n');
  for (const n of [
    'a/.wh.f1',
    'a/b/.wh.c',
    'd2/.wh.e',
    'l1only/.wh..wh..opq',
    'a/c-moved/.wh..wh..opq',
    'new.txt',
    'newdir/h1',
    'newdir/fifo',
  ])
    t.true(names.includes(n), `${n} in the layer`);
  t.regex(listing, /newdir\/h2 link to newdir\/h1/);
  t.regex(listing, /^p.* newdir\/fifo$/m);
  t.regex(listing, /newdir\/toplink -> \.\.\/new\.txt/);
  t.false(names.some((n) => n.startsWith('work') || n.includes('#fk')));
  // The renamed directory is written whole (its lower content included).
  t.true(names.includes('a/c-moved/deep'));
  t.false(names.includes('a/b/hl1') || names.includes('a/b/only1'));

  const staging = path.join(e.root, 'staging');
  mkdirs(staging);
  execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpf', tar, '-C', staging]);
  const xv = async (p: string, n: string): Promise<string> =>
    Buffer.from((await e.s.ok('lgetxattr', p, n)).value as string, 'hex').toString();
  t.is(await xv(path.join(staging, 'new.txt'), 'user.note'), 'exported');
  t.is(await xv(path.join(staging, 'a'), 'user.dir'), 'top');
  t.is(
    fs.statSync(path.join(staging, 'newdir/h1')).ino,
    fs.statSync(path.join(staging, 'newdir/h2')).ino,
  );
  t.is(fs.lstatSync(path.join(staging, 'd2/g')).uid, 1000);
  t.is(fs.lstatSync(path.join(staging, 'a/f4k')).mode & 0o7777, 0o640);
  t.true(fs.lstatSync(path.join(staging, 'newdir/fifo')).isFIFO());
  for (const n of names) t.false(n.split('/').some((c) => c.startsWith('trusted.overlay')));

  // The base an OCI consumer has: the lower layers' merged content.
  const base = path.join(e.root, 'base');
  const lowView = path.join(e.root, 'lowview');
  mkdirs(base, lowView);
  const ro = await fusekitOverlay(t, { lower: e.lower, mnt: lowView });
  execFileSync('cp', ['-a', `${lowView}/.`, base]);
  await ro.unmount();
  ociApply(staging, base);

  m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  const merged = view(await snapshot(e.s, e.mnt));
  const applied = view(await snapshot(e.s, base));
  delete merged['.'];
  delete applied['.'];
  t.deepEqual(applied, merged);
  t.true(Object.keys(merged).length > 30);
});

test('exportLayer() writes every name of a lower hard link changed through one name', async (t) => {
  // Only the name written through is in the upper (the data is shared through work/index); an OCI
  // layer needs every name of the changed inode, or the other names keep the old data.
  const e = await setup(t);
  const m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  fs.appendFileSync(path.join(e.mnt, 'a/hl2'), 'changed\n');
  await m.unmount();
  const tar = path.join(e.root, 'layer.tar');
  await exportTo(e, tar);
  const names = execFileSync('tar', ['-tf', tar], { encoding: 'utf8' }).trim().split('\n');
  t.true(names.includes('a/hl2'));
  t.true(names.includes('hl3') && names.includes('a/b/hl1'), names.join(','));
});

test('reset() empties upper and work, and refuses with EBUSY while a mount uses them', async (t) => {
  const e = await setup(t);
  const m = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  await changes(e.mnt, e.s);
  const digest = async (): Promise<string[]> => [
    await treeDigest(e.s, e.upper),
    await treeDigest(e.s, e.work),
  ];
  const before = await digest();
  await t.throwsAsync(reset(e.upper, e.work), { instanceOf: FusekitError, code: 'EBUSY' });
  t.deepEqual(await digest(), before, 'nothing changed');
  t.true(fs.existsSync(path.join(e.mnt, 'new.txt')));
  await m.unmount();

  // A kernel overlay using them: the same.
  kernelOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  const before2 = await digest();
  await t.throwsAsync(reset(e.upper, e.work), { instanceOf: FusekitError, code: 'EBUSY' });
  t.deepEqual(await digest(), before2);
  umountQuiet(e.mnt);

  await reset(e.upper, e.work);
  t.deepEqual(fs.readdirSync(e.upper), []);
  t.deepEqual(fs.readdirSync(e.work), []);
  // Mounted again, it shows the lowers alone.
  const m2 = await fusekitOverlay(t, { lower: e.lower, upper: e.upper, work: e.work, mnt: e.mnt });
  t.deepEqual(fs.readdirSync(e.mnt).sort(), ['a', 'd2', 'hl3', 'l1only', 'opq', 'x', 'y']);
  t.is(fs.readFileSync(path.join(e.mnt, 'a/f1'), 'utf8'), 'top f1 shadows bottom\n');
  await m2.unmount();
  await t.throwsAsync(reset(path.join(e.root, 'missing'), e.work), {
    instanceOf: FusekitError,
    code: 'ENOENT',
  });
});

test('sandbox() discards its layer by default, keeps it on request, and unmounts when fn throws', async (t) => {
  const e = await setup(t);
  const tmp = path.join(e.root, 'sandboxes');
  mkdirs(tmp);
  const lowerBefore = await Promise.all(e.lower.map((l) => treeDigest(e.s, l)));

  // Discarded: the result comes back, nothing stays mounted or on disk.
  let seen = '';
  const r1 = await sandbox(
    e.lower,
    (mnt) => {
      seen = mnt;
      fs.writeFileSync(path.join(mnt, 'scratch'), 'x');
      fs.unlinkSync(path.join(mnt, 'a/f1'));
      t.deepEqual(mountsUnder(e.root), [mnt]);
      return 42;
    },
    { tmpdir: tmp },
  );
  t.is(r1.result, 42);
  t.is(r1.layer, undefined);
  t.deepEqual(fs.readdirSync(tmp), []);
  t.deepEqual(mountsUnder(e.root), []);
  t.false(fs.existsSync(seen));

  // Kept: the layer holds the changes, and can be diffed, exported, discarded.
  const r2 = await sandbox(
    e.lower,
    async (mnt) => {
      fs.writeFileSync(path.join(mnt, 'kept'), 'kept\n');
      fs.appendFileSync(path.join(mnt, 'a/fbig'), 'more');
      return 'done';
    },
    { tmpdir: tmp, keep: true },
  );
  t.is(r2.result, 'done');
  const layer = r2.layer!;
  t.deepEqual(mountsUnder(e.root), []);
  t.is(fs.readFileSync(path.join(layer.upper, 'kept'), 'utf8'), 'kept\n');
  t.deepEqual(
    (await layer.diff()).map((c) => `${c.kind} ${c.path}`),
    ['modified a', 'modified a/fbig', 'added kept'],
  );
  const tar = path.join(e.root, 'kept.tar');
  await layer.exportLayer(fs.createWriteStream(tar));
  t.deepEqual(execFileSync('tar', ['-tf', tar], { encoding: 'utf8' }).trim().split('\n'), [
    'a/',
    'a/fbig',
    'kept',
  ]);
  await layer.discard();
  t.false(fs.existsSync(layer.upper));
  t.deepEqual(fs.readdirSync(tmp), []);

  // fn throws: the error comes through, the overlay is unmounted, the layer is gone.
  const boom = new Error('boom');
  let inside = '';
  await t.throwsAsync(
    sandbox(
      e.lower,
      (mnt) => {
        inside = mnt;
        fs.writeFileSync(path.join(mnt, 'partial'), 'x');
        throw boom;
      },
      { tmpdir: tmp, keep: true },
    ),
    { is: boom },
  );
  t.truthy(inside);
  t.deepEqual(mountsUnder(e.root), []);
  t.deepEqual(fs.readdirSync(tmp), []);
  t.deepEqual(await Promise.all(e.lower.map((l) => treeDigest(e.s, l))), lowerBefore);
});
