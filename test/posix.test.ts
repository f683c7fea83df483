// POSIX invariants applications rely on, checked on a mount: atomic rename, hard links and link
// counts, inode numbers, cross-device links, and ownership/permission rules of file creation
// (caller's uid, setgid directories, umask, sticky directories, timestamps).
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { mount } from '../lib';
import { type Mounted, mountFixture, unmountInTeardown } from './helpers/fixture';
import * as ops from './helpers/fsops';

const j = (...parts: string[]): string => path.join(...parts);
const USER = { uid: 1000, gid: 1000 };
const OTHER = { uid: 65534, gid: 65534 };

/** A mount other users may enter (allow_other, traversable parents) plus a control directory on
 * the source's filesystem for comparing results. */
async function sharedFixture(t: ExecutionContext): Promise<Mounted & { ctl: string }> {
  const f = await mountFixture(t, { allowOther: true });
  await fsp.chmod(f.root, 0o755);
  const ctl = j(f.root, 'ctl');
  await fsp.mkdir(ctl);
  await fsp.chmod(ctl, 0o755);
  return { ...f, ctl };
}

const S_ISGID = 0o2000;
const mode = async (p: string): Promise<number> => (await fsp.lstat(p)).mode & 0o7777;

// ---- atomic rename

const VERSION_SIZE = 128 * 1024;

/** Version i of the file: a header naming it, then a fill byte derived from i, so a reader can
 * tell a complete version from a partial or mixed one. */
const WRITER = `
const fs = require('fs');
const [dir, stop] = process.argv.slice(1);
const target = dir + '/target';
const SIZE = ${VERSION_SIZE};
let i = 0;
// Capped: every replaced version may stay known to the kernel (and so hold a descriptor in the
// daemon) until memory reclaim makes it forget the inode.
while (!fs.existsSync(stop) && i < 3000) {
  i++;
  const b = Buffer.alloc(SIZE, (i % 250) + 1);
  b.write('v' + String(i).padStart(9, '0') + '\\n');
  const tmp = dir + '/.tmp-' + i;
  fs.writeFileSync(tmp, b);
  fs.renameSync(tmp, target);
  if (i % 10 === 0) process.stdout.write(i + '\\n');
}
process.stdout.write(i + '\\n');
`;

function checkVersion(b: Buffer): string | undefined {
  if (b.length !== VERSION_SIZE) return `length ${b.length}`;
  const m = /^v(\d{9})\n/.exec(b.subarray(0, 11).toString('latin1'));
  if (!m) return 'no header';
  const fill = (Number(m[1]) % 250) + 1;
  for (let k = 11; k < b.length; k++)
    if (b[k] !== fill) return `byte ${k} of version ${m[1]} is ${b[k]}`;
  return undefined;
}

