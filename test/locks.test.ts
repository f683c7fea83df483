// flock() and POSIX record locks through the mount behave as on the source: they conflict between
// processes on the mount and with processes locking the source file directly, are released on
// close and exit, blocking waits are granted on release and can be interrupted by a signal.
// Lock holders are separate processes (`fsops serve`), since POSIX locks belong to a process.
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import type { Mount } from '../lib';
import { mountFixture, tmpdir } from './helpers/fixture';
import * as ops from './helpers/fsops';
import { toolsPath } from './helpers/idmap-tools';
import { type JsonChild, nodeArgv, spawnChild, within } from './helpers/proc-util';

const TRANSPORTS = ['dev', 'io_uring'] as const;
type Transport = (typeof TRANSPORTS)[number];

interface LockFixture {
  m: Mount;
  /** The file through the mount and directly on the source. */
  mf: string;
  sf: string;
}

async function setup(t: ExecutionContext, transport: Transport): Promise<LockFixture> {
  const { src, mnt, m } = await mountFixture(t, { transport }, async (s) => {
    await fsp.writeFile(path.join(s, 'f'), Buffer.alloc(4096, 'l'));
  });
  t.is(m.transport, transport);
  return { m, mf: path.join(mnt, 'f'), sf: path.join(src, 'f') };
}

/** A process holding `path` open read-write; its descriptor is returned with it. */
async function holder(t: ExecutionContext, p: string): Promise<[ops.Server, number]> {
  const s = ops.server(t);
  return [s, await s.open(p, 'rw')];
}

/** Waits until `s` is blocked in the given system call and the daemon has taken the request (the
 * op counter, read by `counted`, moved past `before`), so a release or signal hits a real wait. */
