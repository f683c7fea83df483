// Coherent caching: with a watcher, changes made to the source (or an overlay's layers) behind the
// mount's back show through the mount although the kernel may cache for an hour; without one they
// stay stale until invalidate(). Queue overflows invalidate everything, and changes made through
// the mount itself do not come back as invalidations. Every wait polls with a generous bound.
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type Mount, type MountOptions, type MountStats, mount } from '../lib';
import { controlRequest } from '../lib/control';
import { normalizeOptions } from '../lib/options';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import {
  count,
  errnoCount,
  eventually,
  privateFs,
  same,
  sleep,
  view,
  views,
  whiteout,
} from './helpers/obs-util';
import { isMounted, nodeArgv, spawnChild, waitFor, within } from './helpers/proc-util';

const HOUR = 3600;
const longCache = (watch: 'fanotify' | 'inotify' | false): MountOptions['cache'] => ({
  watch,
  entryTimeout: HOUR,
  attrTimeout: HOUR,
  negativeTimeout: HOUR,
});

interface Dirs {
  root: string;
  src: string;
  mnt: string;
}

async function dirs(t: ExecutionContext, onTmpfs = false): Promise<Dirs> {
  const root = await tmpdir(t, 'fusekit-cache-');
  if (onTmpfs) privateFs(t, root);
  const d = { root, src: path.join(root, 'src'), mnt: path.join(root, 'mnt') };
  fs.mkdirSync(d.src);
  fs.mkdirSync(d.mnt);
  return d;
}

async function mountIn(t: ExecutionContext, options: MountOptions): Promise<Mount> {
  const m = await mount(options);
  unmountInTeardown(t, m);
  return m;
}

// ---- passthrough: one change of every kind, made directly in the source

const NAMES = ['', 'same', 'grow', 'trunc', 'mode', 'del', 'ren', 'ren2', 'new', 'rmd', 'newd'];
const ALL = [...NAMES, 'dir', 'dir/one', 'dir/two'];
// Each of these looks different after change() (dir/one is the unchanged control).
const CHANGED = ALL.filter((n) => n !== 'dir/one');

function prepare(src: string): void {
  const p = (n: string): string => path.join(src, n);
  fs.writeFileSync(p('same'), 'aaaa');
  fs.writeFileSync(p('grow'), 'aaaa');
  fs.writeFileSync(p('trunc'), 'aaaaaaaa');
  fs.writeFileSync(p('mode'), 'm');
  fs.chmodSync(p('mode'), 0o644);
  fs.writeFileSync(p('del'), 'del');
  fs.writeFileSync(p('ren'), 'ren');
  fs.mkdirSync(p('rmd'));
  fs.mkdirSync(p('dir'));
  fs.writeFileSync(p('dir/one'), '1');
}

function change(src: string): void {
  const p = (n: string): string => path.join(src, n);
  fs.writeFileSync(p('same'), 'bbbb'); // same size: only the data differs
  fs.appendFileSync(p('grow'), 'cc');
  fs.truncateSync(p('trunc'), 2);
  fs.chmodSync(p('mode'), 0o600);
  fs.unlinkSync(p('del'));
  fs.renameSync(p('ren'), p('ren2'));
  fs.writeFileSync(p('new'), 'new'); // its absence is cached (negative entry)
  fs.rmdirSync(p('rmd'));
  fs.mkdirSync(p('newd'));
  fs.writeFileSync(p('dir/two'), '2'); // a cached listing grows
}

/** Looks at everything through the mount (twice: the second look is served from the cache). */
function cacheAll(t: ExecutionContext, d: Dirs): Record<string, string> {
  views(d.mnt, ALL);
  const seen = views(d.mnt, ALL);
  t.deepEqual(seen, views(d.src, ALL), 'the mount shows the source before the changes');
  return seen;
}

