// Observability of a mount: stats() (operation counts, errors by errno, latency histograms, bytes
// by data path, inodes and their memory), the Prometheus/OpenMetrics rendering, and the opt-in
// event stream (fields, filters, sampling, and what happens when nobody reads it).
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type FsEvent, type Mount, type MountOptions, type MountStats } from '../lib';
import { renderMetrics } from '../lib/metrics';
import { mountFixture, tmpdir } from './helpers/fixture';
import { parseExposition, sampleValue } from './helpers/obs-prom';
import { bucketSum, count, dropCaches, errnoCount, eventually, sleep } from './helpers/obs-util';
import { nodeArgv, pattern, spawnChild } from './helpers/proc-util';

const MiB = 1 << 20;

/** Every request recorded once: the transport counters and the per-operation counts agree. */
function requestsAgree(s: MountStats): boolean {
  const ops = Object.values(s.ops).reduce((a, c) => a + c.count, 0);
  return ops === s.requests.ioUring + s.requests.dev;
}

/** stats() once the kernel's asynchronous requests (release, forget) have been answered. */
async function settled(m: Mount): Promise<MountStats> {
  return eventually(() => m.stats(), requestsAgree);
}

test('stats(): operation counts follow the operations done, errors are counted by errno', async (t) => {
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'off' }, async (s) => {
    fs.mkdirSync(path.join(s, 'full'));
    fs.writeFileSync(path.join(s, 'full', 'x'), 'x');
  });
  const s0 = await settled(m);
  const N = 40;
  for (let i = 0; i < N; i++) fs.writeFileSync(path.join(mnt, `f${i}`), `file ${i}`);
  for (let i = 0; i < N; i++) fs.mkdirSync(path.join(mnt, `d${i}`));
  for (let i = 0; i < N; i++) fs.renameSync(path.join(mnt, `f${i}`), path.join(mnt, `g${i}`));
  for (let i = 0; i < N; i++) fs.unlinkSync(path.join(mnt, `g${i}`));
  for (let i = 0; i < N; i++) fs.rmdirSync(path.join(mnt, `d${i}`));
  // Failures the kernel cannot answer itself: names it has never seen, a non-empty directory.
  for (let i = 0; i < N; i++)
    t.throws(() => fs.statSync(path.join(mnt, `missing${i}`)), { code: 'ENOENT' });
  t.throws(() => fs.rmdirSync(path.join(mnt, 'full')), { code: 'ENOTEMPTY' });
  const s1 = await settled(m);

  const delta = (op: string): number => count(s1, op) - count(s0, op);
  for (const op of ['create', 'mkdir', 'rename', 'unlink']) t.is(delta(op), N, op);
  t.is(delta('rmdir'), N + 1, 'rmdir (one failed)');
  t.true(errnoCount(s1, 'lookup', 'ENOENT') - errnoCount(s0, 'lookup', 'ENOENT') >= N);
  t.is(errnoCount(s1, 'rmdir', 'ENOTEMPTY'), 1);
  t.is(s1.ops.rmdir!.errors, 1);
  t.is(s1.ops.create!.errors, 0);
  // The source got exactly what the operations did.
  t.deepEqual(fs.readdirSync(src).sort(), ['full']);

  for (const [op, c] of Object.entries(s1.ops)) {
    t.is(c.latencyLog2Ns.length, 32, `${op}: 32 log2 buckets`);
    t.is(bucketSum(s1, op), c.count, `${op}: the histogram holds every request`);
    t.is(
      Object.values(c.errnos).reduce((a, b) => a + b, 0),
      c.errors,
      `${op}: errors by errno add up`,
    );
    t.true(c.totalNs > 0, `${op}: time is measured`);
    t.true(c.count > 0, `${op}: only operations seen are listed`);
    for (const name of Object.keys(c.errnos)) t.regex(name, /^E[A-Z0-9]+$/);
  }
  t.true(requestsAgree(s1));
  t.is(s1.requests[s1.transport === 'io_uring' ? 'ioUring' : 'dev'] > 0, true);
});