async function blockedInDaemon(
  s: ops.Server,
  counted: () => number | Promise<number>,
  op: 'flock' | 'setlk',
  before: number,
): Promise<void> {
  const nr = ops.syscallNumbers()[op === 'flock' ? 'flock' : 'fcntl'];
  for (let i = 0; !(ops.blockedSyscall(s.pid) === nr && (await counted()) > before); i++) {
    if (i === 2000) throw new Error(`timed out waiting for: ${op} of pid ${s.pid} in the daemon`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const count = (m: Mount, op: string): number => m.stats().ops[op]?.count ?? 0;

for (const transport of TRANSPORTS) {
  const tag = `[${transport}]`;

  test(`flock: processes on the mount conflict; shared locks share ${tag}`, async (t) => {
    const { mf } = await setup(t, transport);
    const [a, fa] = await holder(t, mf);
    const [b, fb] = await holder(t, mf);
    t.is(await a.errno('flock', fa, 'ex', 'nb'), 'OK');
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'EAGAIN');
    t.is(await b.errno('flock', fb, 'sh', 'nb'), 'EAGAIN');
    t.is(await a.errno('flock', fa, 'sh', 'nb'), 'OK', 'downgrade');
    t.is(await b.errno('flock', fb, 'sh', 'nb'), 'OK', 'shared with shared');
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'EAGAIN', 'no upgrade while another shares');
    t.is(await a.errno('flock', fa, 'un'), 'OK');
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'OK', 'upgrade once alone');
    // flock locks belong to the open file description: a second open in the same process
    // conflicts too.
    const fb2 = await b.open(mf, 'r');
    t.is(await b.errno('flock', fb2, 'sh', 'nb'), 'EAGAIN');
  });

  test(`flock: the source and the mount see each other's locks ${tag}`, async (t) => {
    const { mf, sf } = await setup(t, transport);
    const [onSrc, fs] = await holder(t, sf);
    const [onMnt, fm] = await holder(t, mf);
    t.is(await onSrc.errno('flock', fs, 'ex', 'nb'), 'OK');
    t.is(await onMnt.errno('flock', fm, 'sh', 'nb'), 'EAGAIN', 'source lock blocks the mount');
    t.is(await onSrc.errno('flock', fs, 'un'), 'OK');
    t.is(await onMnt.errno('flock', fm, 'ex', 'nb'), 'OK');
    t.is(await onSrc.errno('flock', fs, 'sh', 'nb'), 'EAGAIN', 'mount lock blocks the source');
    t.is(await onMnt.errno('flock', fm, 'sh', 'nb'), 'OK');
    t.is(await onSrc.errno('flock', fs, 'sh', 'nb'), 'OK', 'shared on both sides');
  });

  test(`POSIX locks: ranges conflict between processes on the mount ${tag}`, async (t) => {
    const { mf } = await setup(t, transport);
    const [a, fa] = await holder(t, mf);
    const [b, fb] = await holder(t, mf);
    t.is(await a.errno('setlk', fa, 'wr', 0, 100), 'OK');
    t.is(await b.errno('setlk', fb, 'wr', 50, 10), 'EAGAIN');
    t.is(await b.errno('setlk', fb, 'rd', 99, 1), 'EAGAIN');
    t.is(await b.errno('setlk', fb, 'wr', 100, 10), 'OK', 'adjacent range is free');
    const lk = await b.ok('getlk', fb, 'wr', 0, 10);
    t.like(lk, { type: 'wr', start: 0, len: 100 });
    t.like(await a.ok('getlk', fa, 'wr', 100, 1), { type: 'wr', start: 100, len: 10 });
    t.like(await a.ok('getlk', fa, 'wr', 200, 1), { type: 'un' });
    // A process never conflicts with itself, whatever descriptor it uses.
    const fa2 = await a.open(mf, 'rw');
    t.is(await a.errno('setlk', fa2, 'wr', 0, 100), 'OK');
    t.like(await a.ok('getlk', fa2, 'wr', 0, 100), { type: 'un' });
    // Partial unlock splits the range.
    t.is(await a.errno('setlk', fa, 'un', 0, 50), 'OK');
    t.is(await b.errno('setlk', fb, 'wr', 0, 50), 'OK');
    t.is(await b.errno('setlk', fb, 'wr', 50, 1), 'EAGAIN');
    // Read locks share.
    t.is(await a.errno('setlk', fa, 'rd', 50, 50), 'OK', 'downgrade');
    t.is(await b.errno('setlk', fb, 'rd', 60, 10), 'OK');
    t.is(await b.errno('setlk', fb, 'wr', 60, 10), 'EAGAIN');
  });

  test(`POSIX locks: the source and the mount see each other's locks ${tag}`, async (t) => {
    const { mf, sf } = await setup(t, transport);
    const [onSrc, fs] = await holder(t, sf);
    const [onMnt, fm] = await holder(t, mf);
    t.is(await onSrc.errno('setlk', fs, 'wr', 0, 0), 'OK', 'whole file on the source');
    t.is(await onMnt.errno('setlk', fm, 'rd', 10, 10), 'EAGAIN');
    t.like(await onMnt.ok('getlk', fm, 'rd', 10, 10), { type: 'wr', start: 0, len: 0 });
    t.is(await onSrc.errno('setlk', fs, 'un', 0, 0), 'OK');
    t.is(await onMnt.errno('setlk', fm, 'wr', 10, 10), 'OK');
    t.is(await onSrc.errno('setlk', fs, 'rd', 0, 11), 'EAGAIN', 'mount lock blocks the source');
    t.is(await onSrc.errno('setlk', fs, 'rd', 20, 5), 'OK');
    t.like(await onSrc.ok('getlk', fs, 'wr', 0, 0), { type: 'wr', start: 10, len: 10 });
  });

  test(`locks are released when the holder closes a descriptor or exits ${tag}`, async (t) => {
    const { m, mf } = await setup(t, transport);
    const [a, fa] = await holder(t, mf);
    const [b, fb] = await holder(t, mf);
    // The kernel sends RELEASE (which drops flock locks with the open file description) after
    // close() has returned; wait for the daemon to have handled it, not for any time.
    const released = async (before: number): Promise<void> =>
      ops.until(() => count(m, 'release') > before, 'RELEASE handled by the daemon');
    // POSIX: closing any descriptor of the file drops all the process's locks on it (at FLUSH,
    // which close() waits for).
    const other = await a.open(mf, 'r');
    t.is(await a.errno('setlk', fa, 'wr', 0, 10), 'OK');
    t.is(await b.errno('setlk', fb, 'wr', 0, 10), 'EAGAIN');
    let before = count(m, 'release');
    await a.ok('close', other);
    t.is(await b.errno('setlk', fb, 'wr', 0, 10), 'OK', 'released by closing another descriptor');
    t.is(await b.errno('setlk', fb, 'un', 0, 10), 'OK');
    await released(before);
    // flock: released when the description's last descriptor closes.
    t.is(await a.errno('flock', fa, 'ex', 'nb'), 'OK');
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'EAGAIN');
    before = count(m, 'release');
    await a.ok('close', fa);
    await released(before);
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'OK', 'released by close');
    t.is(await b.errno('flock', fb, 'un'), 'OK');
    // Exit releases everything, even when killed.
    const [c, fc] = await holder(t, mf);
    t.is(await c.errno('flock', fc, 'ex', 'nb'), 'OK');
    t.is(await c.errno('setlk', fc, 'wr', 0, 0), 'OK');
    t.is(await b.errno('flock', fb, 'sh', 'nb'), 'EAGAIN');
    t.is(await b.errno('setlk', fb, 'rd', 0, 1), 'EAGAIN');
    before = count(m, 'release');
    await c.kill('SIGKILL');
    t.is(await b.errno('setlk', fb, 'wr', 0, 0), 'OK', 'POSIX lock released by exit');
    await released(before);
    t.is(await b.errno('flock', fb, 'ex', 'nb'), 'OK', 'flock released by exit');
  });

  test(`blocking flock and F_SETLKW wait and are granted on release ${tag}`, async (t) => {
    const { m, mf, sf } = await setup(t, transport);
    const [a, fa] = await holder(t, mf);
    const [b, fb] = await holder(t, mf);
    // flock: waiter on the mount, holder on the mount.
    t.is(await a.errno('flock', fa, 'ex', 'nb'), 'OK');
    let before = count(m, 'flock');
    const waiting = b.call('flock', fb, 'ex');
    await blockedInDaemon(b, () => count(m, 'flock'), 'flock', before);
    t.is(await a.errno('flock', fa, 'un'), 'OK');
    t.like(await waiting, { ok: true });
    t.is(await a.errno('flock', fa, 'sh', 'nb'), 'EAGAIN', 'the waiter holds it now');
    t.is(await b.errno('flock', fb, 'un'), 'OK');

    // F_SETLKW: holder on the source, waiter on the mount, released by the holder's exit.
    const [s, fs] = await holder(t, sf);
    t.is(await s.errno('setlk', fs, 'wr', 0, 100), 'OK');
    before = count(m, 'setlk');
    const waitingLk = b.call('setlk', fb, 'wr', 50, 100, 'wait');
    await blockedInDaemon(b, () => count(m, 'setlk'), 'setlk', before);
    await s.kill('SIGKILL');
    t.like(await waitingLk, { ok: true });
    t.is(await a.errno('setlk', fa, 'rd', 60, 1), 'EAGAIN', 'granted to the waiter');
    t.like(await a.ok('getlk', fa, 'rd', 0, 0), { type: 'wr', start: 50, len: 100 });

    // Several waiters for shared locks are all granted together.
    t.is(await a.errno('flock', fa, 'ex', 'nb'), 'OK');
    const [c, fc] = await holder(t, mf);
    before = count(m, 'flock');
    const w1 = b.call('flock', fb, 'sh');
    const w2 = c.call('flock', fc, 'sh');
    await blockedInDaemon(b, () => count(m, 'flock'), 'flock', before);
    await blockedInDaemon(c, () => count(m, 'flock'), 'flock', before + 1);
    t.is(await a.errno('flock', fa, 'un'), 'OK');
    t.like(await w1, { ok: true });
    t.like(await w2, { ok: true });
  });
}