for (const watch of ['fanotify', 'inotify'] as const) {
  for (const passthrough of ['auto', 'off'] as const) {
    test(`watch ${watch}, passthrough ${passthrough}: source changes show through an hour-long cache`, async (t) => {
      // The source is on the machine's shared disk filesystem (its file handles are decoded
      // differently from tmpfs's), which other processes may flood: an overflow there
      // invalidates everything and would hide whether each change was turned into its own
      // invalidation, so such an attempt is repeated.
      for (let attempt = 1; attempt <= 3; attempt++) {
        const d = await dirs(t);
        prepare(d.src);
        const m = await mountIn(t, {
          source: d.src,
          mountpoint: d.mnt,
          passthrough,
          cache: longCache(watch),
        });
        t.is(m.stats().cache.watch, watch, 'stats report the backend in use');
        const before = cacheAll(t, d);
        change(d.src);
        const truth = views(d.src, ALL);
        for (const n of CHANGED) t.not(truth[n], before[n], `${n} really changed`);
        const seen = await eventually(
          () => views(d.mnt, ALL),
          (v) => same(v, truth),
        );
        t.deepEqual(seen, truth);
        const s = m.stats();
        t.true(s.cache.invalidations > 0, 'invalidations were sent and counted');
        if (s.cache.overflows === 0) return;
        t.log(
          `attempt ${attempt}: the watcher's queue overflowed (a flood from elsewhere); retrying`,
        );
        await m.unmount();
      }
      t.fail('the queue overflowed on every attempt');
    });
  }
}

test('watch: true picks fanotify as root; without watch stats say off', async (t) => {
  const a = await dirs(t);
  const m1 = await mountIn(t, { source: a.src, mountpoint: a.mnt, watch: true });
  t.is(m1.stats().cache.watch, 'fanotify');
  const b = await dirs(t);
  const m2 = await mountIn(t, { source: b.src, mountpoint: b.mnt });
  t.is(m2.stats().cache.watch, 'off');
  t.is(m2.stats().cache.invalidations, 0);
});

test('default timeouts: names and attributes 1 s and no negative entries without a watcher, an hour with one', (t) => {
  const base = { source: '/s', mountpoint: '/m' };
  const pick = (o: MountOptions): [number, number, number, string] => {
    const n = normalizeOptions(o);
    return [n.entryTimeout, n.attrTimeout, n.negativeTimeout, n.watch];
  };
  t.deepEqual(pick(base), [1, 1, 0, 'off']);
  t.deepEqual(pick({ ...base, watch: false }), [1, 1, 0, 'off']);
  t.deepEqual(pick({ ...base, watch: true }), [HOUR, HOUR, HOUR, 'auto']);
  t.deepEqual(pick({ ...base, cache: { watch: 'inotify' } }), [HOUR, HOUR, HOUR, 'inotify']);
  t.deepEqual(pick({ ...base, cache: { watch: 'fanotify' } }), [HOUR, HOUR, HOUR, 'fanotify']);
  // cache.watch wins over the shorthand; explicit timeouts win over the defaults.
  t.deepEqual(pick({ ...base, watch: true, cache: { watch: false } }), [1, 1, 0, 'off']);
  t.deepEqual(pick({ ...base, watch: true, cache: { attrTimeout: 5 } }), [HOUR, 5, HOUR, 'auto']);
  t.deepEqual(pick({ ...base, watch: true, entryTimeout: 2 }), [2, HOUR, HOUR, 'auto']);
  t.deepEqual(pick({ ...base, negativeTimeout: 7 }), [1, 1, 7, 'off']);
});

// Requests the kernel makes only when something it cached is gone.
const REFILL_OPS = ['lookup', 'getattr', 'read', 'readdir', 'readdirplus'];
const refills = (m: Mount): number[] => REFILL_OPS.map((op) => count(m.stats(), op));

/**
 * Runs a staleness check up to five times: drop_caches (run by other tests and benchmarks on this
 * machine) empties the kernel's caches, which makes stale data look fresh. Such an attempt shows
 * as requests refilling the cache and is retried; a stale check that fails without them is a
 * real failure, and so is a cache refilled on every attempt.
 */
