// The control socket and the CLI views of a live mount made by another process: `fusekit stats`
// (text, JSON, Prometheus), `fusekit top`, `fusekit trace`, the --metrics-port endpoint, and the
// socket's life: where it is, removed at unmount, replacing a stale one, and never removing a
// socket that is not its own.
import test, { type ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

import { type MountStats, mount } from '../lib';
import { type Controllable, controlRequest, controlSocketPath, serveControl } from '../lib/control';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import { parseExposition, sampleValue } from './helpers/obs-prom';
import { eventually, privateFs, sleep } from './helpers/obs-util';
import {
  type ChildResult,
  findProcesses,
  isMounted,
  nodeArgv,
  repoRoot,
  run,
  spawnChild,
  umountLazy,
  waitFor,
  within,
} from './helpers/proc-util';

function cli(args: string[], timeoutMs = 60_000): Promise<ChildResult> {
  return run(process.execPath, ['--import', 'tsx', 'lib/cli.ts', ...args], { timeoutMs });
}

interface Layout {
  root: string;
  src: string;
  mnt: string;
}

async function layout(t: ExecutionContext): Promise<Layout> {
  const root = await tmpdir(t, 'fusekit-ctl-');
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  fs.mkdirSync(src);
  fs.mkdirSync(mnt);
  fs.writeFileSync(path.join(src, 'hello.txt'), 'hello\n');
  fs.mkdirSync(path.join(src, 'secret'));
  // Whatever happened: no daemon and no mount left behind.
  t.teardown(async () => {
    for (const pid of findProcesses('lib/cli.ts', mnt)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await waitFor(`${mnt} unmounted`, () => !isMounted(mnt), 10_000).catch(() => umountLazy(mnt));
  });
  return { root, src, mnt };
}

/** `fusekit mount ... --background`: the mount lives in a daemon, not in this process. */
async function backgroundMount(t: ExecutionContext, l: Layout, ...flags: string[]): Promise<void> {
  const r = await cli(['mount', l.src, l.mnt, '--background', ...flags]);
  t.is(r.code, 0, r.stderr);
  t.true(isMounted(l.mnt));
}

/** `fusekit umount`, then waits for the daemon to go. */
async function cliUnmount(t: ExecutionContext, mnt: string): Promise<void> {
  const r = await cli(['umount', mnt]);
  t.is(r.code, 0, r.stderr);
  await waitFor('the daemon to exit', () => findProcesses('--daemon-child', mnt).length === 0);
}

/** Runs `work` repeatedly until `until` settles (bounded): load for top/trace to observe. */
async function loadUntil<T>(until: Promise<T>, work: () => Promise<void>): Promise<T> {
  let done = false;
  void until.finally(() => (done = true));
  const end = Date.now() + 60_000;
  while (!done && Date.now() < end) {
    await work();
    await sleep(5);
  }
  return until;
}

const missing = (p: string): Promise<void> =>
  fs.promises.stat(p).then(
    () => undefined,
    () => undefined,
  );

test('fusekit stats shows a mount of another process: text, JSON and Prometheus', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l, '--watch', '--passthrough', 'off');
  fs.writeFileSync(path.join(l.mnt, 'new.txt'), 'new');
  for (let i = 0; i < 5; i++) await missing(path.join(l.mnt, `missing${i}`));

  const j = await cli(['stats', l.mnt, '--json']);
  t.is(j.code, 0, j.stderr);
  const s = JSON.parse(j.stdout) as MountStats;
  t.true(s.ops.create!.count >= 1);
  t.true(s.ops.lookup!.errnos.ENOENT! >= 5);
  t.is(s.cache.watch, 'fanotify');
  t.false(s.passthrough.enabled);
  t.true(s.daemonBytes.written >= 3);

  const txt = await cli(['stats', l.mnt]);
  t.is(txt.code, 0, txt.stderr);
  const out = txt.stdout;
  t.regex(
    out,
    new RegExp(
      `^${l.mnt}: transport (io_uring|dev) \\(io_uring \\d+, /dev/fuse \\d+ requests\\)$`,
      'm',
    ),
  );
  t.regex(out, /^passthrough off: 0 opens/m);
  t.regex(out, /^daemon bytes: read \d+, written \d+$/m);
  t.regex(out, /^inodes \d+ \(~\d+ KiB\)/m);
  t.regex(
    out,
    /^cache: watch fanotify, \d+ invalidations, 0 overflows; events: \d+ recorded, 0 dropped$/m,
  );
  t.regex(out, /^op\s+count\s+errors\s+avg\s+p50\s+p99\s+top errno$/m);
  t.regex(out, /^lookup\s+\d+\s+[1-9]\d*\s+\S+\s+\S+\s+\S+\s+ENOENT [1-9]\d*$/m);
  t.regex(out, /^create\s+[1-9]\d*\s+0\s/m);

  const p = await cli(['stats', l.mnt, '--prometheus']);
  t.is(p.code, 0, p.stderr);
  const fams = parseExposition(p.stdout, false);
  t.true(sampleValue(fams, 'fusekit_requests_total', { mountpoint: l.mnt, op: 'create' })! >= 1);

  await cliUnmount(t, l.mnt);
});