for (const where of ['mount', 'source'] as const) {
  // Serial: other tests' synchronous child processes would stall this reader, not the writer.
  test.serial(
    `rename over a file is atomic for readers on the mount (writer renaming on the ${where})`,
    async (t) => {
      const { root, src, mnt } = await mountFixture(
        t,
        // Changes made on the source are seen only once cached names expire: expire at once.
        where === 'source' ? { entryTimeout: 0, attrTimeout: 0 } : {},
      );
      const stop = j(root, 'stop');
      const first = Buffer.alloc(VERSION_SIZE, 1);
      first.write('v000000000\n');
      await fsp.writeFile(j(mnt, 'target'), first);
      const writer = spawn(process.execPath, ['-e', WRITER, where === 'mount' ? mnt : src, stop], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      t.teardown(() => {
        writer.kill('SIGKILL');
      });
      let renames = 0;
      writer.stdout.on('data', (d: Buffer) => {
        const last = d.toString().trim().split('\n').pop();
        if (last) renames = Number(last);
      });
      const exited = new Promise<number | null>((r) => writer.on('exit', r));
      const seen = new Set<string>();
      let reads = 0;
      const problems: string[] = [];
      // Run until both sides have done plenty (counted, not timed).
      while (
        (reads < 1000 || renames < 200 || seen.size < 3) &&
        writer.exitCode === null &&
        problems.length < 5
      ) {
        try {
          const b = await fsp.readFile(j(mnt, 'target'));
          const bad = checkVersion(b);
          if (bad) problems.push(bad);
          else seen.add(b.subarray(0, 10).toString());
        } catch (e) {
          problems.push(`read failed: ${(e as NodeJS.ErrnoException).code}`);
        }
        reads++;
      }
      await fsp.writeFile(stop, '');
      t.log(`${reads} reads, ${renames} renames, ${seen.size} versions seen`);
      t.is(await exited, 0);
      t.deepEqual(problems, []);
      t.true(seen.size >= 3, `saw ${seen.size} versions in ${reads} reads over ${renames} renames`);
      // The final version is visible, complete, through the mount once the writer is done.
      const final = await fsp.readFile(j(src, 'target'));
      t.is(checkVersion(final), undefined);
      const leftovers = (await fsp.readdir(src)).filter((n) => n.startsWith('.tmp-'));
      t.deepEqual(leftovers, []);
    },
  );
}

// ---- hard links

test('hard links share one inode; link counts and attributes are never stale through any name', async (t) => {
  const { src, mnt } = await mountFixture(t);
  const [a, b, c] = ['a', 'b', 'c'].map((n) => j(mnt, n)) as [string, string, string];
  await fsp.writeFile(a, 'shared');
  await fsp.link(a, b);
  await fsp.mkdir(j(mnt, 'sub'));
  await fsp.link(b, j(mnt, 'sub', 'c'));
  await fsp.rename(j(mnt, 'sub', 'c'), c);
  const names = [a, b, c];
  const stats = await Promise.all(names.map((n) => fsp.stat(n, { bigint: true })));
  t.deepEqual(
    stats.map((s) => s.nlink),
    [3n, 3n, 3n],
  );
  t.is(new Set(stats.map((s) => s.ino)).size, 1);
  t.is((await fsp.stat(j(src, 'a'))).nlink, 3);
  t.is(stats[0]!.ino, (await fsp.stat(j(src, 'a'), { bigint: true })).ino);

  await fsp.chmod(b, 0o600);
  await fsp.chown(c, 1234, 5678);
  for (const n of names) {
    const s = await fsp.stat(n);
    t.deepEqual([s.mode & 0o7777, s.uid, s.gid, s.nlink], [0o600, 1234, 5678, 3], path.basename(n));
  }
  await fsp.appendFile(c, '+more');
  t.is(await fsp.readFile(a, 'utf8'), 'shared+more');
  t.is((await fsp.stat(a)).size, 11);

  await fsp.unlink(a);
  t.deepEqual(await Promise.all([b, c].map(async (n) => (await fsp.stat(n)).nlink)), [2, 2]);
  await fsp.unlink(b);
  t.is((await fsp.stat(c)).nlink, 1);
  t.is((await fsp.stat(j(src, 'c'))).nlink, 1);
  t.is(await fsp.readFile(c, 'utf8'), 'shared+more');
  // A link made on the source directly shows up with its count once attributes are refetched.
  await fsp.link(j(src, 'c'), j(src, 'd'));
  t.is((await fsp.stat(j(mnt, 'd'))).nlink, 2);
});

test('a file lives until its last link and last open descriptor are gone', async (t) => {
  const { src, mnt } = await mountFixture(t);
  const data = Buffer.alloc(4 << 20);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
  await fsp.writeFile(j(mnt, 'a'), data);
  await fsp.link(j(mnt, 'a'), j(mnt, 'b'));
  await fsp.unlink(j(mnt, 'a'));
  t.true((await fsp.readFile(j(mnt, 'b'))).equals(data), 'data through the remaining link');
  t.is((await fsp.stat(j(mnt, 'b'))).nlink, 1);

  const h = await fsp.open(j(mnt, 'b'), 'r+');
  try {
    await fsp.unlink(j(mnt, 'b'));
    await t.throwsAsync(fsp.stat(j(mnt, 'b')), { code: 'ENOENT' });
    t.deepEqual(await fsp.readdir(src), []);
    const st = await h.stat();
    t.is(st.nlink, 0, 'open but unlinked');
    t.is(st.size, data.length);
    const back = Buffer.alloc(data.length);
    const { bytesRead } = await h.read(back, 0, back.length, 0);
    t.is(bytesRead, data.length);
    t.true(back.equals(data), 'still readable');
    await h.write(Buffer.from('still writable'), 0, 14, 100);
    const again = Buffer.alloc(14);
    await h.read(again, 0, 14, 100);
    t.is(again.toString(), 'still writable');
  } finally {
    await h.close();
  }
  // The same file name can be reused at once for a new, unrelated file.
  await fsp.writeFile(j(mnt, 'b'), 'new');
  t.is((await fsp.stat(j(mnt, 'b'))).nlink, 1);
  t.is(await fsp.readFile(j(mnt, 'b'), 'utf8'), 'new');
});

// ---- inode numbers

test('inode numbers are unique across a tree, equal the source and survive renames', async (t) => {
  const { src, mnt } = await mountFixture(t);
  const paths: string[] = [];
  for (let d = 0; d < 10; d++) {
    await fsp.mkdir(j(mnt, `d${d}`));
    paths.push(`d${d}`);
    for (let f = 0; f < 20; f++) {
      await fsp.writeFile(j(mnt, `d${d}`, `f${f}`), `${d}/${f}`);
      paths.push(`d${d}/f${f}`);
    }
    await fsp.mkdir(j(mnt, `d${d}`, 'sub'));
    await fsp.symlink('../f0', j(mnt, `d${d}`, 'sub', 'l'));
    paths.push(`d${d}/sub`, `d${d}/sub/l`);
  }
  const inoOf = async (p: string): Promise<bigint> => (await fsp.lstat(p, { bigint: true })).ino;
  const was = (p: string): bigint => before.get(p)!;
  const before = new Map<string, bigint>();
  for (const p of paths) before.set(p, await inoOf(j(mnt, p)));
  t.is(new Set(before.values()).size, paths.length, 'all distinct');
  for (const p of paths) t.is(before.get(p), await inoOf(j(src, p)), p);

  await fsp.rename(j(mnt, 'd0', 'f1'), j(mnt, 'd0', 'renamed'));
  t.is(await inoOf(j(mnt, 'd0', 'renamed')), was('d0/f1'));
  await fsp.rename(j(mnt, 'd0', 'f2'), j(mnt, 'd9', 'moved'));
  t.is(await inoOf(j(mnt, 'd9', 'moved')), was('d0/f2'));
  await fsp.rename(j(mnt, 'd1'), j(mnt, 'd2', 'd1-inside'));
  t.is(await inoOf(j(mnt, 'd2', 'd1-inside')), was('d1'));
  t.is(await inoOf(j(mnt, 'd2', 'd1-inside', 'f5')), was('d1/f5'));
  t.is(await inoOf(j(mnt, 'd2', 'd1-inside', 'sub', 'l')), was('d1/sub/l'));
  ops.rename2(j(mnt, 'd3'), j(mnt, 'd4'), ['exchange']);
  t.is(await inoOf(j(mnt, 'd4')), was('d3'));
  t.is(await inoOf(j(mnt, 'd3', 'f0')), was('d4/f0'));
  // Readdir reports the same numbers as stat.
  const entries = ops.readdir(j(mnt, 'd4'));
  for (const [name, ino] of entries) {
    if (name === '.' || name === '..') continue;
    t.is(BigInt(ino), await inoOf(j(mnt, 'd4', name)), name);
  }
});

// ---- cross-device links

test('link and rename to another filesystem fail with EXDEV', async (t) => {
  const { root, src, mnt } = await mountFixture(t);
  await fsp.writeFile(j(mnt, 'f'), 'x');
  // A plain directory outside the mount (same disk as the source, but another mount).
  const outside = j(root, 'outside');
  await fsp.mkdir(outside);
  await t.throwsAsync(fsp.link(j(mnt, 'f'), j(outside, 'f')), { code: 'EXDEV' });
  await t.throwsAsync(fsp.rename(j(mnt, 'f'), j(outside, 'f')), { code: 'EXDEV' });
  // A tmpfs.
  const tmpfs = j(root, 'tmpfs');
  await fsp.mkdir(tmpfs);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'fusekit-test', tmpfs], {
    encoding: 'utf8',
  });
  t.is(r.status, 0, r.stderr);
  t.teardown(() => {
    spawnSync('umount', ['-l', tmpfs]);
  });
  await fsp.writeFile(j(tmpfs, 'g'), 'y');
  await t.throwsAsync(fsp.link(j(mnt, 'f'), j(tmpfs, 'f')), { code: 'EXDEV' });
  await t.throwsAsync(fsp.link(j(tmpfs, 'g'), j(mnt, 'g')), { code: 'EXDEV' });
  // Another fusekit mount of the very same source.
  const mnt2 = j(root, 'mnt2');
  await fsp.mkdir(mnt2);
  const m2 = await mount({ source: src, mountpoint: mnt2 });
  unmountInTeardown(t, m2);
  t.is(await fsp.readFile(j(mnt2, 'f'), 'utf8'), 'x');
  await t.throwsAsync(fsp.link(j(mnt, 'f'), j(mnt2, 'f2')), { code: 'EXDEV' });
  await t.throwsAsync(fsp.rename(j(mnt, 'f'), j(mnt2, 'f2')), { code: 'EXDEV' });
  t.deepEqual((await fsp.readdir(src)).sort(), ['f']);
});

