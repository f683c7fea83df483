// Nothing outside the source is ever read, listed or written by the daemon on behalf of a path
// inside the mount. Symlinks are data: the daemon hands them back verbatim and never follows them;
// the kernel resolves them afterwards in the *caller's* view of the filesystem, exactly as for any
// other mount (so a link to /etc/passwd through the mount reaches the caller's own /etc/passwd,
// which the caller could open directly anyway). The tests below place the mount where a link's
// target means something different for the caller than for the daemon, so reaching the daemon's
// side would show.
import test, { type ExecutionContext } from 'ava';
import { constants as fsc, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';

import { type Mount, mount } from '../lib';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import {
  JsonChild,
  inPrivateNamespace,
  nodeArgv,
  run,
  snapshot,
  spawnChild,
  waitFor,
  within,
} from './helpers/proc-util';

interface World {
  root: string;
  src: string;
  /** The mount point, one level deeper than the source, so `mnt/..` is not `src/..`. */
  mnt: string;
  /** A sentinel directory next to the source (the daemon could reach it as src/../outside). */
  outside: string;
  m: Mount;
}

async function world(
  t: ExecutionContext,
  options: { entryTimeout?: number; attrTimeout?: number } = {},
): Promise<World> {
  const root = await tmpdir(t);
  const src = path.join(root, 'src');
  const outside = path.join(root, 'outside');
  const mnt = path.join(root, 'deep', 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(outside);
  await fsp.mkdir(mnt, { recursive: true });
  await fsp.writeFile(path.join(outside, 'secret'), 'SECRET outside the source\n');
  await fsp.writeFile(path.join(src, 'inside.txt'), 'inside\n');
  await fsp.mkdir(path.join(src, 'sub'));
  const m = await mount({ source: src, mountpoint: mnt, ...options });
  unmountInTeardown(t, m);
  return { root, src, mnt, outside, m };
}

test('symlinks pointing outside are returned verbatim and resolved in the caller’s tree only', async (t) => {
  const w = await world(t);
  const abs = path.join(w.outside, 'secret');
  await fsp.symlink(abs, path.join(w.src, 'abs'));
  await fsp.symlink('../outside/secret', path.join(w.src, 'rel'));
  await fsp.symlink('../../outside/secret', path.join(w.src, 'sub', 'rel2'));

  t.is(await fsp.readlink(path.join(w.mnt, 'abs')), abs);
  t.is(await fsp.readlink(path.join(w.mnt, 'rel')), '../outside/secret');
  t.is(await fsp.readlink(path.join(w.mnt, 'sub', 'rel2')), '../../outside/secret');
  t.true((await fsp.lstat(path.join(w.mnt, 'rel'))).isSymbolicLink());
  t.is((await fsp.lstat(path.join(w.mnt, 'abs'))).size, Buffer.byteLength(abs));

  // From the source's directory, ../outside/secret exists; from the mount point's it does not.
  // Following the link through the mount fails: the daemon did not resolve it.
  await t.throwsAsync(fsp.readFile(path.join(w.mnt, 'rel')), { code: 'ENOENT' });
  await t.throwsAsync(fsp.readFile(path.join(w.mnt, 'sub', 'rel2')), { code: 'ENOENT' });
  // What the caller's tree has at that place is what it gets.
  await fsp.mkdir(path.join(w.root, 'deep', 'outside'));
  await fsp.writeFile(path.join(w.root, 'deep', 'outside', 'secret'), 'the caller’s own file\n');
  t.is(await fsp.readFile(path.join(w.mnt, 'rel'), 'utf8'), 'the caller’s own file\n');
  t.is(await fsp.readFile(path.join(w.mnt, 'sub', 'rel2'), 'utf8'), 'the caller’s own file\n');

  // O_NOFOLLOW opens of the link itself fail: nothing behind it is served.
  await t.throwsAsync(fsp.open(path.join(w.mnt, 'abs'), fsc.O_RDONLY | fsc.O_NOFOLLOW), {
    code: 'ELOOP',
  });

  // The absolute link reaches the outside file through the caller's root, like any symlink. In a
  // mount namespace where that path is covered by an empty tmpfs, the same read through the same
  // mount fails, though the daemon (in the original namespace) could have reached the file.
  t.is(await fsp.readFile(path.join(w.mnt, 'abs'), 'utf8'), 'SECRET outside the source\n');
  const script = `
    const fs = require('fs');
    const out = {};
    for (const p of ${JSON.stringify([path.join(w.mnt, 'abs'), path.join(w.mnt, 'inside.txt')])}) {
      try { out[p] = fs.readFileSync(p, 'utf8'); } catch (e) { out[p] = e.code; }
    }
    console.log(JSON.stringify(out));`;
  const argv = [
    ...inPrivateNamespace(`mount -t tmpfs cover ${w.outside}`, w.mnt),
    process.execPath,
    '-e',
    script,
  ];
  const r = await run(argv[0]!, argv.slice(1));
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, string>;
  t.is(out[path.join(w.mnt, 'abs')], 'ENOENT');
  t.is(out[path.join(w.mnt, 'inside.txt')], 'inside\n', 'the mount itself works in that namespace');
  t.is(readFileSync(path.join(w.outside, 'secret'), 'utf8'), 'SECRET outside the source\n');
});

test('`..` at the mount root is the parent of the mount point, never the parent of the source', async (t) => {
  const w = await world(t);
  await fsp.writeFile(path.join(w.root, 'next-to-source'), 'x');
  await fsp.writeFile(path.join(w.root, 'deep', 'next-to-mountpoint'), 'y');

  // Built by hand: path.join would fold the "..".
  const up = `${w.mnt}/..`;
  t.deepEqual((await fsp.readdir(up)).sort(), ['mnt', 'next-to-mountpoint']);
  t.is(await fsp.readFile(`${up}/next-to-mountpoint`, 'utf8'), 'y');
  await t.throwsAsync(fsp.stat(`${up}/next-to-source`), { code: 'ENOENT' });
  await t.throwsAsync(fsp.stat(`${up}/outside/secret`), { code: 'ENOENT' });
  t.is(await fsp.readFile(`${w.mnt}/sub/../../next-to-mountpoint`, 'utf8'), 'y');
  t.is(await fsp.readFile(`${w.mnt}/sub/../inside.txt`, 'utf8'), 'inside\n');
  t.is((await fsp.stat(`${w.mnt}/../..`)).ino, (await fsp.stat(w.root)).ino);

  // The root lists exactly the source, nothing of its parent.
  t.deepEqual((await fsp.readdir(w.mnt)).sort(), (await fsp.readdir(w.src)).sort());
  // And a process whose cwd is the mount root climbs into the caller's tree.
  const r = await run('sh', ['-c', 'ls -a .. && ls -a ../..'], { cwd: w.mnt });
  t.is(r.code, 0, r.stderr);
  t.deepEqual(
    r.stdout.trim().split('\n').sort(),
    [
      '.',
      '.',
      '..',
      '..',
      'deep',
      'mnt',
      'next-to-mountpoint',
      'next-to-source',
      'outside',
      'src',
    ].sort(),
  );
});

/** Races O_CREAT through the mount against a host process flipping the name to a symlink. */
async function creatRace(
  t: ExecutionContext,
  w: World,
  target: string,
  creatorWrap: string[],
): Promise<Record<string, number>> {
  const iterations = 3000;
  const flipper = spawnChild(
    t,
    nodeArgv(
      'test/helpers/child-load.ts',
      JSON.stringify({
        mode: 'flip-symlink',
        path: path.join(w.src, 'victim'),
        target,
        iterations: iterations * 2,
      }),
    ),
  );
  const creator = spawnChild(t, [
    ...creatorWrap,
    ...nodeArgv(
      'test/helpers/child-load.ts',
      JSON.stringify({ mode: 'creat-race', path: path.join(w.mnt, 'victim'), iterations }),
    ),
  ]);
  const [c, f] = await Promise.all([
    creator.message((m) => m.done === true, 120_000),
    flipper.message((m) => m.done === true, 120_000),
  ]);
  t.log('creator', c.counts, 'flipper', f.counts);
  return c.counts as Record<string, number>;
}

test('O_CREAT on a name raced into a relative symlink to outside never creates outside', async (t) => {
  const w = await world(t, { entryTimeout: 0, attrTimeout: 0 });
  // src/victim -> ../outside/x: from the daemon's side that is <root>/outside/x (its directory
  // exists); from the caller's side it is <root>/deep/outside/x, whose directory does not exist.
  const before = await snapshot(w.outside);
  const counts = await creatRace(t, w, '../outside/x', []);
  t.true((counts['creat:ok'] ?? 0) > 0, 'some creates happened inside');
  t.deepEqual(await snapshot(w.outside), before, 'nothing was created outside');
  const leftovers = (await fsp.readdir(path.join(w.root, 'deep'))).sort();
  t.deepEqual(leftovers, ['mnt']);
});

test('O_CREAT on a name raced into an absolute symlink to outside never creates outside', async (t) => {
  const w = await world(t, { entryTimeout: 0, attrTimeout: 0 });
  const before = await snapshot(w.outside);
  // The creator runs in a mount namespace where the outside directory is a read-only tmpfs: when
  // the *kernel* follows the link for it, the create fails (EROFS) there; only the daemon, which
  // lives in the original namespace, could create the real <root>/outside/x.
  const wrap = inPrivateNamespace(`mount -t tmpfs -o ro cover ${w.outside}`, w.mnt);
  const counts = await creatRace(t, w, path.join(w.outside, 'x'), wrap);
  t.true((counts['creat:ok'] ?? 0) > 0, 'some creates happened inside');
  t.deepEqual(await snapshot(w.outside), before, 'nothing was created outside');
});

test('a directory moved out of the source: work inside it through the mount stops touching it', async (t) => {
  const w = await world(t);
  const work = path.join(w.src, 'work');
  await fsp.mkdir(work);
  await fsp.writeFile(path.join(work, 'pre'), 'before the move');
  await fsp.writeFile(path.join(w.outside, 'keep'), 'outside content');
  const flag = path.join(w.root, 'moved');
  const stop = path.join(w.root, 'stop');

  const worker: JsonChild = spawnChild(
    t,
    nodeArgv(
      'test/helpers/child-load.ts',
      JSON.stringify({ mode: 'work-in-cwd', flag, stop, max: 100_000 }),
    ),
    { cwd: path.join(w.mnt, 'work') },
  );
  t.teardown(() => fsp.writeFile(stop, '').catch(() => undefined));
  const iterations = (): Record<string, unknown>[] => {
    if (!worker.running && !worker.messages.some((m) => m.done))
      throw new Error(`worker died: ${worker.stderr}`);
    return worker.messages.filter((m) => typeof m.i === 'number');
  };
  await waitFor('20 iterations before the move', () => iterations().length >= 20, 60_000);
  for (const it of iterations()) {
    t.is(it.create, 'ok');
    t.true(Array.isArray(it.list));
    t.deepEqual(it.statLate, { error: 'ENOENT' });
  }

  // The host moves the directory out of the source, next to the sentinel.
  await fsp.rename(work, path.join(w.outside, 'work'));
  await fsp.writeFile(path.join(w.outside, 'work', 'late'), 'made outside after the move');
  await fsp.writeFile(flag, '');
  const after = (): Record<string, unknown>[] => iterations().filter((m) => m.after === true);
  // Sequential worker: once an iteration that began after the move has reported, no operation
  // from before the move is still in flight.
  await waitFor('an iteration after the move', () => after().length >= 1, 60_000);
  const settled = await snapshot(w.outside);
  t.is(settled['work/pre'], Buffer.from('before the move').toString('base64'));
  t.is(settled.keep, Buffer.from('outside content').toString('base64'));

  await waitFor('300 iterations after the move', () => after().length >= 300, 90_000);
  await fsp.writeFile(stop, '');
  await within('worker exit', worker.exited);

  t.deepEqual(
    await snapshot(w.outside),
    settled,
    'nothing was created in the moved directory after the move',
  );
  const outsideNames = new Set([
    'keep',
    'secret',
    'work',
    ...Object.keys(settled)
      .filter((k) => k.startsWith('work/'))
      .map((k) => k.slice(5)),
  ]);
  for (const it of after()) {
    t.deepEqual(it.create, { error: 'ENOENT' });
    t.deepEqual(it.mkdir, { error: 'ENOENT' });
    t.deepEqual(it.list, { error: 'ENOENT' }, 'listing the moved directory fails');
    t.deepEqual(it.statLate, { error: 'ENOENT' }, 'a name made outside is not looked up');
    // ".." of the cwd is the mount root: it lists the source, never the outside directory.
    const parent = it.listParent as string[];
    t.true(Array.isArray(parent), JSON.stringify(it.listParent));
    for (const n of parent) t.false(outsideNames.has(n) && n !== 'work', `".." listed ${n}`);
    t.false(parent.includes('keep'));
    t.is(it.statParent, 'dir');
  }
  // The mount still mirrors the source, once the root's cached listing has expired (a change
  // behind the mount shows within the 1 s attribute timeout; this mount has no watcher).
  const srcNames = (await fsp.readdir(w.src)).sort();
  await waitFor(
    'the listing to follow the source',
    async () => JSON.stringify((await fsp.readdir(w.mnt)).sort()) === JSON.stringify(srcNames),
    10_000,
  );
  t.false((await fsp.readdir(w.mnt)).includes('work'));
});