async function withoutInterference(
  t: ExecutionContext,
  attempt: () => Promise<string | undefined>,
): Promise<void> {
  // Bounded by time, not by a count: in the full suite another file may keep the filesystem busy
  // for minutes (a million-file tree overflowing the fanotify queue, which rightly invalidates
  // everything; drop_caches), and a quiet window then comes only when it is done.
  t.timeout(6 * 60_000);
  const end = Date.now() + 4 * 60_000;
  for (let i = 1; ; i++) {
    const refilled = await attempt();
    if (refilled === undefined) return;
    t.log(`attempt ${i}: the kernel refilled its caches (${refilled}); retrying`);
    if (i >= 5 && Date.now() > end) break;
    await sleep(i < 5 ? 0 : 5000);
  }
  t.fail('the kernel kept refilling its caches (drop_caches from outside, or nothing cached)');
}

/** undefined, or which requests refilled the cache since `before`. */
function refilledSince(m: Mount, before: number[]): string | undefined {
  const now = refills(m);
  const d = REFILL_OPS.filter((_, i) => now[i] !== before[i]);
  return d.length ? d.map((op, i) => `${op} +${now[i]! - before[i]!}`).join(', ') : undefined;
}

test('without a watcher an hour-long cache stays stale until invalidate(path) / invalidate()', async (t) => {
  await withoutInterference(t, async () => {
    const d = await dirs(t);
    prepare(d.src);
    // passthrough off: file data is in the page cache, not read from the source on every read.
    const m = await mountIn(t, {
      source: d.src,
      mountpoint: d.mnt,
      passthrough: 'off',
      cache: longCache(false),
    });
    const before = cacheAll(t, d);
    const r0 = refills(m);
    change(d.src);
    const truth = views(d.src, ALL);
    await sleep(200); // a watcher would have acted by now (it takes milliseconds)
    const stale = views(d.mnt, ALL);
    const refilled = refilledSince(m, r0);
    if (refilled) return refilled;
    for (const n of CHANGED) t.is(stale[n], before[n], `${n} is still the cached version`);
    t.is(m.stats().cache.invalidations, 0);

    // One path: only that path becomes fresh.
    const sent = await m.invalidate('/mode');
    t.true(sent > 0);
    t.is(m.stats().cache.invalidations, sent, 'the counter adds what invalidate() reports');
    t.is(view(path.join(d.mnt, 'mode')), truth.mode!);
    const r1 = refills(m);
    const other = view(path.join(d.mnt, 'same'));
    const refilled1 = refilledSince(m, r1);
    if (refilled1) return refilled1;
    t.is(other, before.same!, 'other paths stay cached');
    // A name the kernel knows is missing, and a name the source lost.
    await m.invalidate('/new');
    await m.invalidate('/del');
    t.is(view(path.join(d.mnt, 'new')), truth.new!);
    t.is(view(path.join(d.mnt, 'del')), 'ENOENT');
    await m.invalidate('/dir');
    t.is(view(path.join(d.mnt, 'dir')), truth.dir!);
    await t.throwsAsync(m.invalidate('/nonexistent/below'), { code: 'ENOENT' });

    // Everything.
    t.true((await m.invalidate()) > 0);
    t.deepEqual(views(d.mnt, ALL), truth);
    return undefined;
  });
});

