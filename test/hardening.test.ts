// Escape attempts and privilege checks. The daemon never follows a symlink and never resolves a
// path: every operation it performs is one name relative to a directory it holds, inside a private
// no-symlink-follow clone of the source. So nothing outside the source is ever read or written on
// behalf of the mount. A sentinel directory next to the source (reachable from the daemon's side
// as <source>/../outside) is fingerprinted before each attack (names, contents, modes, owners,
// xattrs, mtimes and ctimes) and must be exactly the same afterwards. The mount point sits one
// level deeper than the source, so the same relative path means something else to a caller.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  type Stats,
  promises as fsp,
  lstatSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';

import { type Mount, type MountOptions, mount } from '../lib';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import * as ops from './helpers/fsops';
import { fsopsAs, toolsPath } from './helpers/idmap-tools';

interface World {
  root: string;
  src: string;
  /** The sentinel: must never change. */
  outside: string;
  /** <root>/deep/mnt: `mnt/..` is <root>/deep, where there is no "outside". */
  mnt: string;
  m: Mount;
}

async function world(t: ExecutionContext, options: Partial<MountOptions> = {}): Promise<World> {
  const root = await tmpdir(t, 'fusekit-harden-');
  await fsp.chmod(root, 0o755);
  const src = path.join(root, 'src');
  const outside = path.join(root, 'outside');
  const mnt = path.join(root, 'deep', 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt, { recursive: true });
  await fsp.mkdir(path.join(outside, 'dir'), { recursive: true });
  writeFileSync(path.join(outside, 'secret'), 'SECRET outside the source\n');
  writeFileSync(path.join(outside, 'dir', 'inner'), 'inner secret\n');
  ops.setxattr(path.join(outside, 'secret'), 'user.tag', 'sentinel');
  writeFileSync(path.join(src, 'inside.txt'), 'inside\n');
  await fsp.mkdir(path.join(src, 'sub'));
  const m = await mount({ source: src, mountpoint: mnt, ...options });
  unmountInTeardown(t, m);
  return { root, src, outside, mnt, m };
}

/** Everything observable about a tree, its root directory included. */
function fingerprint(dir: string): string {
  const out: string[] = [];
  const one = (p: string, rel: string): void => {
    const st = lstatSync(p, { bigint: true });
    const xattrs = st.isSymbolicLink()
      ? []
      : ops
          .listxattr(p)
          .sort()
          .map((n) => `${n}=${ops.getxattr(p, n).value.toString('hex')}`);
    let data = '';
    if (st.isFile()) data = readFileSync(p).toString('hex');
    if (st.isSymbolicLink()) data = readlinkSync(p);
    out.push(
      [
        rel,
        st.mode,
        st.uid,
        st.gid,
        st.size,
        st.nlink,
        st.mtimeNs,
        st.ctimeNs,
        data,
        ...xattrs,
      ].join(' '),
    );
    if (st.isDirectory())
      for (const n of readdirSync(p).sort()) one(path.join(p, n), `${rel}/${n}`);
  };
  one(dir, '.');
  return out.join('\n');
}

function sh(script: string): { code: number | null; out: string } {
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
  return { code: r.status, out: (r.stdout + r.stderr).trim() };
}

// ---- `..`

test('`..` chains resolve in the caller’s namespace and never climb out of the source', async (t) => {
  const w = await world(t);
  const before = fingerprint(w.outside);
  // From the daemon's side <src>/sub/../../outside is the sentinel; from the caller's it is
  // <root>/deep/outside, which does not exist.
  for (const p of [
    `${w.mnt}/sub/../../outside/secret`,
    `${w.mnt}/../outside/secret`,
    `${w.mnt}/sub/../sub/../../outside/dir/inner`,
    `${w.mnt}/./sub/.././../outside`,
  ]) {
    t.is(
      ops.errnoOf(() => readFileSync(p)),
      'ENOENT',
      p,
    );
  }
  t.is(
    ops.errnoOf(() => writeFileSync(`${w.mnt}/sub/../../outside/new`, 'x')),
    'ENOENT',
  );
  t.is(
    fsopsAs({ uid: 0, gid: 0 }, ['mkdir', `${w.mnt}/sub/../../outside/newdir`, '755']),
    'ENOENT',
  );
  // Many more ".." than there are levels end at the caller's "/", as for any path.
  const deepUp = `${w.mnt}/sub/${'../'.repeat(40)}${w.outside.slice(1)}/secret`;
  t.is(
    readFileSync(deepUp, 'utf8'),
    'SECRET outside the source\n',
    'the caller’s own / (it may read it directly)',
  );
  // Inside the mount, ".." stays inside until the mount root.
  t.is(readFileSync(`${w.mnt}/sub/../inside.txt`, 'utf8'), 'inside\n');
  t.is(readFileSync(`${w.mnt}/sub/../sub/../sub/../inside.txt`, 'utf8'), 'inside\n');
  t.is(fingerprint(w.outside), before);
  t.deepEqual(
    readdirSync(path.join(w.root, 'deep')),
    ['mnt'],
    'nothing was created next to the mount',
  );
});