/**
 * A waiter on the mount, blocked in the daemon behind a lock held on the source, then signalled:
 * EINTR. `counted` reads the daemon's count of an operation (it may run in another process).
 */
async function interruptedWait(
  t: ExecutionContext,
  f: { mf: string; sf: string; counted: (op: string) => number | Promise<number> },
  op: 'flock' | 'setlk',
): Promise<void> {
  const { mf, sf } = f;
  const [holderProc, fh] = await holder(t, sf);
  const [w, fw] = await holder(t, mf);
  t.is(
    await holderProc.errno(
      ...(op === 'flock' ? ['flock', fh, 'ex', 'nb'] : ['setlk', fh, 'wr', 0, 0]),
    ),
    'OK',
  );
  const before = await f.counted(op);
  const waiting = w.call(
    ...(op === 'flock' ? ['flock', fw, 'ex'] : ['setlk', fw, 'wr', 0, 0, 'wait']),
  );
  await blockedInDaemon(w, () => f.counted(op), op, before);
  w.child.kill('SIGUSR1');
  // Bounded: were interrupts off, the wait would last as long as the lock is held; then the
  // holder goes, so that the waiter can end and be cleaned up.
  let r;
  try {
    r = await within(`the interrupted ${op}`, waiting, 20_000);
  } catch (e) {
    await holderProc.kill('SIGKILL');
    throw e;
  }
  t.is(r.errno, 'EINTR');
  // Nothing was granted behind the caller's back, and the waiter's process is still usable.
  t.is(
    await w.errno(...(op === 'flock' ? ['flock', fw, 'sh', 'nb'] : ['setlk', fw, 'rd', 0, 1])),
    'EAGAIN',
  );
  await holderProc.kill('SIGKILL');
  t.is(
    await w.errno(...(op === 'flock' ? ['flock', fw, 'ex', 'nb'] : ['setlk', fw, 'wr', 0, 0])),
    'OK',
  );
  await w.kill('SIGKILL'); // it holds the file open on the mount
}

