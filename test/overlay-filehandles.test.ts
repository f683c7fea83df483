// Overlay file-handle mode: merged objects keep kernel file handles and only a bounded cache of
// descriptors (the million-file walk is in filehandles.test.ts, the random sequences against
// kernel overlayfs with maxFds 16 in overlay-diff.test.ts). Here: mode choice and errors, objects
// gone behind the mount while evicted, and copy-up/rename racing readers under a tiny cache.
import test from 'ava';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { FusekitError, type Mount } from '../lib';
import { tmpdir } from './helpers/fixture';
import { fusekitOverlay, mkdirs } from './helpers/overlay-util';

interface Layers {
  root: string;
  lower: string;
  upper: string;
  work: string;
  mnt: string;
}

async function layers(prefix: string): Promise<Layers> {
  // Under /var/tmp: a disk filesystem, with file handles.
  const root = await fsp.mkdtemp(path.join('/var/tmp', prefix));
  const l = {
    root,
    lower: path.join(root, 'lower'),
    upper: path.join(root, 'upper'),
    work: path.join(root, 'work'),
    mnt: path.join(root, 'mnt'),
  };
  mkdirs(l.lower, l.upper, l.work, l.mnt);
  return l;
}

/** Looks up `n` files the test does not care about, so the cache evicts the others. */
function churn(m: string, n: number): void {
  fs.mkdirSync(path.join(m, 'churn'), { recursive: true });
  for (let i = 0; i < n; i++) fs.writeFileSync(path.join(m, 'churn', `c${i}`), 'c');
  for (let i = 0; i < n; i++) fs.statSync(path.join(m, 'churn', `c${i}`));
}

test("fileHandles: 'auto' uses handles on disk layers, 'off' keeps descriptors, maxFds sets the cache", async (t) => {
  const l = await layers('fusekit-ovfh-mode-');
  t.teardown(() => fsp.rm(l.root, { recursive: true, force: true }));
  fs.writeFileSync(path.join(l.lower, 'a'), 'a');
  const m = await fusekitOverlay(t, { lower: [l.lower], upper: l.upper, work: l.work, mnt: l.mnt });
  t.is(m.stats().inodeFds.mode, 'handles');
  t.true(m.stats().inodeFds.capacity >= 64);
  await m.unmount();
  const off = await fusekitOverlay(
    t,
    { lower: [l.lower], upper: l.upper, work: l.work, mnt: l.mnt },
    { fileHandles: 'off' },
  );
  t.is(fs.readFileSync(path.join(l.mnt, 'a'), 'utf8'), 'a');
  const st = off.stats().inodeFds;
  t.is(st.mode, 'descriptors');
  t.is(st.reopens, 0);
  await off.unmount();
  const on = await fusekitOverlay(
    t,
    { lower: [l.lower], upper: l.upper, work: l.work, mnt: l.mnt },
    { fileHandles: 'on', maxFds: 32 },
  );
  t.deepEqual([on.stats().inodeFds.mode, on.stats().inodeFds.capacity], ['handles', 32]);
});

test("fileHandles 'on' with a layer without file handles fails clearly; 'auto' falls back", async (t) => {
  // procfs cannot encode file handles (name_to_handle_at: EOPNOTSUPP).
  const dir = await tmpdir(t);
  const lower = path.join(dir, 'lower');
  const mnt = path.join(dir, 'mnt');
  mkdirs(lower, mnt);
  fs.writeFileSync(path.join(lower, 'mine'), 'x');
  const err = await t.throwsAsync(
    fusekitOverlay(t, { lower: [lower, '/proc/sys'], mnt }, { fileHandles: 'on' }),
  );
  t.true(err instanceof FusekitError);
  t.is((err as FusekitError).code, 'EOPNOTSUPP');
  t.regex(err.message, /file-handle mode is not available for layer \/proc\/sys/);
  t.false(
    fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((x) => x.split(' ')[4] === mnt),
    'nothing left mounted',
  );
  const m = await fusekitOverlay(t, { lower: [lower, '/proc/sys'], mnt });
  t.is(m.stats().inodeFds.mode, 'descriptors');
  t.is(fs.readFileSync(path.join(mnt, 'mine'), 'utf8'), 'x');
  t.deepEqual(
    fs.readdirSync(path.join(mnt, 'kernel')).sort(),
    fs.readdirSync('/proc/sys/kernel').sort(),
  );
});

async function tiny(l: Layers, t: Parameters<typeof fusekitOverlay>[0]): Promise<Mount> {
  return fusekitOverlay(
    t,
    { lower: [l.lower], upper: l.upper, work: l.work, mnt: l.mnt },
    { fileHandles: 'on', maxFds: 16, entryTimeout: 0, attrTimeout: 0 },
  );
}