// ---- symlinks to outside

test('symlinks to outside are returned as-is; operations by name act on the link, never its target', async (t) => {
  const w = await world(t);
  const abs = path.join(w.outside, 'secret');
  for (const n of ['evil', 'evil2', 'evil3', 'evil4']) await fsp.symlink(abs, path.join(w.src, n));
  await fsp.symlink('../outside/secret', path.join(w.src, 'rel'));
  await fsp.symlink('../outside/dir', path.join(w.src, 'reldir'));
  writeFileSync(path.join(w.src, 'plain'), 'plain');
  const before = fingerprint(w.outside);
  const q = (n: string): string => path.join(w.mnt, n);

  t.is(await fsp.readlink(q('evil')), abs);
  t.is(await fsp.readlink(q('rel')), '../outside/secret');
  // The daemon's name operations all apply to the link (or fail on it as an existing name).
  t.is(
    ops.errnoOf(() => ops.run(['unlink', q('evil2')])),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.run(['rename', q('evil3'), q('moved')])),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.run(['link', q('evil4'), q('hardlink')])),
    'OK',
    'link(2) does not follow',
  );
  t.is(
    ops.errnoOf(() => ops.run(['mkdir', q('evil'), '755'])),
    'EEXIST',
  );
  t.is(
    ops.errnoOf(() => ops.mknod(q('evil'), 'fifo', 0o644)),
    'EEXIST',
  );
  t.is(
    ops.errnoOf(() => ops.run(['symlink', 'x', q('evil')])),
    'EEXIST',
  );
  t.is(
    ops.errnoOf(() => ops.run(['create', q('evil'), '644'])),
    'EEXIST',
    'O_CREAT|O_EXCL',
  );
  t.is(
    ops.errnoOf(() => ops.run(['chown', q('evil'), '1234', '1234'])),
    'OK',
    'lchown',
  );
  t.is(
    ops.errnoOf(() => ops.utimens(q('evil'), [1, 0], [2, 0], 'nofollow')),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.setxattr(q('evil'), 'trusted.link', 'l', { nofollow: true })),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.rename2(q('plain'), q('rel'))),
    'OK',
    'replacing a link replaces the link',
  );
  // The relative links, followed by the kernel for the caller, lead to <root>/deep/outside.
  t.is(
    ops.errnoOf(() => readFileSync(q('reldir') + '/inner')),
    'ENOENT',
  );
  t.is(
    ops.errnoOf(() => ops.run(['create', q('reldir') + '/new', '644'])),
    'ENOENT',
  );

  const src = (n: string): Stats => lstatSync(path.join(w.src, n));
  t.false(readdirSync(w.src).includes('evil2'));
  t.true(src('moved').isSymbolicLink());
  t.true(src('hardlink').isSymbolicLink());
  t.is(src('hardlink').nlink, 2, 'a hard link to the symlink itself');
  t.is(src('evil').uid, 1234);
  t.is(src('evil').mtimeMs, 2000);
  t.is(
    ops.getxattr(path.join(w.src, 'evil'), 'trusted.link', { nofollow: true }).value.toString(),
    'l',
  );
  t.true(src('rel').isFile());
  t.is(fingerprint(w.outside), before, 'the sentinel is untouched');
});