for (const op of ['flock', 'setlk'] as const) {
  const name = op === 'flock' ? 'flock' : 'F_SETLKW';
  test(`a blocking ${name} interrupted by a signal returns EINTR [dev]`, async (t) => {
    const { m, mf, sf } = await setup(t, 'dev');
    await interruptedWait(t, { mf, sf, counted: (o) => count(m, o) }, op);
  });

  // libfuse 3.18 does not deliver FUSE_INTERRUPT for requests that came over io_uring (see
  // fuse_free_req: "no support for interrupts with io-uring"), so the wait cannot end early; the
  // caller stays blocked, signal pending, until the lock is granted.
  test(`a blocking ${name} over io_uring ignores signals until granted (no FUSE interrupts over io_uring) [io_uring]`, async (t) => {
    const { m, mf, sf } = await setup(t, 'io_uring');
    const [h, fh] = await holder(t, sf);
    const [w, fw] = await holder(t, mf);
    t.is(
      await h.errno(...(op === 'flock' ? ['flock', fh, 'ex', 'nb'] : ['setlk', fh, 'wr', 0, 0])),
      'OK',
    );
    const before = count(m, op);
    const waiting = w.call(
      ...(op === 'flock' ? ['flock', fw, 'ex'] : ['setlk', fw, 'wr', 0, 0, 'wait']),
    );
    await blockedInDaemon(w, () => count(m, op), op, before);
    w.child.kill('SIGUSR1');
    await h.kill('SIGKILL');
    t.like(await waiting, { ok: true });
  });
}

// ---- where io_uring is refused (Docker's default seccomp profile, kernel.io_uring_disabled)

/** A mount served by a child process in which io_uring_setup fails with EPERM. */
async function noRingMount(
  t: ExecutionContext,
  transport: 'auto' | 'io_uring',
  mode: 'hold' | 'report',
): Promise<{ child: JsonChild; msg: Record<string, unknown>; mf: string; sf: string }> {
  const root = await tmpdir(t);
  const [src, mnt] = [path.join(root, 'src'), path.join(root, 'mnt')];
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  await fsp.writeFile(path.join(src, 'f'), Buffer.alloc(4096, 'l'));
  const spec = { options: { source: src, mountpoint: mnt, transport }, mode };
  const child = spawnChild(
    t,
    [toolsPath(), 'noring', ...nodeArgv('test/helpers/child-mount.ts', JSON.stringify(spec))],
    { mountpoints: [mnt] },
  );
  const msg = await child.message((m) => 'ok' in m);
  return { child, msg, mf: path.join(mnt, 'f'), sf: path.join(src, 'f') };
}

test("transport 'auto' where io_uring is refused serves over /dev/fuse, and lock waits there stay interruptible", async (t) => {
  const { child, msg, mf, sf } = await noRingMount(t, 'auto', 'hold');
  t.true(msg.ok, JSON.stringify(msg));
  t.is(msg.transport, 'dev');
  const counted = async (op: string): Promise<number> => {
    const from = child.messages.length;
    child.send('stats');
    const r = await child.message((m) => 'stats' in m && child.messages.indexOf(m) >= from);
    return (r.stats as { ops: Record<string, { count: number }> }).ops[op]?.count ?? 0;
  };
  await interruptedWait(t, { mf, sf, counted }, 'setlk');
  child.send('unmount');
  t.like(await child.message((m) => 'unmounted' in m || 'unmountError' in m), {
    unmounted: true,
  });
});

test("transport 'io_uring' where io_uring is refused fails with EPERM and says why", async (t) => {
  const { msg } = await noRingMount(t, 'io_uring', 'report');
  t.like(msg, { ok: false, isFusekitError: true, code: 'EPERM', mounted: false });
  t.regex(String(msg.message), /io_uring.*(seccomp|io_uring_disabled)/);
});