test('stats(): bytes the daemon moves with passthrough off', async (t) => {
  const data = pattern(2 * MiB, 7);
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'off' }, async (s) => {
    fs.writeFileSync(path.join(s, 'in.bin'), data);
  });
  t.false(m.passthrough);
  const s0 = m.stats();
  // Read once (the daemon serves it), written once (the daemon writes it).
  t.true(fs.readFileSync(path.join(mnt, 'in.bin')).equals(data));
  fs.writeFileSync(path.join(mnt, 'out.bin'), data);
  t.true(fs.readFileSync(path.join(src, 'out.bin')).equals(data));
  const s1 = await settled(m);
  t.true(s1.daemonBytes.read - s0.daemonBytes.read >= data.length, 'read by the daemon');
  t.true(s1.daemonBytes.written - s0.daemonBytes.written >= data.length, 'written by the daemon');
  t.false(s1.passthrough.enabled);
  t.is(s1.passthrough.opens, 0);
  t.is(s1.passthrough.backingRegistered, 0);
  t.true(s1.passthrough.cachedOpens > 0);
});

test('stats(): with passthrough on the kernel moves the bytes; backing files come and go', async (t) => {
  const data = pattern(2 * MiB, 11);
  const { src, mnt, m } = await mountFixture(t, { passthrough: 'on' }, async (s) => {
    fs.writeFileSync(path.join(s, 'in.bin'), data);
  });
  t.true(m.passthrough);
  const s0 = m.stats();
  const fd = fs.openSync(path.join(mnt, 'in.bin'), 'r');
  let open = true;
  t.teardown(() => {
    if (open) fs.closeSync(fd);
  });
  const buf = Buffer.alloc(data.length);
  t.is(fs.readSync(fd, buf, 0, buf.length, 0), data.length);
  t.true(buf.equals(data));
  const during = m.stats();
  t.true(during.passthrough.backingActive >= 1, 'a backing file while open');
  fs.closeSync(fd);
  open = false;
  fs.writeFileSync(path.join(mnt, 'out.bin'), data);
  t.true(fs.readFileSync(path.join(src, 'out.bin')).equals(data));
  const s1 = await settled(m);
  t.true(s1.passthrough.enabled);
  t.true(s1.passthrough.opens - s0.passthrough.opens >= 2);
  t.true(s1.passthrough.backingRegistered - s0.passthrough.backingRegistered >= 1);
  // Neither the 2 MiB read nor the 2 MiB write went through the daemon.
  t.true(s1.daemonBytes.read - s0.daemonBytes.read < data.length, 'not read by the daemon');
  t.true(s1.daemonBytes.written - s0.daemonBytes.written < data.length, 'not written by it');
  const s2 = await eventually(
    () => m.stats(),
    (s) => s.passthrough.backingActive === 0,
  );
  t.is(s2.passthrough.backingActive, 0, 'backing files are released after the last close');
});

test('stats(): inodes and their memory grow with lookups and fall when the kernel forgets', async (t) => {
  const N = 300;
  const { mnt, m } = await mountFixture(t, {}, async (s) => {
    fs.mkdirSync(path.join(s, 'many'));
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(s, 'many', `n${i}`), '');
  });
  const s0 = m.stats();
  t.true(s0.inodes >= 1, 'the root');
  // drop_caches from elsewhere on the machine makes the kernel forget them at any moment: look
  // them up again until the count is seen while the kernel holds them all (bounded).
  let s1 = m.stats();
  for (let attempt = 0; attempt < 5 && s1.inodes < N + 1; attempt++) {
    for (let i = 0; i < N; i++) fs.statSync(path.join(mnt, 'many', `n${i}`));
    s1 = m.stats();
  }
  t.true(s1.inodes >= N + 1, `${s1.inodes} inodes after ${N} lookups`);
  t.true(s1.inodeMemory > s0.inodeMemory);
  t.true(s1.inodeMemory / s1.inodes > 0, 'memory per inode');
  // Nothing holds them: dropping the kernel's caches makes it send FORGETs.
  const s2 = await eventually(
    () => {
      dropCaches();
      return m.stats();
    },
    (s) => s.inodes < N / 10,
    20_000,
    200,
  );
  t.true(s2.inodes < N / 10, `${s2.inodes} inodes left after drop_caches`);
  t.true(s2.inodeMemory < s1.inodeMemory);
  t.true(count(s2, 'forget') > count(s1, 'forget'), 'forgets were counted');
});