test('O_CREAT, O_TRUNC, chmod, setxattr and truncate through a symlink act in the caller’s namespace', async (t) => {
  // What native semantics imply: the kernel, not the daemon, follows a symlink met on the way,
  // and it does so in the caller's mount namespace. A caller whose namespace covers the sentinel
  // path with a tmpfs changes that tmpfs; the real sentinel, which only the daemon could reach,
  // stays as it was.
  const w = await world(t, { allowOther: true });
  await fsp.symlink(path.join(w.outside, 'secret'), path.join(w.src, 'evil'));
  const before = fingerprint(w.outside);
  const e = path.join(w.mnt, 'evil');
  const r = sh(
    `unshare -m --propagation private sh -ec '
       mount -t tmpfs cover ${w.outside}
       printf decoy > ${w.outside}/secret
       printf written > ${e}              # O_CREAT|O_TRUNC through the link
       chmod 600 ${e}
       setfattr -n user.x -v 1 ${e}
       truncate -s 4 ${e}
       printf "%s|" "$(cat ${w.outside}/secret)" "$(stat -c %a ${w.outside}/secret)" "$(getfattr --absolute-names --only-values -n user.x ${w.outside}/secret)"
     '`,
  );
  t.is(r.code, 0, r.out);
  t.is(r.out, 'writ|600|1|', 'the caller’s own file behind the link changed');
  t.is(fingerprint(w.outside), before, 'the sentinel did not');
  t.true(lstatSync(path.join(w.src, 'evil')).isSymbolicLink());
});

// ---- a symlink swapped in while the daemon works