// ---- directory link counts

test('directory link counts: 2 when empty, +1 per subdirectory, -1 per rmdir', async (t) => {
  const { src, mnt } = await mountFixture(t);
  const nlink = async (p: string): Promise<number> => (await fsp.stat(p)).nlink;
  await fsp.mkdir(j(mnt, 'd'));
  t.is(await nlink(j(mnt, 'd')), 2);
  const rootBefore = await nlink(mnt);
  t.is(rootBefore, await nlink(src));
  for (let i = 1; i <= 3; i++) {
    await fsp.mkdir(j(mnt, 'd', `s${i}`));
    t.is(await nlink(j(mnt, 'd')), 2 + i);
  }
  await fsp.writeFile(j(mnt, 'd', 'file'), '');
  t.is(await nlink(j(mnt, 'd')), 5, 'files do not count');
  t.is(await nlink(j(mnt, 'd', 's1')), 2);
  await fsp.rmdir(j(mnt, 'd', 's2'));
  t.is(await nlink(j(mnt, 'd')), 4);
  await fsp.rename(j(mnt, 'd', 's3'), j(mnt, 's3'));
  t.is(await nlink(j(mnt, 'd')), 3, 'moving a subdirectory out');
  t.is(await nlink(mnt), rootBefore + 1, 'and into the root');
  t.is(await nlink(j(src, 'd')), 3);
});