test('the control socket is /run/fusekit/<dev>.sock, private, and removed at unmount', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l);
  const dev = fs.statSync(l.mnt).dev;
  const sock = `/run/fusekit/${dev}.sock`;
  t.is(await controlSocketPath(l.mnt), sock);
  const st = fs.lstatSync(sock);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, 0o600);
  t.is(fs.statSync('/run/fusekit').mode & 0o777, 0o700);
  // No temporary names left around.
  t.deepEqual(
    fs.readdirSync('/run/fusekit').filter((n) => n.startsWith(`.${dev}.sock`)),
    [],
  );
  const r = await controlRequest(l.mnt, { cmd: 'stats' });
  t.is(r.mountpoint, l.mnt);
  t.is(r.source, l.src);
  await cliUnmount(t, l.mnt);
  t.false(fs.existsSync(sock), 'removed with the mount');
  const after = await cli(['stats', l.mnt]);
  t.is(after.code, 1);
  t.regex(after.stderr, /is not a fusekit mount with a control socket/);
});

test('fusekit top prints operations per second, latency and errors, for N refreshes', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l);
  let i = 0;
  const r = await loadUntil(
    cli(['top', l.mnt, '--interval', '0.3', '--iterations', '3']),
    async () => {
      await missing(path.join(l.mnt, `nope${i++}`));
      await fs.promises.writeFile(path.join(l.mnt, `f${i % 10}`), 'x');
    },
  );
  t.is(r.code, 0, r.stderr);
  const screens = r.stdout.split(/\n(?=fusekit top )/);
  t.is(screens.length, 3, r.stdout);
  for (const s of screens) {
    t.regex(
      s,
      new RegExp(`^fusekit top ${l.mnt} — \\d+ requests/s over 0.3s \\((io_uring|dev)\\)`),
    );
    t.regex(s, /^op\s+ops\/s\s+errors\/s\s+avg\s+p99$/m);
    t.regex(s, /^lookup\s+[1-9]\d*\s+[1-9][\d.]*\s+\d[\d.]*[mun]?s\s+\d[\d.]*[mun]?s$/m, s);
  }
  await cliUnmount(t, l.mnt);
});

test('fusekit trace prints events as they happen (text and JSON), then stops tracing', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l);
  let i = 0;
  const json = await loadUntil(cli(['trace', l.mnt, '--count', '5', '--json']), async () => {
    await missing(path.join(l.mnt, `j${i++}`));
  });
  t.is(json.code, 0, json.stderr);
  const events = json.stdout
    .trim()
    .split('\n')
    .map((x) => JSON.parse(x) as Record<string, unknown>);
  t.is(events.length, 5);
  for (const e of events) {
    t.like(e, { kind: 'trace', uid: 0, gid: 0, denied: false });
    t.is(typeof e.pid, 'number');
    t.is(typeof e.latencyNs, 'number');
    t.regex(String(e.path), /^\//);
  }
  t.true(events.some((e) => e.op === 'lookup' && e.result === 'ENOENT'));

  const text = await loadUntil(
    cli(['trace', l.mnt, '--count', '3', '--ops', 'lookup']),
    async () => {
      await missing(path.join(l.mnt, `t${i++}`));
    },
  );
  t.is(text.code, 0, text.stderr);
  const lines = text.stdout.trim().split('\n');
  t.is(lines.length, 3);
  for (const line of lines)
    t.regex(line, /^\d\d:\d\d:\d\d\.\d{3} lookup \/t\d+ uid=0 gid=0 pid=\d+ ENOENT \S+$/);

  // The last tracer gone, the mount stops recording.
  const recorded = async (): Promise<number> =>
    ((await controlRequest(l.mnt, { cmd: 'stats' })).stats as MountStats).events.recorded;
  const n = await eventually(recorded, () => true);
  for (let k = 0; k < 20; k++) await missing(path.join(l.mnt, `after${k}`));
  await sleep(100);
  t.is(await recorded(), n);
  await cliUnmount(t, l.mnt);
});