test('a directory swapped with a symlink to outside during operations never lets one escape', async (t) => {
  const w = await world(t, { entryTimeout: 0, attrTimeout: 0, negativeTimeout: 0 });
  const d = path.join(w.src, 'd');
  await fsp.mkdir(d);
  writeFileSync(path.join(d, 'keep'), 'keep');
  // Relative, so a caller that follows it through the mount lands in <root>/deep/outside (absent)
  // while, from the source, it is the sentinel.
  await fsp.symlink('../outside', path.join(w.src, 's'));
  const before = fingerprint(w.outside);
  const swapper = spawn(toolsPath(), ['exchange', d, path.join(w.src, 's'), '100000000'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const swapperDone = new Promise<void>((resolve) => swapper.on('close', () => resolve()));
  t.teardown(async () => {
    swapper.kill('SIGKILL');
    await swapperDone;
  });
  const srv = ops.server(t);
  const counts: Record<string, number> = {};
  const note = async (op: string, p: Promise<string>): Promise<void> => {
    const k = `${op}:${await p}`;
    counts[k] = (counts[k] ?? 0) + 1;
  };
  const m = (n: string): string => path.join(w.mnt, 'd', n);
  const openClose = async (p: string, flags: string): Promise<string> => {
    const r = await srv.call('open', p, flags);
    if (r.errno) return r.errno;
    await srv.ok('close', r.fd as number);
    return 'OK';
  };
  for (let i = 0; i < 1500; i++) {
    await note('create', srv.errno('create', m(`c${i}`), '644', '6869'));
    await note('read', openClose(m('keep'), 'r'));
    await note('mkdir', srv.errno('mkdir', m(`m${i}`), '755'));
    await note('mknod', srv.errno('mknod', m(`p${i}`), 'fifo', '644'));
    await note('symlink', srv.errno('symlink', '/x', m(`l${i}`)));
    await note('link', srv.errno('link', m('keep'), m(`h${i}`)));
    await note('rename', srv.errno('rename', m(`c${i}`), m(`r${i}`)));
    await note('setxattr', srv.errno('setxattr', m(`r${i}`), 'user.x', '01', '0'));
    await note('chmod', srv.errno('chmod', m(`r${i}`), '600'));
    await note('unlink', srv.errno('unlink', m(`h${i}`)));
    await note('trunc', openClose(m('keep'), 'w,trunc'));
  }
  swapper.kill('SIGTERM');
  await swapperDone;
  t.log(counts);
  t.true((counts['create:OK'] ?? 0) > 0, 'some operations landed inside');
  t.true(
    Object.keys(counts).some((k) => !k.endsWith(':OK')),
    'and the swaps did get in the way',
  );
  t.is(fingerprint(w.outside), before, 'the sentinel is untouched');
  t.deepEqual(readdirSync(path.join(w.root, 'deep')), ['mnt']);
  // Whatever was created is in the one real directory, wherever the swaps left it.
  const real = lstatSync(d).isDirectory() ? d : path.join(w.src, 's');
  t.true(readdirSync(real).some((n) => n.startsWith('c') || n.startsWith('r')));
});

// ---- hard links across the boundary

test('hard links and renames between the mount and outside fail with EXDEV', async (t) => {
  const w = await world(t);
  const before = fingerprint(w.outside);
  t.is(
    ops.errnoOf(() => ops.run(['link', path.join(w.outside, 'secret'), path.join(w.mnt, 'x')])),
    'EXDEV',
  );
  t.is(
    ops.errnoOf(() => ops.run(['link', path.join(w.mnt, 'inside.txt'), path.join(w.outside, 'x')])),
    'EXDEV',
  );
  t.is(
    ops.errnoOf(() => ops.run(['rename', path.join(w.outside, 'secret'), path.join(w.mnt, 'x')])),
    'EXDEV',
  );
  t.is(
    ops.errnoOf(() =>
      ops.run(['rename', path.join(w.mnt, 'inside.txt'), path.join(w.outside, 'x')]),
    ),
    'EXDEV',
  );
  // Through /proc/self/fd of a descriptor opened outside: still another mount.
  const srv = ops.server(t);
  const fd = await srv.open(path.join(w.outside, 'secret'), 'r');
  t.is(await srv.errno('link', `/proc/${srv.pid}/fd/${fd}`, path.join(w.mnt, 'y')), 'EXDEV');
  t.is(fingerprint(w.outside), before);
  t.deepEqual(readdirSync(w.src).sort(), ['inside.txt', 'sub']);
});

// ---- names

test('names: 255 bytes work, 256 give ENAMETOOLONG; control bytes and non-UTF-8 round-trip', async (t) => {
  const w = await world(t);
  const ctl = path.join(w.root, 'ctl'); // a plain directory: the reference
  await fsp.mkdir(ctl);
  const names = [
    Buffer.from('a'.repeat(255)),
    Buffer.from('é'.repeat(127) + 'x'), // 255 bytes of UTF-8
    Buffer.from('line\nbreak'),
    Buffer.from('tab\there'),
    Buffer.from([0x01, 0x02, 0x7f, 0x1b, 0x5b]),
    Buffer.from([0x66, 0xff, 0xfe, 0x80, 0x67]), // not UTF-8
    Buffer.from(' leading and trailing '),
    Buffer.from('-dash'),
  ];
  const join = (dir: string, n: Buffer): Buffer => Buffer.concat([Buffer.from(dir + '/'), n]);
  for (const n of names) {
    writeFileSync(join(w.mnt, n), n);
    t.deepEqual(
      readFileSync(join(w.src, n)),
      n,
      `created under its own name: ${JSON.stringify(n.toString('latin1'))}`,
    );
    t.deepEqual(readFileSync(join(w.mnt, n)), n);
  }
  const listed = (dir: string): string[] =>
    (readdirSync(dir, { encoding: 'buffer' }) as Buffer[]).map((b) => b.toString('hex')).sort();
  const want = [
    ...names.map((n) => n.toString('hex')),
    Buffer.from('inside.txt').toString('hex'),
    Buffer.from('sub').toString('hex'),
  ].sort();
  t.deepEqual(listed(w.mnt), want);
  t.deepEqual(listed(w.src), want);
  // One byte more, for every kind of name operation, exactly as on the plain directory.
  const long = 'b'.repeat(256);
  const attempt = (dir: string): Record<string, string> => ({
    create: ops.errnoOf(() => writeFileSync(path.join(dir, long), 'x')),
    stat: ops.errnoOf(() => lstatSync(path.join(dir, long))),
    mkdir: ops.errnoOf(() => ops.run(['mkdir', path.join(dir, long), '755'])),
    symlink: ops.errnoOf(() => ops.run(['symlink', 'x', path.join(dir, long)])),
    rename: ops.errnoOf(() =>
      ops.run(['rename', path.join(dir, 'inside.txt'), path.join(dir, long)]),
    ),
    link: ops.errnoOf(() => ops.run(['link', path.join(dir, 'inside.txt'), path.join(dir, long)])),
  });
  writeFileSync(path.join(ctl, 'inside.txt'), 'x');
  const expected = attempt(ctl);
  t.deepEqual(expected, {
    create: 'ENAMETOOLONG',
    stat: 'ENAMETOOLONG',
    mkdir: 'ENAMETOOLONG',
    symlink: 'ENAMETOOLONG',
    rename: 'ENAMETOOLONG',
    link: 'ENAMETOOLONG',
  });
  t.deepEqual(attempt(w.mnt), expected);
  // Renames and unlinks of the odd names work too.
  for (const n of names) {
    const to = Buffer.concat([n.subarray(0, 200), Buffer.from('.r')]);
    renameSync(join(w.mnt, n), join(w.mnt, to));
    t.deepEqual(readFileSync(join(w.src, to)), n);
  }
});

// ---- device nodes

test('device nodes: mknod refused with EPERM unless devices: true; nodev unless devices', async (t) => {
  const w = await world(t);
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(w.mnt, 'null'), 'chr', 0o666, [1, 3])),
    'EPERM',
  );
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(w.mnt, 'blk'), 'blk', 0o600, [7, 0])),
    'EPERM',
  );
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(w.mnt, 'fifo'), 'fifo', 0o600)),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(w.mnt, 'sock'), 'sock', 0o600)),
    'OK',
  );
  // A 0/0 character device is an overlay whiteout, not a device: allowed.
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(w.mnt, 'wh'), 'chr', 0o600, [0, 0])),
    'OK',
  );
  t.deepEqual(readdirSync(w.src).sort(), ['fifo', 'inside.txt', 'sock', 'sub', 'wh']);
  // A device node already in the source is useless through a nodev mount.
  ops.mknod(path.join(w.src, 'null'), 'chr', 0o666, [1, 3]);
  t.true(mountOptions(w.mnt).includes('nodev'));
  t.is(
    ops.errnoOf(() => readFileSync(path.join(w.mnt, 'null'))),
    'EACCES',
  );
  t.is(
    ops.errnoOf(() => writeFileSync(path.join(w.mnt, 'null'), 'x')),
    'EACCES',
  );

  const d = await world(t, { devices: true });
  t.false(mountOptions(d.mnt).includes('nodev'));
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(d.mnt, 'null'), 'chr', 0o666, [1, 3])),
    'OK',
  );
  t.is(
    ops.errnoOf(() => ops.mknod(path.join(d.mnt, 'loop'), 'blk', 0o600, [7, 0])),
    'OK',
  );
  const st = lstatSync(path.join(d.src, 'null'));
  t.true(st.isCharacterDevice());
  t.is(st.rdev, lstatSync('/dev/null').rdev);
  // The node works as the device it names: reads nothing, swallows writes.
  writeFileSync(path.join(d.mnt, 'null'), 'gone');
  t.is(readFileSync(path.join(d.mnt, 'null')).length, 0);
});