// ---- creation as the caller

test('files created by an unprivileged caller are owned by that caller', async (t) => {
  const { src, mnt } = await sharedFixture(t);
  await fsp.mkdir(j(mnt, 'pub'));
  await fsp.chmod(j(mnt, 'pub'), 0o777);
  const p = (n: string): string => j(mnt, 'pub', n);
  t.is(ops.errnoAs(USER, 'create', p('file'), '644', '6869'), 'OK');
  t.is(ops.errnoAs(USER, 'mkdir', p('dir'), '755'), 'OK');
  t.is(ops.errnoAs(USER, 'symlink', 'file', p('link')), 'OK');
  t.is(ops.errnoAs(USER, 'mknod', p('fifo'), 'fifo', '644'), 'OK');
  t.is(ops.errnoAs(USER, 'tmpfile', j(mnt, 'pub'), '600', '6869', p('tmp')), 'OK');
  t.is(ops.errnoAs(USER, 'create', p('dir/nested'), '600'), 'OK');
  t.is(ops.errnoAs(USER, 'link', p('file'), p('hard')), 'OK');
  for (const n of ['file', 'dir', 'link', 'fifo', 'tmp', 'dir/nested', 'hard']) {
    const s = await fsp.lstat(j(src, 'pub', n));
    t.deepEqual([s.uid, s.gid], [1000, 1000], n);
    const m = await fsp.lstat(p(n));
    t.deepEqual([m.uid, m.gid], [1000, 1000], `${n} through the mount`);
  }
  t.is(await fsp.readFile(j(src, 'pub', 'file'), 'utf8'), 'hi');
  // The caller's own permissions apply: another user cannot write into the user's 0755 directory.
  t.is(ops.errnoAs(OTHER, 'create', p('dir/intruder'), '644'), 'EACCES');
  t.is(ops.errnoAs(OTHER, 'chown', p('file'), 65534, 65534), 'EPERM');
  t.is(ops.errnoAs(USER, 'chown', p('file'), 0, 0), 'EPERM');
  // A root-owned directory without write permission for others.
  await fsp.mkdir(j(mnt, 'private'), 0o755);
  t.is(ops.errnoAs(USER, 'create', j(mnt, 'private', 'x'), '644'), 'EACCES');
  await t.throwsAsync(fsp.lstat(j(src, 'private', 'x')), { code: 'ENOENT' });
});