const uringOn = ['Y', '1'].includes(
  fs.readFileSync('/sys/module/fuse/parameters/enable_uring', 'utf8').trim(),
);

test('io_uring: the forgets of unlinked files arrive in batches, and every one is answered', async (t) => {
  if (!uringOn) return t.pass('FUSE-over-io_uring is off on this machine');
  const N = 400;
  const { mnt, m } = await mountFixture(t, { transport: 'io_uring' }, async (s) => {
    fs.mkdirSync(path.join(s, 'many'));
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(s, 'many', `n${i}`), 'x');
  });
  t.is(m.transport, 'io_uring');
  const s0 = await settled(m);
  for (let i = 0; i < N; i++) fs.statSync(path.join(mnt, 'many', `n${i}`));
  const s1 = await settled(m);
  // An unlinked file's inode is evicted at once, so each unlink makes the kernel queue a FORGET
  // on /dev/fuse (the ring carries everything else). The daemon's reader waits a moment after
  // each forget, so the following ones reach it together as one BATCH_FORGET.
  for (let i = 0; i < N; i++) fs.unlinkSync(path.join(mnt, 'many', `n${i}`));
  const s2 = await eventually(
    () => settled(m),
    (s) => s.inodes <= s0.inodes + 1,
    10_000,
  );
  // Back to the root and what it held before, plus 'many' (caches dropped elsewhere on the
  // machine can only lower these counts).
  t.true(s1.inodes > s0.inodes, `${s0.inodes} -> ${s1.inodes} inodes after ${N} lookups`);
  t.true(s2.inodes <= s0.inodes + 1, `${s1.inodes} -> ${s2.inodes} inodes after ${N} unlinks`);
  const forgets = count(s2, 'forget') - count(s1, 'forget');
  t.log(`${N} inodes forgotten in ${forgets} requests`);
  // Without the pause: 115–390 requests here; with it: 15–20.
  t.true(forgets > 0 && forgets <= N / 4, `${N} inodes forgotten in ${forgets} requests`);
  t.deepEqual(fs.readdirSync(path.join(mnt, 'many')), []);
});

// ---- reading requests from /dev/fuse