test('default timeouts reach the kernel: cached for an hour with watch: true, expired after 1 s without', async (t) => {
  const lookups = (m: Mount): [number, number] => {
    const s = m.stats();
    return [count(s, 'lookup') + count(s, 'getattr'), errnoCount(s, 'lookup', 'ENOENT')];
  };
  const look = (mnt: string): void => {
    fs.statSync(path.join(mnt, 'f'));
    t.throws(() => fs.statSync(path.join(mnt, 'missing')), { code: 'ENOENT' });
  };
  const plain = await dirs(t);
  fs.writeFileSync(path.join(plain.src, 'f'), 'f');
  const mp = await mountIn(t, { source: plain.src, mountpoint: plain.mnt });
  // No negative entries without a watcher: every look at a missing name asks the daemon.
  look(plain.mnt);
  const p0 = lookups(mp);
  look(plain.mnt);
  t.is(lookups(mp)[1] - p0[1], 1, 'a missing name is looked up again at once');
  await sleep(2500); // well past the 1 s timeouts (a loaded machine only makes it longer)
  const p1 = lookups(mp);
  look(plain.mnt);
  const p2 = lookups(mp);
  t.true(p2[0] - p1[0] > p2[1] - p1[1], 'the existing name was asked for again');

  await withoutInterference(t, async () => {
    const d = await dirs(t);
    fs.writeFileSync(path.join(d.src, 'f'), 'f');
    const m = await mountIn(t, { source: d.src, mountpoint: d.mnt, watch: true });
    look(d.mnt);
    look(d.mnt);
    const r0 = refills(m);
    await sleep(2500);
    look(d.mnt);
    // A name, its attributes and a missing name all still cached: nothing was asked.
    return refilledSince(m, r0);
  });
});

// ---- overlay: changes in a lower layer and in the upper, directly

const OV = [
  '',
  'lf',
  'shadow',
  'gone',
  'mv',
  'mv2',
  'ldir',
  'rmd',
  'newd',
  'hidden',
  'mix',
  'uf',
  'udel',
  'unew',
  'deep',
  'deepnew',
  'mix/deep',
];

for (const watch of ['fanotify', 'inotify'] as const) {
  for (const passthrough of ['auto', 'off'] as const) {
    test(`overlay, watch ${watch}, passthrough ${passthrough}: lower and upper changes show through`, async (t) => {
      const root = await tmpdir(t, 'fusekit-cache-ov-');
      const [L, L2, U, W, mnt] = ['lower', 'lower2', 'upper', 'work', 'mnt'].map((n) =>
        path.join(root, n),
      ) as [string, string, string, string, string];
      // The lower layer on a filesystem of its own: the watcher follows two filesystems (tmpfs
      // and the upper's disk filesystem, whose file handles it decodes differently).
      privateFs(t, L, '16m');
      // A second, bottom lower layer: every layer is watched, not only the top one.
      for (const dir of [U, W, mnt, `${L}/ldir`, `${L}/rmd`, `${L}/mix`, `${U}/mix`, `${L2}/mix`])
        fs.mkdirSync(dir, { recursive: true });
      const w = (p: string, data: string): void => fs.writeFileSync(p, data);
      w(`${L}/lf`, 'lower');
      w(`${L}/shadow`, 'lower-shadow');
      w(`${L}/gone`, 'gone');
      w(`${L}/mv`, 'mv');
      w(`${L}/ldir/a`, 'a');
      w(`${L}/hidden`, 'hidden');
      w(`${L}/mix/a`, 'a');
      w(`${U}/mix/b`, 'b');
      w(`${U}/uf`, 'upper-file');
      w(`${U}/udel`, 'udel');
      w(`${L2}/deep`, 'deep');
      const m = await mountIn(t, {
        overlay: { lower: [L, L2], upper: U, work: W },
        mountpoint: mnt,
        passthrough,
        cache: longCache(watch),
      });
      t.is(m.stats().cache.watch, watch);
      views(mnt, OV);
      const before = views(mnt, OV);
      t.is(before.lf, view(`${L}/lf`));
      t.is(before.mix, `dir 755 [a,b]`);

      w(`${L}/lf`, 'LOWER'); // same size
      w(`${U}/shadow`, 'upper-shadow'); // the upper now shadows the lower
      fs.unlinkSync(`${L}/gone`);
      fs.renameSync(`${L}/mv`, `${L}/mv2`);
      w(`${L}/ldir/b`, 'b');
      fs.rmdirSync(`${L}/rmd`);
      fs.mkdirSync(`${L}/newd`);
      whiteout(`${U}/hidden`);
      w(`${L}/mix/c`, 'c');
      w(`${U}/mix/d`, 'd');
      fs.chmodSync(`${U}/uf`, 0o600);
      fs.truncateSync(`${U}/uf`, 5);
      fs.unlinkSync(`${U}/udel`);
      w(`${U}/unew`, 'unew');
      fs.chmodSync(`${L2}/deep`, 0o600);
      w(`${L2}/deep`, 'DEEPER');
      w(`${L2}/deepnew`, 'deepnew');
      w(`${L2}/mix/deep`, 'deep'); // the merged directory gains a name from its bottom layer

      const mode = (p: string): string => (fs.statSync(p).mode & 0o7777).toString(8);
      const expected: Record<string, string> = {
        '': `dir ${mode(U)} [deep,deepnew,ldir,lf,mix,mv2,newd,shadow,uf,unew]`,
        lf: view(`${L}/lf`),
        shadow: view(`${U}/shadow`),
        gone: 'ENOENT',
        mv: 'ENOENT',
        mv2: view(`${L}/mv2`),
        ldir: view(`${L}/ldir`),
        rmd: 'ENOENT',
        newd: view(`${L}/newd`),
        hidden: 'ENOENT',
        mix: `dir ${mode(`${U}/mix`)} [a,b,c,d,deep]`,
        uf: view(`${U}/uf`),
        udel: 'ENOENT',
        unew: view(`${U}/unew`),
        deep: view(`${L2}/deep`),
        deepnew: view(`${L2}/deepnew`),
        'mix/deep': view(`${L2}/mix/deep`),
      };
      for (const n of OV) t.not(expected[n], before[n], `${n} really changed`);
      const seen = await eventually(
        () => views(mnt, OV),
        (v) => same(v, expected),
      );
      t.deepEqual(seen, expected);
    });
  }
}

