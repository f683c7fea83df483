// Access rules enforced in the core: deny → EACCES for every access (the name is still listed),
// readOnly → EROFS for every change, deny beats readOnly; and the audit stream that reports them.
// Every operation is a real system call through the mount; the source is fingerprinted to show
// that refused changes changed nothing.
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import {
  accessSync,
  constants as fsc,
  promises as fsp,
  lstatSync,
  readFileSync,
  readdirSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';

import type { AccessRule, FsEvent, MountOptions } from '../lib';
import { type Mounted, mountFixture } from './helpers/fixture';
import * as ops from './helpers/fsops';

const RULES: AccessRule[] = [
  { path: '/secret', deny: true },
  { path: '/logs/**', readOnly: true },
  { path: '**/*.key', deny: true },
  { path: '/data/file?.txt', readOnly: true },
  { path: '/vault/inner/**', deny: true },
  // deny wins, in either order and on one rule
  { path: '/mixed', readOnly: true },
  { path: '/mixed/**', deny: true },
  { path: '/both', deny: true, readOnly: true },
];

async function layout(src: string): Promise<void> {
  const mk = async (rel: string, data?: string): Promise<void> => {
    const p = path.join(src, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    if (data === undefined) await fsp.mkdir(p, { recursive: true });
    else writeFileSync(p, data);
  };
  await mk('secret/s', 'TOP SECRET');
  await mk('secret/sub/x', 'deeper');
  await mk('secret.txt', 'not covered: another name');
  await mk('logs/a.log', 'log line\n');
  await mk('logs/sub/b.log', 'b\n');
  await mk('logs/empty');
  await fsp.symlink('a.log', path.join(src, 'logs', 'link'));
  ops.setxattr(path.join(src, 'logs', 'a.log'), 'user.tag', 'x');
  await mk('keys/k1.key', 'key');
  await mk('keys/readme', 'public');
  await mk('pub/f', 'public file');
  await mk('pub/deep/x.key', 'nested key');
  await mk('pub/empty');
  await mk('data/file1.txt', 'protected by ?');
  await mk('data/file22.txt', 'not matched by ?');
  await mk('vault/inner/gold', 'gold');
  await mk('vault/outer', 'tin');
  await mk('mixed/m', 'mixed');
  await mk('both/b', 'both');
  // Every caller may try anything, and uid 1000 owns everything: only the rules refuse.
  spawnSync('chmod', ['-R', 'a+rwX', src]);
  spawnSync('chown', ['-R', '-h', '1000:1000', src]);
}

async function setup(t: ExecutionContext, extra: Partial<MountOptions> = {}): Promise<Mounted> {
  const f = await mountFixture(t, { rules: RULES, allowOther: true, ...extra }, layout);
  await fsp.chmod(f.root, 0o755);
  return f;
}

/** Names, types, contents, modes, owners, times and xattrs of a tree. */
function fingerprint(dir: string): string {
  const out: string[] = [];
  const one = (p: string, rel: string): void => {
    const st = lstatSync(p, { bigint: true });
    const data = st.isFile() ? readFileSync(p).toString('hex') : '';
    const x = st.isSymbolicLink() ? [] : ops.listxattr(p).sort();
    out.push(
      [rel, st.mode, st.uid, st.gid, st.nlink, st.size, st.mtimeNs, st.ctimeNs, data, ...x].join(
        ' ',
      ),
    );
    if (st.isDirectory())
      for (const n of readdirSync(p).sort()) one(path.join(p, n), `${rel}/${n}`);
  };
  one(dir, '.');
  return out.join('\n');
}

type Attempt = [string, () => unknown];

function errnos(attempts: Attempt[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [what, fn] of attempts) out[what] = ops.errnoOf(fn);
  return out;
}

const fsop =
  (...args: (string | number)[]) =>
  (): unknown =>
    ops.run(args.map(String));

/** Every kind of access to path p (a file, or with dir a directory), through the mount. */
function everyAccess(m: string, rel: string, dir: boolean, pub: string): Attempt[] {
  const p = path.join(m, rel);
  const a: Attempt[] = [
    ['lstat', () => lstatSync(p)],
    ['statx', () => ops.statx(p, { nofollow: true })],
    ['getxattr', () => ops.getxattr(p, 'user.tag')],
    ['listxattr', () => ops.listxattr(p)],
    ['setxattr', () => ops.setxattr(p, 'user.new', 'v')],
    ['removexattr', () => ops.removexattr(p, 'user.tag')],
    ['chmod', fsop('chmod', p, '700')],
    ['chown', fsop('chown', p, 1, 1)],
    ['utimens', () => ops.utimens(p, 'now', 'now')],
    ['rename-out', fsop('rename', p, path.join(pub, 'moved'))],
    ['link-out', fsop('link', p, path.join(pub, 'linked'))],
  ];
  if (dir) {
    a.push(
      ['readdir', () => readdirSync(p)],
      ['create-in', fsop('create', path.join(p, 'new'), '644')],
      ['mkdir-in', fsop('mkdir', path.join(p, 'newdir'), '755')],
      ['mknod-in', () => ops.mknod(path.join(p, 'fifo'), 'fifo', 0o644)],
      ['symlink-in', fsop('symlink', 'x', path.join(p, 'sym'))],
      ['link-in', fsop('link', path.join(pub, 'f'), path.join(p, 'hl'))],
      ['rename-in', fsop('rename', path.join(pub, 'f'), path.join(p, 'in'))],
      ['tmpfile-in', () => ops.tmpfile(p, 0o600, 'x')],
      ['rmdir', fsop('rmdir', p)],
    );
  } else {
    a.push(
      ['read', () => readFileSync(p)],
      ['open-w', fsop('open', p, 'w')],
      ['open-rw', fsop('open', p, 'rw')],
      ['open-trunc', fsop('open', p, 'r,trunc')],
      ['truncate', () => ops.run(['open', p, 'w,trunc'])],
      ['unlink', fsop('unlink', p)],
      ['exchange', () => ops.rename2(path.join(pub, 'f'), p, ['exchange'])],
    );
  }
  return a;
}

function all(attempts: Attempt[], errno: string): Record<string, string> {
  return Object.fromEntries(attempts.map(([w]) => [w, errno]));
}

test('denied paths: every access fails with EACCES; the name is still listed', async (t) => {
  const f = await setup(t);
  const before = fingerprint(f.src);
  const pub = path.join(f.mnt, 'pub');
  for (const [rel, dir] of [
    ['secret', true],
    ['secret/s', false],
    ['secret/sub', true],
    ['secret/sub/x', false],
    ['keys/k1.key', false],
    ['pub/deep/x.key', false],
    ['vault/inner/gold', false],
  ] as const) {
    const attempts = everyAccess(f.mnt, rel, dir, pub);
    t.deepEqual(errnos(attempts), all(attempts, 'EACCES'), rel);
  }
  // Creating a name a deny rule covers is an access of that name too.
  t.is(ops.errnoOf(fsop('create', path.join(pub, 'new.key'), '644')), 'EACCES');
  t.is(ops.errnoOf(fsop('rename', path.join(pub, 'f'), path.join(pub, 'f.key'))), 'EACCES');
  t.is(ops.errnoOf(fsop('symlink', 'k1.key', path.join(f.mnt, 'keys', 'sneaky.key'))), 'EACCES');
  // Listed all the same (readdir says what is there, not what is in it).
  t.true(readdirSync(f.mnt).includes('secret'));
  t.deepEqual(readdirSync(path.join(f.mnt, 'keys')).sort(), ['k1.key', 'readme']);
  t.deepEqual(readdirSync(path.join(f.mnt, 'vault')).sort(), ['inner', 'outer']);
  // Neighbours are not covered: a rule is a path, not a string prefix.
  t.is(readFileSync(path.join(f.mnt, 'secret.txt'), 'utf8'), 'not covered: another name');
  t.is(readFileSync(path.join(f.mnt, 'keys', 'readme'), 'utf8'), 'public');
  t.is(readFileSync(path.join(f.mnt, 'vault', 'outer'), 'utf8'), 'tin');
  t.is(fingerprint(f.src), before, 'nothing changed');
});

test('read-only paths: every change fails with EROFS, reads work', async (t) => {
  const f = await setup(t);
  const before = fingerprint(path.join(f.src, 'logs'));
  const pub = path.join(f.mnt, 'pub');
  const readOps = new Set(['lstat', 'statx', 'getxattr', 'listxattr', 'read', 'readdir']);
  for (const [rel, dir] of [
    ['logs/a.log', false],
    ['logs/sub', true],
    ['logs/sub/b.log', false],
    ['logs/empty', true],
    ['data/file1.txt', false],
  ] as const) {
    const attempts = everyAccess(f.mnt, rel, dir, pub);
    const expected: Record<string, string> = {};
    for (const [w] of attempts) expected[w] = readOps.has(w) ? 'OK' : 'EROFS';
    // Hard links to directories: refused by the kernel before the rule is asked.
    if (dir) expected['link-out'] = 'EPERM';
    // No such xattr on these: the read reached the file and failed for that reason only.
    if (!rel.endsWith('a.log')) expected.getxattr = 'ENODATA';
    t.deepEqual(errnos(attempts), expected, rel);
  }
  t.is(readFileSync(path.join(f.mnt, 'logs', 'link'), 'utf8'), 'log line\n', 'readlink and follow');
  t.is(ops.errnoOf(fsop('unlink', path.join(f.mnt, 'logs', 'link'))), 'EROFS');
  // "/logs/**" covers what is below /logs: an O_TMPFILE there has no name below it yet, but it
  // can never get one (linking it in is a create of a covered name).
  t.is(
    ops.errnoOf(() =>
      ops.tmpfile(path.join(f.mnt, 'logs'), 0o600, 'x', path.join(f.mnt, 'logs', 'tmp')),
    ),
    'EROFS',
  );
  t.is(ops.errnoOf(fsop('create', path.join(f.mnt, 'logs', 'new'), '644')), 'EROFS');
  // access(2) is answered by the kernel from the mode bits (default_permissions) without asking
  // the daemon, so W_OK says yes on a read-only path, unlike on a read-only mount; writing fails.
  t.is(
    ops.errnoOf(() => accessSync(path.join(f.mnt, 'logs', 'a.log'), fsc.W_OK)),
    'OK',
  );
  // ...but moving it would carry everything the rule protects out from under it.
  t.is(ops.errnoOf(fsop('rename', path.join(f.mnt, 'logs'), path.join(f.mnt, 'logs2'))), 'EROFS');
  t.is(
    ops.errnoOf(() =>
      ops.rename2(path.join(f.mnt, 'pub', 'empty'), path.join(f.mnt, 'logs'), ['exchange']),
    ),
    'EROFS',
  );
  // The '?' rule matches one character only.
  t.is(
    ops.errnoOf(() => writeFileSync(path.join(f.mnt, 'data', 'file22.txt'), 'changed')),
    'OK',
  );
  t.is(fingerprint(path.join(f.src, 'logs')), before, 'the protected tree is unchanged');
  t.is(readFileSync(path.join(f.src, 'data', 'file1.txt'), 'utf8'), 'protected by ?');
  // "/logs/**" covers what is below /logs, so /logs itself may change...
  t.is(ops.errnoOf(fsop('chmod', path.join(f.mnt, 'logs'), '777')), 'OK');
});

test('"/dir/**" covers what is below dir, not dir itself; dir cannot be moved', async (t) => {
  const f = await setup(t);
  const v = (n: string): string => path.join(f.mnt, n);
  t.deepEqual(readdirSync(v('vault/inner')), ['gold'], 'listed');
  t.true(lstatSync(v('vault/inner')).isDirectory());
  t.is(
    ops.errnoOf(() => readFileSync(v('vault/inner/gold'))),
    'EACCES',
  );
  t.is(ops.errnoOf(fsop('create', v('vault/inner/new'), '644')), 'EACCES');
  // Moving the directory (or one above it) would carry what the rule denies out from under it.
  t.is(ops.errnoOf(fsop('rename', v('vault/inner'), v('pub/inner'))), 'EACCES');
  t.is(ops.errnoOf(fsop('rename', v('vault'), v('open'))), 'EACCES');
  t.is(
    ops.errnoOf(() => ops.rename2(v('vault'), v('pub'), ['exchange'])),
    'EACCES',
  );
  t.is(
    ops.errnoOf(() => ops.rename2(v('pub'), v('vault'), ['exchange'])),
    'EACCES',
  );
  t.is(
    ops.errnoOf(() => readFileSync(v('vault/inner/gold'))),
    'EACCES',
  );
  t.is(readFileSync(path.join(f.src, 'vault', 'inner', 'gold'), 'utf8'), 'gold');
  // Moving something else in next to it is fine.
  t.is(ops.errnoOf(fsop('rename', v('pub/f'), v('vault/f'))), 'OK');
  // A link out of a read-only tree would let the file be written under a free name.
  t.is(ops.errnoOf(fsop('link', v('logs/a.log'), v('pub/alias'))), 'EROFS');
  t.false(readdirSync(path.join(f.src, 'pub')).includes('alias'));
});

test('deny beats readOnly', async (t) => {
  const f = await setup(t);
  const pub = path.join(f.mnt, 'pub');
  for (const [rel, dir] of [
    ['mixed/m', false],
    ['both', true],
    ['both/b', false],
  ] as const) {
    const attempts = everyAccess(f.mnt, rel, dir, pub);
    t.deepEqual(errnos(attempts), all(attempts, 'EACCES'), rel);
  }
  // /mixed itself is only read-only (the deny rule covers what is below it).
  t.deepEqual(readdirSync(path.join(f.mnt, 'mixed')), ['m']);
  t.is(ops.errnoOf(fsop('chmod', path.join(f.mnt, 'mixed'), '700')), 'EROFS');
});

// ---- audit

test('audit (default with rules: denied) reports each refusal with op, paths, caller and result', async (t) => {
  const f = await setup(t);
  const evs: FsEvent[] = [];
  f.m.on('audit', (e: FsEvent) => evs.push(e));
  const srv = ops.server(t, { uid: 1000, gid: 1001 });
  const q = (n: string): string => path.join(f.mnt, n);
  t.is(await srv.errno('statx', q('secret/s')), 'EACCES');
  t.is(await srv.errno('open', q('logs/a.log'), 'w'), 'EROFS');
  t.is(await srv.errno('rename', q('pub/f'), q('logs/f')), 'EROFS');
  t.is(await srv.errno('mkdir', q('logs/d'), '755'), 'EROFS');
  t.is(await srv.errno('chmod', q('data/file1.txt'), '600'), 'EROFS');
  // Allowed operations are not reported in this mode.
  t.is(await srv.errno('create', q('pub/new'), '644'), 'OK');
  t.is(await srv.errno('open', q('logs/a.log'), 'r'), 'OK');
  await ops.until(() => evs.length >= 5, 'five audit events');
  await srv.close();
  const seen = evs.map((e) => [
    e.op,
    e.path,
    e.path2 ?? null,
    e.result,
    e.denied,
    e.uid,
    e.gid,
    e.pid,
    e.kind,
  ]);
  const me = srv.pid;
  t.deepEqual(seen, [
    ['lookup', '/secret', null, 'EACCES', true, 1000, 1001, me, 'audit'],
    ['open', '/logs/a.log', null, 'EROFS', true, 1000, 1001, me, 'audit'],
    ['rename', '/pub/f', '/logs/f', 'EROFS', true, 1000, 1001, me, 'audit'],
    ['mkdir', '/logs/d', null, 'EROFS', true, 1000, 1001, me, 'audit'],
    ['setattr', '/data/file1.txt', null, 'EROFS', true, 1000, 1001, me, 'audit'],
  ]);
  for (const e of evs) {
    t.true(Math.abs(e.time - Date.now()) < 600_000, 'a wall-clock time in ms');
    t.true(e.latencyNs >= 0);
  }
  t.is(f.m.stats().events.dropped, 0);
});

test("audit 'changes' also reports every change, and reads not at all", async (t) => {
  const f = await setup(t, { audit: 'changes' });
  const q = (n: string): string => path.join(f.mnt, n);
  const srv = ops.server(t, { uid: 1000, gid: 1000 });
  const evs: FsEvent[] = [];
  f.m.on('audit', (e: FsEvent) => evs.push(e));
  const steps: [string, ...(string | number)[]][] = [
    ['create', q('pub/c'), '644', '41'],
    ['mkdir', q('pub/d'), '755'],
    ['symlink', 't', q('pub/s')],
    ['mknod', q('pub/p'), 'fifo', '644'],
    // (of another file: events name an inode by its latest name, and a link gives c a second)
    ['link', q('pub/s'), q('pub/l')],
    ['rename', q('pub/l'), q('pub/d/l')],
    ['chmod', q('pub/c'), '600'],
    ['setxattr', q('pub/c'), 'user.a', '01', '0'],
    ['removexattr', q('pub/c'), 'user.a'],
    ['unlink', q('pub/d/l')],
    ['rmdir', q('pub/empty')],
    ['tmpfile', q('pub'), '600', '00'],
    ['open', q('pub/f'), 'w'],
    // Reads: not changes.
    ['open', q('pub/f'), 'r'],
    ['statx', q('pub/c')],
    ['readdir', q('pub')],
    ['getxattr', q('logs/a.log'), 'user.tag'],
    // A refusal is still reported (as denied).
    ['unlink', q('logs/a.log')],
  ];
  for (const [cmd, ...args] of steps) {
    const r = await srv.call(cmd, ...args);
    if (cmd === 'open' && typeof r.fd === 'number') await srv.ok('close', r.fd);
    t.is(r.errno ?? 'OK', cmd === 'unlink' && args[0] === q('logs/a.log') ? 'EROFS' : 'OK', cmd);
  }
  await ops.until(() => evs.some((x) => x.op === 'unlink' && x.denied), 'the last event');
  const seen = evs.map(
    (e) =>
      `${e.op} ${e.path}${e.path2 ? ' ' + e.path2 : ''} ${e.result}${e.denied ? ' denied' : ''}`,
  );
  t.deepEqual(seen, [
    'create /pub/c 0',
    'mkdir /pub/d 0',
    'symlink /pub/s 0',
    'mknod /pub/p 0',
    'link /pub/s /pub/l 0',
    'rename /pub/l /pub/d/l 0',
    'setattr /pub/c 0',
    'setxattr /pub/c 0',
    'removexattr /pub/c 0',
    'unlink /pub/d/l 0',
    'rmdir /pub/empty 0',
    'tmpfile /pub 0',
    'open /pub/f 0',
    'unlink /logs/a.log EROFS denied',
  ]);
  t.true(evs.every((e) => e.uid === 1000 && e.pid === srv.pid));
});

test("audit 'off': rules still apply, nothing is reported", async (t) => {
  const f = await setup(t, { audit: 'off' });
  const kinds: string[] = [];
  f.m.on('audit', (e: FsEvent) => kinds.push(`audit ${e.op} ${e.path}`));
  t.is(
    ops.errnoOf(() => readFileSync(path.join(f.mnt, 'secret', 's'))),
    'EACCES',
  );
  t.is(
    ops.errnoOf(() => writeFileSync(path.join(f.mnt, 'logs', 'a.log'), 'x')),
    'EROFS',
  );
  // Then a traced operation: events arrive in order, so once its trace event is here, any audit
  // event of the refusals above would have arrived before it.
  f.m.trace({ ops: ['lookup'], errorsOnly: true });
  f.m.on('trace', (e: FsEvent) => kinds.push(`trace ${e.op} ${e.path}`));
  t.is(
    ops.errnoOf(() => lstatSync(path.join(f.mnt, 'pub', 'nothing-here'))),
    'ENOENT',
  );
  await ops.until(() => kinds.includes('trace lookup /pub/nothing-here'), 'the trace event');
  t.deepEqual(
    kinds.filter((k) => k.startsWith('audit')),
    [],
  );
});

test('a consumer that does not keep up loses counted events; the filesystem never waits for it', async (t) => {
  const f = await setup(t);
  const it = f.m.events({ bufferSize: 4 }); // never read
  let delivered = 0;
  f.m.on('audit', () => delivered++);
  // A burst of refusals while this (JavaScript) thread is blocked in spawnSync: nothing can be
  // delivered meanwhile, yet every request is answered.
  const n = 20000;
  const denied = path.join(f.mnt, 'secret', 's');
  const script = Array.from({ length: n }, () => `statx\t${denied}`).join('\n') + '\n';
  const r = spawnSync(ops.fsopsPath(), ['serve'], {
    input: script,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const replies = r.stdout.trim().split('\n');
  t.is(replies.length, n);
  t.true(replies.every((l) => l.includes('"EACCES"')));
  // Everything recorded is either delivered or counted as dropped.
  const refusals = (): number => f.m.stats().ops.lookup!.errnos.EACCES ?? 0;
  t.true(refusals() >= n);
  await ops.until(
    () => delivered + f.m.stats().events.dropped === refusals(),
    'all events accounted for',
  );
  t.true(it.dropped > 0, 'the unread iterator dropped');
  t.is(it.dropped, delivered - 4, 'it kept bufferSize events');
  t.log({ delivered, nativeDropped: f.m.stats().events.dropped, iteratorDropped: it.dropped });
  // The mount is as responsive as before.
  t.is(readFileSync(path.join(f.mnt, 'pub', 'f'), 'utf8'), 'public file');
  // The kept events are the first ones, in order; then the iterator ends with the mount.
  const first = await it.next();
  t.is((first.value as FsEvent).path, '/secret');
  await it.return!();
});

test('events() as an async iterator yields audit events as they happen', async (t) => {
  const f = await setup(t);
  const got: FsEvent[] = [];
  const reader = (async () => {
    for await (const e of f.m.events({ kinds: ['audit'] })) {
      got.push(e);
      if (got.length === 3) break;
    }
  })();
  for (const p of ['secret', 'keys/k1.key', 'vault/inner/gold'])
    ops.errnoOf(() => lstatSync(path.join(f.mnt, p)));
  await reader;
  t.deepEqual(
    got.map((e) => [e.op, e.path, e.result]),
    [
      ['lookup', '/secret', 'EACCES'],
      ['lookup', '/keys/k1.key', 'EACCES'],
      ['lookup', '/vault/inner/gold', 'EACCES'],
    ],
  );
});

test('rules are validated before mounting', async (t) => {
  const { mount } = await import('../lib');
  // Paths that do not exist: should validation ever pass, the mount fails with ENOENT instead.
  const base = { source: '/nonexistent-fusekit-src', mountpoint: '/nonexistent-fusekit-mnt' };
  const bad: unknown[] = [
    [{ path: '/x' }],
    [{ path: '', deny: true }],
    [{ path: '/x', deny: 'yes' }],
    [{ path: '/x', deny: true, other: 1 }],
    { path: '/x', deny: true },
  ];
  for (const rules of bad)
    await t.throwsAsync(mount({ ...base, rules: rules as never }), { code: 'EINVAL' } as never);
  await t.throwsAsync(mount({ ...base, audit: 'all' as never }), { code: 'EINVAL' } as never);
});