function mountOptions(mnt: string): string[] {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[4] === mnt) return f[5]!.split(',');
  }
  throw new Error(`${mnt} is not mounted`);
}

// ---- setuid

test('a setuid binary on the mount gains nothing (nosuid), and does with suid: true', async (t) => {
  const w = await world(t, { allowOther: true });
  const s = await world(t, { allowOther: true, suid: true });
  t.true(mountOptions(w.mnt).includes('nosuid'));
  t.false(mountOptions(s.mnt).includes('nosuid'));
  for (const x of [w, s]) {
    const bin = path.join(x.src, 'whoami');
    copyFileSync(toolsPath(), bin);
    await fsp.chown(bin, 0, 0);
    await fsp.chmod(bin, 0o4755);
  }
  const euid = (mnt: string): number =>
    (JSON.parse(runAs(path.join(mnt, 'whoami'))) as { euid: number }).euid;
  t.is(euid(w.mnt), 1000, 'nosuid: the euid stays the caller’s');
  t.is(euid(s.mnt), 0, 'the same binary on a suid mount does gain root (the check above can fail)');
});

function runAs(bin: string): string {
  const r = spawnSync(bin, ['euid'], { encoding: 'utf8', uid: 1000, gid: 1000 });
  if (r.status !== 0) throw new Error(`${bin}: ${r.error ?? r.stderr}`);
  return r.stdout;
}