test('overlay without a watcher: a changed lower layer shows after invalidate()', async (t) => {
  await withoutInterference(t, async () => {
    const root = await tmpdir(t, 'fusekit-cache-ov-');
    const [L, U, W, mnt] = ['lower', 'upper', 'work', 'mnt'].map((n) => path.join(root, n)) as [
      string,
      string,
      string,
      string,
    ];
    for (const dir of [L, U, W, mnt]) fs.mkdirSync(dir);
    fs.writeFileSync(`${L}/lf`, 'lower');
    fs.writeFileSync(`${L}/mode`, 'mode');
    const m = await mountIn(t, {
      overlay: { lower: [L], upper: U, work: W },
      mountpoint: mnt,
      passthrough: 'off',
      cache: longCache(false),
    });
    const names = ['lf', 'mode', 'new'];
    views(mnt, names);
    const before = views(mnt, names);
    const r0 = refills(m);
    fs.writeFileSync(`${L}/lf`, 'LOWER');
    fs.chmodSync(`${L}/mode`, 0o600);
    fs.writeFileSync(`${L}/new`, 'new');
    await sleep(200);
    const stale = views(mnt, names);
    const refilled = refilledSince(m, r0);
    if (refilled) return refilled;
    t.deepEqual(stale, before, 'stale without a watcher');
    t.true((await m.invalidate()) > 0);
    t.deepEqual(views(mnt, names), {
      lf: view(`${L}/lf`),
      mode: view(`${L}/mode`),
      new: view(`${L}/new`),
    });
    return undefined;
  });
});

// ---- overflow: the watcher's queue loses events, so everything is invalidated