test('setgid directories: new files get the directory group, new subdirectories inherit setgid', async (t) => {
  const { src, mnt, ctl } = await sharedFixture(t);
  for (const base of [mnt, ctl]) {
    const sg = j(base, 'sg');
    await fsp.mkdir(sg);
    await fsp.chown(sg, 0, 1234);
    await fsp.chmod(sg, 0o2777);
    await fsp.writeFile(j(sg, 'by-root'), '');
    await fsp.mkdir(j(sg, 'subdir'));
    t.is(ops.errnoAs(USER, 'create', j(sg, 'by-user'), '2755'), 'OK');
    t.is(ops.errnoAs(USER, 'mkdir', j(sg, 'user-dir'), '755'), 'OK');
    await fsp.mkdir(j(sg, 'subdir', 'deeper'));
  }
  const describe = async (base: string): Promise<string[]> => {
    const out: string[] = [];
    for (const n of [
      'sg',
      'sg/by-root',
      'sg/subdir',
      'sg/by-user',
      'sg/user-dir',
      'sg/subdir/deeper',
    ]) {
      const s = await fsp.lstat(j(base, n));
      out.push(`${n} ${s.uid}:${s.gid} ${(s.mode & 0o7777).toString(8)}`);
    }
    return out;
  };
  const onMount = await describe(mnt);
  t.deepEqual(onMount, await describe(ctl));
  t.deepEqual(await describe(src), onMount);
  const gid = async (n: string): Promise<number> => (await fsp.lstat(j(src, n))).gid;
  t.is(await gid('sg/by-root'), 1234);
  t.is(await gid('sg/by-user'), 1234);
  t.is(await gid('sg/subdir/deeper'), 1234);
  t.truthy((await mode(j(src, 'sg/subdir'))) & S_ISGID, 'subdirectory inherits setgid');
  t.truthy((await mode(j(src, 'sg/user-dir'))) & S_ISGID);
  // A non-member creating a setgid file in the directory does not keep S_ISGID.
  t.falsy((await mode(j(src, 'sg/by-user'))) & S_ISGID);
});