for (const passthrough of ['on', 'off'] as const)
  test(`writes, truncates and chowns by unprivileged callers clear setuid/setgid, as natively [passthrough ${passthrough}]`, async (t) => {
    // With kernel passthrough, writes never reach the daemon: writers of setuid/setgid files must
    // be served by it all the same, or the bits would survive.
    const w = await world(t, { allowOther: true, passthrough });
    t.is(w.m.passthrough, passthrough === 'on');
    const ctl = path.join(w.root, 'ctl');
    await fsp.mkdir(ctl);
    const cases: [string, number][] = [
      ['write', 0o4755],
      ['write-sgid', 0o2755], // setgid with group exec: cleared
      ['write-sgid-noexec', 0o2745], // setgid without group exec (a locking mark): kept
      ['trunc', 0o6755],
      ['ftrunc', 0o4755],
      ['chown', 0o4755],
      ['root-write', 0o4755], // CAP_FSETID: kept
    ];
    for (const dir of [w.src, ctl]) {
      for (const [n, mode] of cases) {
        const f = path.join(dir, n);
        writeFileSync(f, 'original');
        await fsp.chown(f, 1000, 1000);
        await fsp.chmod(f, mode);
      }
    }
    const user = { uid: 1000, gid: 1000 };
    const act = async (dir: string): Promise<void> => {
      const f = (n: string): string => path.join(dir, n);
      for (const n of ['write', 'write-sgid', 'write-sgid-noexec'])
        t.is(fsopsAs(user, ['create', f(n) + '.new', '644']), 'OK'); // the caller can create here
      // Writes through a descriptor opened for writing (not truncating).
      const srv = new ops.Server(user);
      try {
        for (const n of ['write', 'write-sgid', 'write-sgid-noexec']) {
          const fd = await srv.open(f(n), 'w');
          await srv.ok('pwrite', fd, 0, '58');
          await srv.ok('close', fd);
        }
      } finally {
        await srv.close();
      }
      t.is(fsopsAs(user, ['open', f('trunc'), 'w,trunc']), 'OK');
      // truncate(1): ftruncate on a descriptor (a setattr with a file handle).
      t.is(
        spawnSync('setpriv', [
          '--reuid=1000',
          '--regid=1000',
          '--clear-groups',
          'truncate',
          '-s',
          '3',
          f('ftrunc'),
        ]).status,
        0,
      );
      t.is(fsopsAs(user, ['chown', f('chown'), 1000, 1000]), 'OK');
      t.is(fsopsAs({ uid: 0, gid: 0 }, ['open', f('root-write'), 'w,trunc']), 'OK');
    };
    await fsp.chmod(w.src, 0o777);
    await fsp.chmod(ctl, 0o777);
    await act(w.mnt);
    await act(ctl);
    const modes = (dir: string): Record<string, string> =>
      Object.fromEntries(
        cases.map(([n]) => [n, (lstatSync(path.join(dir, n)).mode & 0o7777).toString(8)]),
      );
    const native = modes(ctl);
    t.deepEqual(native, {
      write: '755',
      'write-sgid': '755',
      'write-sgid-noexec': '2745',
      trunc: '755',
      ftrunc: '755',
      chown: '755',
      'root-write': '4755',
    });
    t.deepEqual(modes(w.src), native);
  });

test('a directory moved out of the source: name operations in it fail with ENOENT', async (t) => {
  const w = await world(t);
  writeFileSync(path.join(w.src, 'sub', 'kept'), 'kept');
  const srv = ops.server(t);
  // A descriptor of the directory through the mount, used as a path via /proc/self/fd.
  const fd = await srv.open(path.join(w.mnt, 'sub'), 'r,dir');
  const via = (n: string): string => `/proc/self/fd/${fd}/${n}`;
  t.is(await srv.errno('create', via('before'), '644'), 'OK', 'works while inside');
  await fsp.rename(path.join(w.src, 'sub'), path.join(w.outside, 'moved'));
  const before = fingerprint(w.outside);
  t.is(await srv.errno('create', via('x'), '644'), 'ENOENT');
  t.is(await srv.errno('mkdir', via('d'), '755'), 'ENOENT');
  t.is(await srv.errno('symlink', 't', via('l')), 'ENOENT');
  t.is(await srv.errno('mknod', via('p'), 'fifo', '644'), 'ENOENT');
  t.is(await srv.errno('unlink', via('kept')), 'ENOENT');
  t.is(await srv.errno('rename', via('kept'), via('k2')), 'ENOENT');
  t.is(await srv.errno('open', via('kept'), 'r'), 'ENOENT');
  t.is(await srv.errno('readdir', `/proc/self/fd/${fd}`), 'ENOENT');
  t.is(fingerprint(w.outside), before, 'the moved directory, now outside, is untouched');
  // Moved back in, it works again.
  await fsp.rename(path.join(w.outside, 'moved'), path.join(w.src, 'sub'));
  t.is(await srv.errno('create', via('after'), '644'), 'OK');
  t.deepEqual(readdirSync(path.join(w.src, 'sub')).sort(), ['after', 'before', 'kept']);
});