test('fusekit trace shows operations refused by an access rule as AUDIT events', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l, '--rule', 'deny:/secret');
  const r = await loadUntil(cli(['trace', l.mnt, '--count', '1', '--errors']), async () => {
    await fs.promises.readdir(path.join(l.mnt, 'secret')).catch(() => undefined);
  });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^\S+ AUDIT \w+ \/secret uid=0 gid=0 pid=\d+ EACCES \(denied by rule\) \S+\n$/);
  await cliUnmount(t, l.mnt);
});

test('fusekit trace ends cleanly when the mount goes away', async (t) => {
  const l = await layout(t);
  await backgroundMount(t, l);
  const child = spawn(process.execPath, ['--import', 'tsx', 'lib/cli.ts', 'trace', l.mnt], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  // Traced once something shows.
  let i = 0;
  await loadUntil(
    waitFor('a traced event', () => out.includes('lookup'), 60_000),
    () => missing(path.join(l.mnt, `x${i++}`)),
  );
  await cliUnmount(t, l.mnt);
  t.is(await within('trace exit', exited, 30_000), 0, err);
  t.is(err, '');
});

/** `fusekit mount SRC MNT --metrics-port PORT` in the foreground, killed in teardown. */
function metricsMount(
  t: ExecutionContext,
  l: Layout,
  port: number,
): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'lib/cli.ts', 'mount', l.src, l.mnt, '--metrics-port', String(port)],
    { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  return { child, stderr: () => stderr, exited };
}

test('--metrics-port serves the Prometheus and OpenMetrics renderings of the live mount', async (t) => {
  const l = await layout(t);
  const port = await freePort();
  const { child, stderr, exited } = metricsMount(t, l, port);
  await waitFor(
    'the mount banner',
    () => stderr().includes('mounted at') || child.exitCode !== null,
  );
  t.true(isMounted(l.mnt), stderr());
  fs.writeFileSync(path.join(l.mnt, 'm.txt'), 'm');
  await missing(path.join(l.mnt, 'nope'));

  const prom = await get(port, '/metrics');
  t.is(prom.status, 200);
  t.is(prom.type, 'text/plain; version=0.0.4; charset=utf-8');
  const fams = parseExposition(prom.body, false);
  t.true(sampleValue(fams, 'fusekit_requests_total', { mountpoint: l.mnt, op: 'create' })! >= 1);
  t.true(
    sampleValue(fams, 'fusekit_request_errors_total', {
      mountpoint: l.mnt,
      op: 'lookup',
      errno: 'ENOENT',
    })! >= 1,
  );
  // The same families, types and series as `fusekit stats --prometheus` (values move on).
  const viaCli = await cli(['stats', l.mnt, '--prometheus']);
  t.is(viaCli.code, 0, viaCli.stderr);
  const shape = (f: ReturnType<typeof parseExposition>): string[] =>
    [...f.values()].map((x) => `${x.name} ${x.type} ${x.samples.length > 0}`).sort();
  t.deepEqual(shape(parseExposition(viaCli.stdout, false)), shape(fams));

  const om = await get(port, '/metrics', { accept: 'application/openmetrics-text; version=1.0.0' });
  t.is(om.status, 200);
  t.regex(om.type, /^application\/openmetrics-text; version=1\.0\.0/);
  const omFams = parseExposition(om.body, true);
  t.is(omFams.get('fusekit_requests')?.type, 'counter');
  t.is((await get(port, '/other')).status, 404);

  child.kill('SIGINT');
  t.is(await within('mount exit', exited), 0, stderr());
  t.false(isMounted(l.mnt));
  await t.throwsAsync(get(port, '/metrics'));
});

test('--metrics-port on a port already taken fails with EADDRINUSE and leaves nothing mounted', async (t) => {
  const l = await layout(t);
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const before = fs.readdirSync(l.src);
  const { stderr, exited } = metricsMount(t, l, port);
  t.is(await within('mount exit', exited), 1, stderr());
  t.regex(stderr(), new RegExp(`--metrics-port ${port}: .*EADDRINUSE`));
  t.false(stderr().includes('mounted at'), stderr());
  t.false(isMounted(l.mnt));
  t.deepEqual(fs.readdirSync(l.src), before);
});

// ---- the socket's life, across processes and with stand-in mounts

/** A stand-in for a Mount: serveControl needs only this. */
function standIn(mountpoint: string, marker: string): Controllable & { end(): void } {
  let end!: () => void;
  const closed = new Promise<void>((r) => (end = r));
  return Object.assign(new EventEmitter(), {
    mountpoint,
    source: marker,
    closed,
    transport: 'dev',
    stats: () => ({}) as MountStats,
    invalidate: () => Promise.resolve(0),
    trace: () => undefined,
    end,
  });
}