test('the caller umask is honoured, and a default ACL takes its place', async (t) => {
  const { src, mnt, ctl } = await sharedFixture(t);
  const results: Record<string, string[]> = {};
  for (const base of [mnt, ctl]) {
    const out: string[] = [];
    for (const umask of [0o027, 0o000, 0o077, 0o022]) {
      const d = j(base, `u${umask.toString(8)}`);
      await fsp.mkdir(d);
      await fsp.chmod(d, 0o777);
      const as = { ...USER, umask };
      t.is(ops.errnoAs(as, 'create', j(d, 'file'), '666'), 'OK');
      t.is(ops.errnoAs(as, 'mkdir', j(d, 'dir'), '777'), 'OK');
      t.is(ops.errnoAs(as, 'mknod', j(d, 'fifo'), 'fifo', '666'), 'OK');
      t.is(ops.errnoAs(as, 'tmpfile', d, '666', '', j(d, 'tmp')), 'OK');
      for (const n of ['file', 'dir', 'fifo', 'tmp'])
        out.push(`${umask.toString(8)} ${n} ${(await mode(j(d, n))).toString(8)}`);
    }
    // With a default ACL on the directory the umask is not applied (the ACL mask is).
    const acl = j(base, 'acl');
    await fsp.mkdir(acl);
    await fsp.chmod(acl, 0o777);
    const r = spawnSync('setfacl', ['-d', '-m', 'u::rwx,g::rwx,o::r-x', acl], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    t.is(ops.errnoAs({ ...USER, umask: 0o077 }, 'create', j(acl, 'file'), '666'), 'OK');
    t.is(ops.errnoAs({ ...USER, umask: 0o077 }, 'mkdir', j(acl, 'dir'), '777'), 'OK');
    for (const n of ['file', 'dir']) out.push(`acl ${n} ${(await mode(j(acl, n))).toString(8)}`);
    results[base] = out;
  }
  t.deepEqual(results[mnt], results[ctl]);
  const m = results[mnt]!;
  for (const line of [
    '27 file 640',
    '27 dir 750',
    '27 fifo 640',
    '0 file 666',
    '77 dir 700',
    'acl file 664',
    'acl dir 775',
  ])
    t.true(m.includes(line), line);
  t.is(await mode(j(src, 'u27', 'file')), 0o640);
});

test('sticky directories: only the owner (or root) removes or renames an entry', async (t) => {
  const { mnt, ctl } = await sharedFixture(t);
  const transcripts: string[][] = [];
  for (const base of [mnt, ctl]) {
    const st = j(base, 'sticky');
    await fsp.mkdir(st);
    await fsp.chmod(st, 0o1777);
    const p = (n: string): string => j(st, n);
    transcripts.push([
      ops.errnoAs(USER, 'create', p('mine'), '666'),
      ops.errnoAs(OTHER, 'create', p('theirs'), '666'),
      ops.errnoAs(OTHER, 'unlink', p('mine')),
      ops.errnoAs(OTHER, 'rename', p('mine'), p('stolen')),
      ops.errnoAs(OTHER, 'rename', p('theirs'), p('mine')),
      ops.errnoAs(USER, 'mkdir', p('mydir'), '777'),
      ops.errnoAs(OTHER, 'rmdir', p('mydir')),
      ops.errnoAs(USER, 'unlink', p('theirs')),
      ops.errnoAs(OTHER, 'rename', p('theirs'), p('theirs2')),
      ops.errnoAs(USER, 'unlink', p('mine')),
      ops.errnoAs(USER, 'rmdir', p('mydir')),
      ops.errnoAs({}, 'unlink', p('theirs2')),
    ]);
  }
  t.deepEqual(transcripts[0], transcripts[1]);
  t.deepEqual(transcripts[0], [
    'OK',
    'OK',
    'EPERM',
    'EPERM',
    'EPERM',
    'OK',
    'EPERM',
    'EPERM',
    'OK',
    'OK',
    'OK',
    'OK',
  ]);
  t.deepEqual(await fsp.readdir(j(mnt, 'sticky')), []);
});

test('utimensat: setting only atime or only mtime leaves the other; owner rules as on the source', async (t) => {
  const { src, mnt, ctl } = await sharedFixture(t);
  const times = async (p: string): Promise<[bigint, bigint]> => {
    const s = await fsp.stat(p, { bigint: true });
    return [s.atimeNs, s.mtimeNs];
  };
  const transcripts: string[][] = [];
  for (const base of [mnt, ctl]) {
    await fsp.mkdir(j(base, 'pub'));
    await fsp.chmod(j(base, 'pub'), 0o777);
    const f = j(base, 'pub', 'f');
    t.is(ops.errnoAs(USER, 'create', f, '666'), 'OK');
    await fsp.chmod(f, 0o666);
    const out: string[] = [];
    const step = (who: ops.RunOptions, a: string, m: string): Promise<void> =>
      (async () => {
        out.push(`${a} ${m}: ${ops.errnoAs(who, 'utimens', f, a, m, 'path')}`);
        out.push(`  -> ${(await times(f)).join(' ')}`);
      })();
    await step(USER, '1000000000:1', '1100000000:2');
    await step(USER, '1200000000:3', 'omit');
    await step(USER, 'omit', '1300000000:4');
    await step(OTHER, '1400000000:5', '1400000000:6'); // explicit times need ownership
    await step(OTHER, 'omit', '1400000000:7');
    await step(USER, 'omit', 'omit');
    // UTIME_NOW for both needs only write permission; the times are then "now", which differs
    // between the two directories, so only the result is recorded.
    out.push(`now now by other: ${ops.errnoAs(OTHER, 'utimens', f, 'now', 'now', 'path')}`);
    const [a, m] = await times(f);
    t.true(a > 1300000000000000004n && m > 1300000000000000004n);
    transcripts.push(out);
  }
  t.deepEqual(transcripts[0], transcripts[1]);
  t.deepEqual(transcripts[0]!.slice(0, 6), [
    '1000000000:1 1100000000:2: OK',
    '  -> 1000000000000000001 1100000000000000002',
    '1200000000:3 omit: OK',
    '  -> 1200000000000000003 1100000000000000002',
    'omit 1300000000:4: OK',
    '  -> 1200000000000000003 1300000000000000004',
  ]);
  t.true(transcripts[0]!.includes('1400000000:5 1400000000:6: EPERM'));
  t.true(transcripts[0]!.includes('now now by other: OK'));
  const s = await fsp.stat(j(src, 'pub', 'f'), { bigint: true });
  t.deepEqual(await times(j(mnt, 'pub', 'f')), [s.atimeNs, s.mtimeNs]);
});