for (const passthrough of ['on', 'off'] as const) {
  test(`/dev/fuse: requests are read without a new pipe for each, also without CAP_SYS_RESOURCE (passthrough ${passthrough})`, async (t) => {
    const root = await tmpdir(t);
    const [src, mnt] = [path.join(root, 'src'), path.join(root, 'mnt')];
    fs.mkdirSync(src);
    fs.mkdirSync(mnt);
    // Many containers drop CAP_SYS_RESOURCE; without it no pipe grows past pipe-max-size, and
    // libfuse built a new pipe for every request when its buffer needed a larger one.
    const spec = {
      options: { source: src, mountpoint: mnt, transport: 'dev', passthrough },
      mode: 'hold',
    };
    const child = spawnChild(
      t,
      [
        'setpriv',
        '--inh-caps=-all',
        '--ambient-caps=-all',
        '--bounding-set=-sys_resource',
        ...nodeArgv('test/helpers/child-mount.ts', JSON.stringify(spec)),
      ],
      { mountpoints: [mnt] },
    );
    const msg = await child.message((m) => 'ok' in m);
    t.true(msg.ok, JSON.stringify(msg));
    const pid = child.proc.pid!;
    const status = (): string => fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const capEff = BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(status())![1]}`);
    t.is((capEff >> 24n) & 1n, 0n, 'the daemon runs without CAP_SYS_RESOURCE');
    const log = path.join(root, 'strace.log');
    const tracer = spawn(
      'strace',
      ['-f', '-qq', '-e', 'trace=pipe2', '-o', log, '-p', String(pid)],
      {
        stdio: 'ignore',
      },
    );
    const traced = new Promise((r) => tracer.on('close', r));
    t.teardown(() => tracer.kill('SIGKILL'));
    await eventually(
      () => /TracerPid:\s*(\d+)/.exec(status())![1],
      (v) => v !== '0',
    );
    await sleep(500); // strace attaches to the other threads after the first
    const N = 300;
    for (let i = 0; i < N; i++) t.false(fs.existsSync(path.join(mnt, `missing-${i}`))); // a LOOKUP each
    fs.writeFileSync(path.join(mnt, 'f'), Buffer.alloc(3 * MiB, 7)); // writes, through the daemon with passthrough off
    t.deepEqual(fs.readFileSync(path.join(src, 'f')), Buffer.alloc(3 * MiB, 7));
    tracer.kill('SIGINT');
    await traced;
    const pipes = fs
      .readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.includes('pipe2(')).length;
    t.log(`${pipes} pipes made for ${N} lookups`);
    // One per reading thread at most; before, one per request (over 300).
    t.true(pipes <= 16, `${pipes} pipes made for ${N} lookups`);
    child.send('unmount');
    await child.exited;
  });
}

// ---- metrics text

test('renderMetrics: strict Prometheus and OpenMetrics text, grouped by family, matching stats', async (t) => {
  const a = await mountFixture(t, { passthrough: 'off' });
  const b = await mountFixture(t);
  for (const f of [a, b]) {
    fs.writeFileSync(path.join(f.mnt, 'x'), 'x');
    t.throws(() => fs.statSync(path.join(f.mnt, 'nope')));
  }
  const sa = await settled(a.m);
  const sb = await settled(b.m);
  // A label value that needs every escape.
  const odd = 'odd "mount" \\ with\nnewline';
  const sources = [
    { mountpoint: a.mnt, stats: sa },
    { mountpoint: b.mnt, stats: sb },
    { mountpoint: odd, stats: sb },
  ];
  for (const openMetrics of [false, true]) {
    const text = renderMetrics(sources, { openMetrics });
    const fams = parseExposition(text, openMetrics);
    const total = (n: string): string => (openMetrics ? n.replace(/_total$/, '') : n);
    t.is(fams.get(total('fusekit_requests_total'))?.type, 'counter');
    t.is(fams.get('fusekit_request_duration_seconds')?.type, 'histogram');
    t.is(fams.get('fusekit_inodes')?.type, 'gauge');
    for (const f of fams.values()) {
      // Units in names, by the Prometheus conventions.
      if (/duration|latency|time/.test(f.name)) t.regex(f.name, /_seconds$/);
      if (/bytes/.test(f.name)) t.regex(f.name, /_bytes(_total)?$/);
      t.true(f.help.length > 0);
      for (const s of f.samples) t.true('mountpoint' in s.labels, `${s.name} has a mountpoint`);
      const mps = new Set(f.samples.map((s) => s.labels.mountpoint));
      t.true(mps.has(a.mnt) && mps.has(b.mnt) && mps.has(odd), `${f.name}: every mount`);
    }
    // Values are the stats'.
    for (const [src, s] of [
      [a.mnt, sa],
      [b.mnt, sb],
    ] as const) {
      for (const [op, c] of Object.entries(s.ops)) {
        const l = { mountpoint: src, op };
        t.is(sampleValue(fams, 'fusekit_requests_total', l), c.count);
        t.is(sampleValue(fams, 'fusekit_request_duration_seconds_count', l), c.count);
        t.is(
          sampleValue(fams, 'fusekit_request_duration_seconds_bucket', { ...l, le: '+Inf' }),
          c.count,
        );
        t.is(sampleValue(fams, 'fusekit_request_duration_seconds_sum', l), c.totalNs / 1e9);
        for (const [errno, n] of Object.entries(c.errnos))
          t.is(sampleValue(fams, 'fusekit_request_errors_total', { ...l, errno }), n);
      }
      t.is(sampleValue(fams, 'fusekit_inodes', { mountpoint: src }), s.inodes);
      t.is(
        sampleValue(fams, 'fusekit_daemon_read_bytes_total', { mountpoint: src }),
        s.daemonBytes.read,
      );
      t.is(
        sampleValue(fams, 'fusekit_cache_invalidations_total', { mountpoint: src }),
        s.cache.invalidations,
      );
    }
    t.is(
      sampleValue(fams, 'fusekit_request_errors_total', {
        mountpoint: odd,
        op: 'lookup',
        errno: 'ENOENT',
      }),
      sb.ops.lookup!.errnos.ENOENT,
    );
  }
  // The parser is strict enough to catch what it checks for.
  const good = renderMetrics(sources);
  const broken = [
    good.replace('# TYPE fusekit_inodes gauge\n', ''),
    good + 'fusekit_requests_total{op="x",mountpoint="y"} 1\n',
    good.replace(/_bucket\{([^}]*)le="\+Inf"\} \d+/, '_bucket{$1le="+Inf"} 99999999'),
    good.replace('fusekit_inodes{', 'fusekit-inodes{'),
    good + '# EOF\n',
  ];
  for (const text of broken) t.throws(() => parseExposition(text, false));
});

// ---- events

async function eventMount(
  t: ExecutionContext,
  options: Partial<MountOptions> = {},
): Promise<{ root: string; src: string; mnt: string; m: Mount; events: FsEvent[] }> {
  const f = await mountFixture(t, options, async (s) => {
    for (const n of ['f', 'c']) fs.writeFileSync(path.join(s, n), 'hello');
  });
  const events: FsEvent[] = [];
  f.m.on('trace', (e: FsEvent) => events.push(e));
  return { ...f, events };
}

test('events are opt-in and carry op, path, caller, result and latency', async (t) => {
  const { root, mnt, m, events } = await eventMount(t, { allowOther: true });
  fs.chmodSync(root, 0o755); // a caller of another uid must reach the mount
  const start = Date.now();
  fs.readFileSync(path.join(mnt, 'f'));
  t.throws(() => fs.statSync(path.join(mnt, 'nope')));
  await sleep(200); // batches are handed over every few milliseconds
  t.deepEqual(events, [], 'nothing without trace()');
  t.is(m.stats().events.recorded, 0);

  m.trace();
  // Another process, another uid and gid (cat is single-threaded: its pid is its thread's).
  const r = spawnSync('/bin/cat', [path.join(mnt, 'c'), path.join(mnt, 'nope2')], {
    uid: 4321,
    gid: 8765,
  });
  t.is(r.stdout.toString(), 'hello');
  fs.renameSync(path.join(mnt, 'f'), path.join(mnt, 'g'));
  await eventually(
    () => events.length,
    () => events.some((e) => e.op === 'rename'),
  );
  const find = (op: string, p: string): FsEvent | undefined =>
    events.find((e) => e.op === op && e.path === p);
  const caller = { kind: 'trace', uid: 4321, gid: 8765, pid: r.pid, denied: false };
  t.like(find('lookup', '/c'), { ...caller, result: 0 });
  t.like(find('open', '/c'), { ...caller, result: 0 });
  t.like(find('lookup', '/nope2'), { ...caller, result: 'ENOENT' });
  t.like(find('rename', '/f'), { path2: '/g', uid: 0, gid: 0, pid: process.pid, result: 0 });
  for (const e of events) {
    t.true(e.latencyNs > 0, `${e.op} has a latency`);
    // Wall-clock milliseconds (a sanity check of the unit, not of speed).
    t.true(e.time > start - 60_000 && e.time < Date.now() + 60_000, `${e.op} time ${e.time}`);
  }
  t.is(m.stats().events.recorded, events.length);
  t.is(m.stats().events.dropped, 0);

  m.trace(false);
  const n = events.length;
  t.throws(() => fs.statSync(path.join(mnt, 'nope3')));
  await sleep(200);
  t.is(events.length, n, 'nothing after trace(false)');
});

test('event filters: operations, errors only, and 1-in-N sampling', async (t) => {
  const { mnt, m, events } = await eventMount(t);
  m.trace({ ops: ['mkdir'] });
  for (let i = 0; i < 30; i++) {
    fs.mkdirSync(path.join(mnt, `d${i}`));
    fs.readFileSync(path.join(mnt, 'f'));
    t.throws(() => fs.statSync(path.join(mnt, `missing${i}`)));
  }
  await eventually(
    () => events.length,
    (n) => n >= 30,
  );
  await sleep(100);
  t.deepEqual(
    events.map((e) => `${e.op} ${e.path}`).sort(),
    Array.from({ length: 30 }, (_, i) => `mkdir /d${i}`).sort(),
  );

  events.length = 0;
  m.trace({ errorsOnly: true });
  for (let i = 0; i < 20; i++) {
    fs.readFileSync(path.join(mnt, 'f'));
    t.throws(() => fs.statSync(path.join(mnt, `gone${i}`)));
  }
  await eventually(
    () => events.length,
    (n) => n >= 20,
  );
  await sleep(100);
  t.true(
    events.every((e) => e.result !== 0),
    'only failures',
  );
  t.is(events.filter((e) => e.op === 'lookup' && e.result === 'ENOENT').length, 20);

  // Sampling counts matching operations: any 100 in a row hold exactly 10 multiples of 10.
  events.length = 0;
  m.trace({ ops: ['mkdir'], sample: 10 });
  for (let i = 0; i < 100; i++) fs.mkdirSync(path.join(mnt, `s${i}`));
  await eventually(
    () => events.length,
    (n) => n >= 10,
  );
  await sleep(200);
  t.is(events.length, 10);
  t.true(events.every((e) => e.op === 'mkdir'));
  t.throws(() => m.trace({ sample: 0 }), { code: 'EINVAL' });
});

test('a consumer that does not keep up loses events, counted, while the filesystem keeps working', async (t) => {
  const { mnt, m, events } = await eventMount(t);
  const batches: number[] = [];
  const deliver = m.deliver.bind(m);
  m.deliver = (b: FsEvent[]): void => {
    batches.push(b.length);
    deliver(b);
  };
  m.trace({ ops: ['lookup'] });
  const l0 = count(m.stats(), 'lookup');
  // Another process makes the requests while this one's JavaScript is blocked in spawnSync, so
  // it takes no events at all. At least 100k lookups, and for at least 3 s: the native side hands
  // over a batch every ~20 ms and keeps at most 64 of them waiting, so the rest must be dropped.
  const script = `
    const fs = require('fs');
    let n = 0;
    const t0 = Date.now();
    while (n < 100000 || Date.now() - t0 < 3000) {
      try { fs.statSync(process.argv[1] + '/missing' + (n % 1000)); } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
      n++;
    }
    console.log(JSON.stringify({ n }));`;
  const r = spawnSync(process.execPath, ['-e', script, mnt], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  t.is(r.status, 0, r.stderr);
  const { n } = JSON.parse(r.stdout) as { n: number };
  t.true(n >= 100_000, `${n} lookups done`);
  const s = m.stats();
  t.true(count(s, 'lookup') - l0 >= n, 'every lookup was served');
  t.true(s.events.dropped > 0, 'events were dropped');
  t.true(s.events.recorded > 0);
  // Nothing is lost uncounted: every traced lookup was delivered or counted as dropped.
  const accounted = await eventually(
    () => {
      const st = m.stats();
      return [events.length + st.events.dropped, count(st, 'lookup') - l0];
    },
    ([a, b]) => a === b,
  );
  t.is(accounted[0], accounted[1]);
  t.is(
    batches.reduce((a, b) => a + b, 0),
    events.length,
  );
  t.true(Math.max(...batches) > 1, 'events come in batches');
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'hello', 'the mount still answers');
});

test('events(): an iterator that is never read drops beyond its buffer and counts it', async (t) => {
  const { mnt, m } = await eventMount(t);
  const it = m.events({ kinds: ['trace'], bufferSize: 10 });
  t.teardown(() => void it.return?.());
  m.trace({ ops: ['lookup'] });
  for (let i = 0; i < 50; i++) t.throws(() => fs.statSync(path.join(mnt, `x${i}`)));
  const dropped = await eventually(
    () => it.dropped,
    (d) => d >= 40,
  );
  t.is(dropped, 40);
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'hello');
  const first = await it.next();
  t.like(first.value, { op: 'lookup', path: '/x0', result: 'ENOENT' });
  t.is(m.stats().events.dropped, 0, 'the mount delivered them all; the iterator dropped them');
});