test('maxFds 16: upper objects deleted or replaced behind the mount while evicted are gone', async (t) => {
  const l = await layers('fusekit-ovfh-gone-');
  t.teardown(() => fsp.rm(l.root, { recursive: true, force: true }));
  fs.writeFileSync(path.join(l.lower, 'low'), 'lower data');
  // Names stay cached in the kernel: it asks for the attributes of the inodes it knows, whose
  // descriptors are closed by then, and learns from ESTALE that they are gone.
  const m = await fusekitOverlay(
    t,
    { lower: [l.lower], upper: l.upper, work: l.work, mnt: l.mnt },
    { fileHandles: 'on', maxFds: 16, entryTimeout: 60, attrTimeout: 0 },
  );
  // Upper files, known to the kernel (held open elsewhere: no forget), then evicted.
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(l.mnt, `u${i}`), `upper ${i}`);
  fs.mkdirSync(path.join(l.mnt, 'dir'));
  fs.writeFileSync(path.join(l.mnt, 'dir', 'inner'), 'inner');
  const held = fs.openSync(path.join(l.mnt, 'dir'), 'r');
  t.teardown(() => fs.closeSync(held));
  churn(l.mnt, 100);
  // Behind the mount: delete some, replace others (a new file can take the old inode number).
  for (let i = 0; i < 5; i++) fs.unlinkSync(path.join(l.upper, `u${i}`));
  for (let i = 5; i < 10; i++) {
    fs.unlinkSync(path.join(l.upper, `u${i}`));
    fs.writeFileSync(path.join(l.upper, `u${i}`), `replaced ${i}`);
  }
  churn(l.mnt, 100);
  for (let i = 0; i < 5; i++) {
    t.throws(() => fs.statSync(path.join(l.mnt, `u${i}`)), { code: 'ENOENT' }, `u${i}`);
  }
  for (let i = 5; i < 10; i++) {
    t.is(fs.readFileSync(path.join(l.mnt, `u${i}`), 'utf8'), `replaced ${i}`, `u${i}`);
  }
  t.true(m.stats().inodeFds.reopens > 0, 'evicted descriptors were reopened (or failed to)');
  // The directory moved behind the mount: its handle follows it; the name is gone.
  fs.renameSync(path.join(l.upper, 'dir'), path.join(l.upper, 'dir2'));
  churn(l.mnt, 100);
  await m.invalidate();
  t.throws(() => fs.statSync(path.join(l.mnt, 'dir')), { code: 'ENOENT' });
  t.is(fs.readFileSync(path.join(l.mnt, 'dir2', 'inner'), 'utf8'), 'inner');
  t.is(fs.readFileSync(path.join(l.mnt, 'low'), 'utf8'), 'lower data');
  const s = m.stats().inodeFds;
  t.log(s);
  t.true(s.open <= s.capacity);
});

test('maxFds 16: copy-up and rename race readers of evicted objects; readers never fail, data ends right', async (t) => {
  const l = await layers('fusekit-ovfh-race-');
  t.teardown(() => fsp.rm(l.root, { recursive: true, force: true }));
  const N = 60;
  for (let d = 0; d < 3; d++) {
    fs.mkdirSync(path.join(l.lower, `d${d}`));
    for (let i = 0; i < N; i++)
      fs.writeFileSync(path.join(l.lower, `d${d}`, `f${i}`), `lower ${d}/${i}\n`.repeat(50));
  }
  const m = await tiny(l, t);
  const want = (d: number, i: number): string => `lower ${d}/${i}\n`.repeat(50);
  // Readers (child processes, so they run while the writers work) and writers at once.
  const { spawn } = await import('node:child_process');
  const reader = (d: number): Promise<string> =>
    new Promise((resolve) => {
      const c = spawn('sh', [
        '-c',
        `for r in 1 2 3; do for f in ${l.mnt}/d${d}/f*; do cat "$f" >/dev/null || echo "FAIL $f"; done; done`,
      ]);
      let out = '';
      c.stdout.on('data', (b: Buffer) => (out += b.toString()));
      c.stderr.on('data', (b: Buffer) => (out += b.toString()));
      c.on('close', () => resolve(out));
    });
  const readers = [0, 1, 2, 0, 1, 2].map(reader);
  for (let i = 0; i < N; i++) {
    for (let d = 0; d < 3; d++) {
      const p = path.join(l.mnt, `d${d}`, `f${i}`);
      if (i % 3 === 0) fs.appendFileSync(p, 'more\n');
      else if (i % 3 === 1) fs.chmodSync(p, 0o640);
    }
    if (i % 10 === 0) {
      // A lower directory renamed away and back (a redirect), with readers inside it.
      fs.renameSync(path.join(l.mnt, 'd2'), path.join(l.mnt, 'd2x'));
      fs.renameSync(path.join(l.mnt, 'd2x'), path.join(l.mnt, 'd2'));
    }
  }
  const outs = await Promise.all(readers);
  // Readers may hit a name between two renames of d2 (ENOENT); nothing else may fail.
  for (const o of outs)
    for (const line of o.split('\n').filter(Boolean)) t.regex(line, /d2\/|No such file/, line);
  churn(l.mnt, 50);
  for (let d = 0; d < 3; d++) {
    for (let i = 0; i < N; i++) {
      const p = path.join(l.mnt, `d${d}`, `f${i}`);
      const w = want(d, i) + (i % 3 === 0 ? 'more\n' : '');
      t.is(fs.readFileSync(p, 'utf8'), w, p);
      if (i % 3 === 1) t.is(fs.statSync(p).mode & 0o777, 0o640, p);
      t.is(fs.readFileSync(path.join(l.lower, `d${d}`, `f${i}`), 'utf8'), want(d, i));
    }
  }
  const s = m.stats().inodeFds;
  t.log(s);
  t.true(s.open <= s.capacity);
  t.true(s.reopens > 0);
});