/** A Unix socket left behind by a process that was killed while listening on it. */
async function staleSocket(t: ExecutionContext, file: string): Promise<void> {
  const c = spawnChild(t, [
    process.execPath,
    '-e',
    `require('net').createServer().listen(process.argv[1], () => console.log('{"ok":true}'))`,
    file,
  ]);
  await c.message((m) => m.ok === true);
  c.kill('SIGKILL');
  await c.exited;
  t.true(fs.lstatSync(file).isSocket(), 'the killed process left its socket');
  const refused = await new Promise<string>((resolve) => {
    const s = net.createConnection(file);
    s.on('connect', () => resolve('connected'));
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  t.is(refused, 'ECONNREFUSED');
}

test('a stale socket of a killed process does not stop a new mount from serving', async (t) => {
  // A private tmpfs: its device number is this test's alone, so no real mount shares the path.
  const root = await tmpdir(t, 'fusekit-ctl-');
  privateFs(t, root, '1m');
  const file = await controlSocketPath(root);
  t.teardown(() => fs.rmSync(file, { force: true }));
  await staleSocket(t, file);
  const m = standIn(root, 'new mount');
  t.teardown(() => m.end());
  await serveControl(m);
  t.is((await controlRequest(root, { cmd: 'stats' })).source, 'new mount');
  m.end();
  await eventually(
    () => fs.existsSync(file),
    (e) => !e,
  );
  t.false(fs.existsSync(file));
});

test('an ending mount removes the socket only if it is still its own', async (t) => {
  const root = await tmpdir(t, 'fusekit-ctl-');
  privateFs(t, root, '1m');
  const file = await controlSocketPath(root);
  t.teardown(() => fs.rmSync(file, { force: true }));
  // Mount a ends while a new mount b (the same device number, reused) already serves.
  const a = standIn(root, 'a');
  const b = standIn(root, 'b');
  t.teardown(() => {
    a.end();
    b.end();
  });
  await serveControl(a);
  t.is((await controlRequest(root, { cmd: 'stats' })).source, 'a');
  await serveControl(b);
  t.is((await controlRequest(root, { cmd: 'stats' })).source, 'b');
  a.end();
  await sleep(200); // a's cleanup has run
  t.true(fs.existsSync(file), "b's socket survives the end of a");
  t.is((await controlRequest(root, { cmd: 'stats' })).source, 'b');
  b.end();
  await eventually(
    () => fs.existsSync(file),
    (e) => !e,
  );
  t.false(fs.existsSync(file));
});

// Serial: the tests of this file running alongside would take the freed device number first.
test.serial(
  'a real mount replaces the socket a killed mount process left at its device number',
  async (t) => {
    const l = await layout(t);
    const child = spawnChild(
      t,
      nodeArgv(
        'test/helpers/child-mount.ts',
        JSON.stringify({ options: { source: l.src, mountpoint: l.mnt }, mode: 'hold' }),
      ),
      { mountpoints: [l.mnt] },
    );
    const hello = await child.message((m) => m.ok === true);
    const file = String(hello.controlSocket);
    const dev = fs.statSync(l.mnt).dev;
    t.is(file, `/run/fusekit/${dev}.sock`);
    child.kill('SIGKILL');
    await child.exited;
    // The watchdog unmounts; the socket stays (nobody was left to remove it).
    await waitFor('the watchdog unmount', () => !isMounted(l.mnt), 30_000);
    const stale = fs.lstatSync(file);
    t.true(stale.isSocket());
    const r = await cli(['stats', l.mnt]);
    t.is(r.code, 1);

    // Device numbers are handed out lowest first: mount until one gets the dead mount's number,
    // keeping the others (they hold lower free numbers). Other processes may take it first; then
    // this part cannot run, and the stand-in tests above still cover it.
    for (let i = 0; i < 12; i++) {
      const dir = path.join(l.root, `m${i}`);
      fs.mkdirSync(dir);
      const m = await mount({ source: l.src, mountpoint: dir });
      unmountInTeardown(t, m);
      const d = fs.statSync(dir).dev;
      if (d === dev) {
        t.is(m.controlSocket, file);
        t.is((await controlRequest(dir, { cmd: 'stats' })).mountpoint, dir);
        await m.unmount();
        t.false(fs.existsSync(file), 'removed at unmount');
        return;
      }
      if (d > dev) break;
    }
    t.log(`device ${dev} was taken by another process; the reuse could not be provoked`);
    // Clean up the killed mount's socket, unless another mount has replaced it meanwhile.
    if (fs.lstatSync(file, { throwIfNoEntry: false })?.ino === stale.ino) fs.rmSync(file);
    t.pass();
  },
);

// ---- small helpers

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function get(
  port: number,
  p: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, headers }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }),
      );
    });
    req.on('error', reject);
  });
}