for (const watch of ['fanotify', 'inotify'] as const) {
  test(`watch ${watch}: a queue overflow invalidates everything and is counted`, async (t) => {
    // The source on a private tmpfs: flooding the test's filesystem must not overflow other
    // tests' watchers, nor theirs this one.
    const d = await dirs(t, true);
    prepare(d.src);
    fs.mkdirSync(path.join(d.src, 'flood'));
    // The mount lives in a child process that the test stops (SIGSTOP): its watcher cannot read
    // while the flood fills the kernel's queue (16384 events for both backends), so the overflow
    // happens for sure, not only when the watcher is slower than the flood.
    const options: MountOptions = {
      source: d.src,
      mountpoint: d.mnt,
      passthrough: 'off',
      cache: longCache(watch),
    };
    const child = spawnChild(
      t,
      nodeArgv('test/helpers/child-mount.ts', JSON.stringify({ options, mode: 'hold' })),
      {
        mountpoints: [d.mnt],
      },
    );
    await child.message((m) => m.ok === true);
    const stats = async (): Promise<MountStats> =>
      (await controlRequest(d.mnt, { cmd: 'stats' })).stats as MountStats;
    t.is((await stats()).cache.watch, watch);
    const before = cacheAll(t, d);
    views(d.mnt, ['flood']);

    child.kill('SIGSTOP');
    t.teardown(() => child.kill('SIGCONT'));
    const N = 20_000;
    for (let i = 0; i < N; i++) fs.closeSync(fs.openSync(path.join(d.src, 'flood', `f${i}`), 'w'));
    // Made after the queue is full: these events are lost, only the overflow can reveal them.
    change(d.src);
    child.kill('SIGCONT');

    const truth = views(d.src, ALL);
    for (const n of CHANGED) t.not(truth[n], before[n]);
    const seen = await eventually(
      () => views(d.mnt, ALL),
      (v) => same(v, truth),
    );
    t.deepEqual(seen, truth);
    const s = await eventually(stats, (v) => v.cache.overflows > 0);
    t.true(s.cache.overflows >= 1, 'the overflow is counted');
    t.true(s.cache.invalidations > 0);
    t.is(fs.readdirSync(path.join(d.mnt, 'flood')).length, N);

    child.send('unmount');
    await within('child unmount', child.exited);
    await waitFor(`${d.mnt} unmounted`, () => !isMounted(d.mnt), 10_000);
  });
}

// ---- no invalidation storms: the mount's own changes are not echoed back

for (const watch of ['fanotify', 'inotify'] as const) {
  for (const passthrough of ['auto', 'off'] as const) {
    test(`watch ${watch}, passthrough ${passthrough}: changes through the mount send (almost) no invalidations`, async (t) => {
      const d = await dirs(t, true); // private filesystem: nobody else's changes are seen
      const m = await mountIn(t, {
        source: d.src,
        mountpoint: d.mnt,
        passthrough,
        cache: longCache(watch),
      });
      let changes = 0;
      for (let i = 0; i < 300; i++) {
        const p = path.join(d.mnt, `f${i}`);
        fs.writeFileSync(p, 'x'.repeat(100)); // create + write
        fs.appendFileSync(p, 'more');
        fs.chmodSync(p, 0o600);
        fs.renameSync(p, `${p}.r`);
        fs.truncateSync(`${p}.r`, 10);
        fs.mkdirSync(`${p}.d`);
        fs.rmdirSync(`${p}.d`);
        changes += 7;
        if (i % 2) {
          fs.unlinkSync(`${p}.r`);
          changes++;
        }
      }
      // A change behind the mount's back, made after all the others: once it shows, the watcher
      // has read every event the changes above caused (one queue, in order).
      fs.writeFileSync(path.join(d.src, 'sentinel'), 's');
      const seen = await eventually(
        () => view(path.join(d.mnt, 'sentinel')),
        (v) => v !== 'ENOENT',
      );
      t.is(seen, view(path.join(d.src, 'sentinel')));
      await sleep(100); // the batch with the sentinel is counted after it is sent
      const s = m.stats();
      t.is(s.cache.overflows, 0);
      t.log(`${changes} changes through the mount: ${s.cache.invalidations} invalidations`);
      if (watch === 'fanotify') {
        // fanotify names the thread of each change: the daemon's own ones are skipped.
        t.true(s.cache.invalidations <= 20, `${s.cache.invalidations} invalidations`);
      } else {
        // Known limitation: inotify does not say who changed something, so a change made through
        // the mount may come back as one redundant invalidation (harmless, but not free). Batching
        // keeps it at most one per change.
        t.true(s.cache.invalidations <= changes, `${s.cache.invalidations} invalidations`);
      }
      // And the mount still shows the truth.
      t.deepEqual(fs.readdirSync(d.mnt).sort(), fs.readdirSync(d.src).sort());
    });
  }
}
