// ID mapping, checked against the reference it promises to equal: a kernel idmapped bind mount
// made with the same map (test/helpers/idmap-tools.c builds one). Every scenario runs the same
// system calls, as the same host users, through a kernel idmapped mount of one source and through
// fusekit over an identical second source, then compares what each mount shows and what each
// source holds afterwards. Where fusekit deliberately differs, the test says so and pins both.
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { promises as fsp, lstatSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

import {
  FusekitError,
  type IdRange,
  type Mount,
  type MountOptions,
  checkRanges,
  mount,
  parseColonIdMap,
  parseProcIdMap,
  parseSubid,
  readSubid,
} from '../lib';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import * as ops from './helpers/fsops';
import { type Caller, fsopsAs, kernelIdmapped } from './helpers/idmap-tools';

const MAP: IdRange[] = [{ inside: 0, outside: 100000, count: 65536 }];
const ROOT: Caller = { uid: 0, gid: 0 };

interface Pair {
  root: string;
  /** Source under the kernel idmapped mount, and that mount. */
  ksrc: string;
  kmnt: string;
  /** Source under fusekit, and the fusekit mount. */
  fsrc: string;
  fmnt: string;
  m: Mount;
}

/** Two identical sources, one behind a kernel idmapped mount, one behind fusekit's idmap. */
async function pair(
  t: ExecutionContext,
  uid: IdRange[],
  gid: IdRange[],
  prepare: (src: string) => Promise<void> | void,
  extra: Partial<MountOptions> = {},
): Promise<Pair> {
  const root = await tmpdir(t, 'fusekit-idmap-');
  // Other users must reach the mounts (mkdtemp makes 0700).
  await fsp.chmod(root, 0o755);
  const p = {
    root,
    ksrc: path.join(root, 'ksrc'),
    kmnt: path.join(root, 'kmnt'),
    fsrc: path.join(root, 'fsrc'),
    fmnt: path.join(root, 'fmnt'),
  };
  for (const d of [p.ksrc, p.kmnt, p.fsrc, p.fmnt]) await fsp.mkdir(d);
  await prepare(p.ksrc);
  await prepare(p.fsrc);
  kernelIdmapped(t, p.ksrc, p.kmnt, uid, gid);
  const m = await mount({
    source: p.fsrc,
    mountpoint: p.fmnt,
    allowOther: true,
    idmap: { uid, gid },
    ...extra,
  });
  unmountInTeardown(t, m);
  return { ...p, m };
}

/** rel path -> "type mode uid:gid" for everything below dir (lstat: links themselves). */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(p);
      const type = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFIFO() ? 'p' : 'f';
      // A symlink's mode bits mean nothing (and differ between filesystems).
      const mode = type === 'l' ? '' : (st.mode & 0o7777).toString(8);
      out[r] = `${type} ${mode} ${st.uid}:${st.gid}`;
      if (type === 'd') walk(p, r);
    }
  };
  walk(dir, '');
  return out;
}

function owner(p: string): [number, number] {
  const st = lstatSync(p);
  return [st.uid, st.gid];
}

/** The map applied inside -> outside, 65534 for an unmapped id (what the kernel shows). */
function mapOut(ranges: IdRange[], id: number): number {
  for (const r of ranges)
    if (id >= r.inside && id - r.inside < r.count) return r.outside + id - r.inside;
  return 65534;
}

interface AclEntry {
  tag: number;
  perm: number;
  id: number;
}

/** Decodes a system.posix_acl_* value (version 2 header, then { u16 tag, u16 perm, u32 id }). */
function decodeAcl(b: Buffer): AclEntry[] {
  const out: AclEntry[] = [];
  for (let p = 4; p + 8 <= b.length; p += 8)
    out.push({ tag: b.readUInt16LE(p), perm: b.readUInt16LE(p + 2), id: b.readUInt32LE(p + 4) });
  return out;
}

const ACL_USER = 0x02;
const ACL_GROUP = 0x08;

/** The named-user and named-group entries of an ACL: ["u:1000:6", "g:1005:4"]. */
function namedEntries(b: Buffer): string[] {
  return decodeAcl(b)
    .filter((e) => e.tag === ACL_USER || e.tag === ACL_GROUP)
    .map((e) => `${e.tag === ACL_USER ? 'u' : 'g'}:${e.id}:${e.perm}`)
    .sort();
}

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error ?? r.stderr}`);
}

// ---- what the mount shows

const OWNERS: [string, number, number][] = [
  ['root', 0, 0],
  ['u1000', 1000, 1000],
  ['mixed', 1000, 2000],
  ['top', 65535, 65535],
  ['past', 65536, 65536],
  ['host', 100000, 100000],
  ['huge', 4294967294, 4294967294],
];
// Different uid and gid maps, and two gid ranges, so each id is looked up in its own map.
const UIDS: IdRange[] = [{ inside: 0, outside: 100000, count: 65536 }];
const GIDS: IdRange[] = [
  { inside: 0, outside: 200000, count: 1000 },
  { inside: 1000, outside: 300000, count: 2000 },
];

async function ownedTree(src: string): Promise<void> {
  await fsp.mkdir(path.join(src, 'dir'));
  for (const [name, uid, gid] of OWNERS) {
    const f = path.join(src, 'dir', `f-${name}`);
    writeFileSync(f, name);
    await fsp.chown(f, uid, gid);
    const d = path.join(src, 'dir', `d-${name}`);
    await fsp.mkdir(d);
    await fsp.chown(d, uid, gid);
    const l = path.join(src, 'dir', `l-${name}`);
    await fsp.symlink('target', l);
    await fsp.lchown(l, uid, gid);
    const p = path.join(src, 'dir', `p-${name}`);
    ops.mknod(p, 'fifo', 0o640);
    await fsp.lchown(p, uid, gid);
  }
}

function expectedView(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, uid, gid] of OWNERS) {
    const o = `${mapOut(UIDS, uid)}:${mapOut(GIDS, gid)}`;
    out[`d-${name}`] = `d 755 ${o}`;
    out[`f-${name}`] = `f 644 ${o}`;
    out[`l-${name}`] = `l  ${o}`;
    out[`p-${name}`] = `p 640 ${o}`;
  }
  return out;
}

test('owners through lookup/getattr/statx equal a kernel idmapped mount’s (unmapped → 65534)', async (t) => {
  // No caching: every stat is a fresh lookup and getattr (or statx) answered by the daemon.
  const p = await pair(t, UIDS, GIDS, ownedTree, { entryTimeout: 0, attrTimeout: 0 });
  const expected = expectedView();
  t.deepEqual(tree(path.join(p.kmnt, 'dir')), expected, 'the kernel reference');
  t.deepEqual(tree(path.join(p.fmnt, 'dir')), expected);
  for (const [name] of OWNERS) {
    for (const kind of ['f', 'd', 'l', 'p']) {
      const k = ops.statx(path.join(p.kmnt, 'dir', `${kind}-${name}`), { nofollow: true });
      const f = ops.statx(path.join(p.fmnt, 'dir', `${kind}-${name}`), { nofollow: true });
      t.deepEqual([f.uid, f.gid], [k.uid, k.gid], `statx ${kind}-${name}`);
    }
  }
  // The root of the mount too (disk 0:0).
  t.deepEqual(owner(p.fmnt), owner(p.kmnt));
  t.deepEqual(owner(p.fmnt), [100000, 200000]);
  const s = p.m.stats().ops;
  t.true(s.lookup!.count > 0 && s.getattr!.count + s.statx!.count > 0);
});

test('owners in readdirplus replies equal a kernel idmapped mount’s', async (t) => {
  // Long timeouts: the attributes of the listing are what later stats see, no lookup needed.
  const p = await pair(t, UIDS, GIDS, ownedTree, { entryTimeout: 3600, attrTimeout: 3600 });
  const dir = path.join(p.fmnt, 'dir');
  readdirSync(dir);
  const before = p.m.stats().ops;
  const view = tree(dir);
  const after = p.m.stats().ops;
  t.true(after.readdirplus!.count > 0, 'the listing went through readdirplus');
  t.is(after.lookup!.count, before.lookup!.count, 'stats were answered from the listing');
  t.deepEqual(view, expectedView());
  t.deepEqual(view, tree(path.join(p.kmnt, 'dir')));
});

// ---- what the source gets

const WORLD = async (src: string): Promise<void> => {
  // A sticky, world-writable directory owned by disk root: every caller may create in it.
  await fsp.mkdir(path.join(src, 'w'));
  await fsp.chmod(path.join(src, 'w'), 0o1777);
};

/** The creating operations, as `c`, in dir (through a mount); returns errno names by op. */
function createAll(c: Caller, dir: string, tag: string): Record<string, string> {
  const b = (n: string): string => path.join(dir, `${tag}.${n}`);
  return {
    create: fsopsAs(c, ['create', b('file'), '644', '6869']),
    mkdir: fsopsAs(c, ['mkdir', b('dir'), '755']),
    symlink: fsopsAs(c, ['symlink', '/somewhere/else', b('sym')]),
    mknod: fsopsAs(c, ['mknod', b('fifo'), 'fifo', '600']),
    link: fsopsAs(c, ['link', b('file'), b('link')]),
    tmpfile: fsopsAs(c, ['tmpfile', b('dir'), '640', '00', b('dir') + '/tmp']),
    rename: fsopsAs(c, ['rename', b('link'), b('moved')]),
  };
}

const ALL_OK = {
  create: 'OK',
  mkdir: 'OK',
  symlink: 'OK',
  mknod: 'OK',
  link: 'OK',
  tmpfile: 'OK',
  rename: 'OK',
};

test('a mapped non-root caller creates files owned by its inside ids, as on a kernel idmapped mount', async (t) => {
  const p = await pair(t, MAP, MAP, WORLD);
  const callers: [string, Caller][] = [
    ['first', { uid: 100000, gid: 100000 }],
    ['mid', { uid: 101000, gid: 101005 }],
    ['last', { uid: 165535, gid: 165535 }],
  ];
  for (const [tag, c] of callers) {
    t.deepEqual(createAll(c, path.join(p.kmnt, 'w'), tag), ALL_OK, `kernel, ${tag}`);
    t.deepEqual(createAll(c, path.join(p.fmnt, 'w'), tag), ALL_OK, `fusekit, ${tag}`);
    // On disk: the caller's inside ids.
    for (const n of ['file', 'dir', 'sym', 'fifo', 'moved', 'dir/tmp'])
      t.deepEqual(
        owner(path.join(p.fsrc, 'w', `${tag}.${n}`)),
        [c.uid - 100000, c.gid - 100000],
        `${tag}.${n}`,
      );
  }
  t.deepEqual(tree(p.fsrc), tree(p.ksrc), 'the sources end up alike');
  t.deepEqual(tree(p.fmnt), tree(p.kmnt), 'the mounts show them alike');
  // Contents went where the names say.
  t.is(await fsp.readFile(path.join(p.fsrc, 'w', 'mid.file'), 'utf8'), 'hi');
});

test('owners in create/mkdir/symlink/mknod replies are the caller’s (outside) ids', async (t) => {
  // Long attribute timeouts: a stat right after creating is answered from the creating reply.
  const p = await pair(t, MAP, MAP, WORLD, { entryTimeout: 3600, attrTimeout: 3600 });
  const c = { uid: 101000, gid: 101005 };
  t.deepEqual(createAll(c, path.join(p.fmnt, 'w'), 'x'), ALL_OK);
  const before = p.m.stats().ops;
  for (const n of ['file', 'dir', 'sym', 'fifo', 'moved'])
    t.deepEqual(owner(path.join(p.fmnt, 'w', `x.${n}`)), [101000, 101005], n);
  t.is(p.m.stats().ops.lookup!.count, before.lookup!.count, 'answered from the create replies');
});

test('chown through the mount maps outside → inside, as on a kernel idmapped mount', async (t) => {
  const p = await pair(t, MAP, MAP, async (src) => {
    for (const n of ['a', 'b', 'c']) {
      writeFileSync(path.join(src, n), n);
      await fsp.chown(path.join(src, n), 1000, 1000);
    }
    await fsp.symlink('a', path.join(src, 'l'));
  });
  for (const mnt of [p.kmnt, p.fmnt]) {
    t.is(fsopsAs(ROOT, ['chown', path.join(mnt, 'a'), 101001, 101002]), 'OK');
    t.is(fsopsAs(ROOT, ['chown', path.join(mnt, 'b'), 100000, -1 >>> 0]), 'OK');
    t.is(fsopsAs(ROOT, ['chown', path.join(mnt, 'l'), 165535, 165535]), 'OK', 'lchown');
    // The owner may give the file to its own group (it is in no other).
    t.is(
      fsopsAs({ uid: 101000, gid: 101007 }, ['chown', path.join(mnt, 'c'), -1 >>> 0, 101007]),
      'OK',
    );
    // ... but not to another user.
    t.is(
      fsopsAs({ uid: 101000, gid: 101000 }, ['chown', path.join(mnt, 'c'), 101001, -1 >>> 0]),
      'EPERM',
    );
  }
  t.deepEqual(owner(path.join(p.fsrc, 'a')), [1001, 1002]);
  t.deepEqual(owner(path.join(p.fsrc, 'b')), [0, 1000]);
  t.deepEqual(owner(path.join(p.fsrc, 'l')), [65535, 65535]);
  t.deepEqual(owner(path.join(p.fsrc, 'c')), [1000, 1007]);
  t.deepEqual(tree(p.fsrc), tree(p.ksrc));
});

// ---- unmapped ids

test('unmapped callers cannot create (EOVERFLOW, like the kernel); chown to an unmapped id is EINVAL', async (t) => {
  const p = await pair(t, MAP, MAP, async (src) => {
    await WORLD(src);
    writeFileSync(path.join(src, 'w', 'f'), 'f');
    await fsp.chown(path.join(src, 'w', 'f'), 1000, 1000);
  });
  const refused = {
    create: 'EOVERFLOW',
    mkdir: 'EOVERFLOW',
    symlink: 'EOVERFLOW',
    mknod: 'EOVERFLOW',
    // Nothing to link or rename: the file was never made.
    link: 'ENOENT',
    tmpfile: 'ENOENT',
    rename: 'ENOENT',
  };
  const callers: [string, Caller][] = [
    ['root', ROOT], // host root is not in the map
    ['below', { uid: 99999, gid: 99999 }],
    ['above', { uid: 165536, gid: 165536 }],
    ['gid-only', { uid: 101000, gid: 5 }], // a mapped uid with an unmapped gid
  ];
  for (const [tag, c] of callers) {
    t.deepEqual(createAll(c, path.join(p.kmnt, 'w'), tag), refused, `kernel, ${tag}`);
    t.deepEqual(createAll(c, path.join(p.fmnt, 'w'), tag), refused, `fusekit, ${tag}`);
    // O_TMPFILE on its own (the one above failed for want of its directory).
    t.is(
      fsopsAs(c, ['tmpfile', path.join(p.fmnt, 'w'), '600', '00']),
      'EOVERFLOW',
      `tmpfile ${tag}`,
    );
    t.is(fsopsAs(c, ['tmpfile', path.join(p.kmnt, 'w'), '600', '00']), 'EOVERFLOW');
  }
  t.deepEqual(readdirSync(path.join(p.fsrc, 'w')), ['f'], 'nothing was created');
  // chown to an id with no inside counterpart: the kernel says EOVERFLOW; fusekit says EINVAL
  // (the error chown(2) documents for an id the filesystem cannot store). Nothing changes.
  const f = (mnt: string): string => path.join(mnt, 'w', 'f');
  t.is(fsopsAs(ROOT, ['chown', f(p.kmnt), 5, -1 >>> 0]), 'EOVERFLOW');
  t.is(fsopsAs(ROOT, ['chown', f(p.fmnt), 5, -1 >>> 0]), 'EINVAL');
  t.is(fsopsAs(ROOT, ['chown', f(p.kmnt), -1 >>> 0, 165536]), 'EOVERFLOW');
  t.is(fsopsAs(ROOT, ['chown', f(p.fmnt), -1 >>> 0, 165536]), 'EINVAL');
  t.is(fsopsAs(ROOT, ['chown', f(p.fmnt), 65534, 65534]), 'EINVAL', 'the overflow id itself');
  t.deepEqual(owner(f(p.fsrc)), [1000, 1000]);
  t.deepEqual(owner(f(p.ksrc)), [1000, 1000]);
});

test('objects with unmapped owners: the kernel refuses changes, fusekit applies normal permissions', async (t) => {
  // A kernel idmapped mount treats an inode whose owner it cannot map as unchangeable (it could
  // not write the ids back); fusekit changes the real object with the real ids, so ordinary
  // permission rules (on the 65534 owner it shows) decide. Pinned here so a change is deliberate.
  const p = await pair(t, MAP, MAP, async (src) => {
    await fsp.chmod(src, 0o777);
    for (const n of ['u1', 'u2', 'u3', 'u4', 'u5']) {
      writeFileSync(path.join(src, n), 'x');
      await fsp.chown(path.join(src, n), 70000, 70000);
      await fsp.chmod(path.join(src, n), 0o666);
    }
  });
  const tryAll = (mnt: string): Record<string, string> => {
    const q = (n: string): string => path.join(mnt, n);
    return {
      unlink: fsopsAs(ROOT, ['unlink', q('u1')]),
      rename: fsopsAs(ROOT, ['rename', q('u2'), q('r2')]),
      link: fsopsAs(ROOT, ['link', q('u3'), q('l3')]),
      chmod: fsopsAs(ROOT, ['chmod', q('u4'), '600']),
      write: fsopsAs({ uid: 101000, gid: 101000 }, ['open', q('u5'), 'w']),
    };
  };
  t.deepEqual(tryAll(p.kmnt), {
    unlink: 'EOVERFLOW',
    rename: 'EOVERFLOW',
    link: 'EOVERFLOW',
    chmod: 'EOVERFLOW',
    write: 'EACCES',
  });
  t.deepEqual(tryAll(p.fmnt), { unlink: 'OK', rename: 'OK', link: 'OK', chmod: 'OK', write: 'OK' });
  t.deepEqual(owner(path.join(p.fsrc, 'r2')), [70000, 70000], 'owners stay as they were');
});

// ---- ACLs

test('POSIX ACLs written through the mount store inside ids, byte for byte like the kernel', async (t) => {
  const p = await pair(t, MAP, MAP, async (src) => {
    writeFileSync(path.join(src, 'f'), 'f');
    await fsp.mkdir(path.join(src, 'd'));
    await fsp.chmod(path.join(src, 'd'), 0o777);
  });
  for (const mnt of [p.kmnt, p.fmnt]) {
    sh('setfacl', ['-m', 'u:101001:r,g:101002:rw,u:100000:rwx', path.join(mnt, 'f')]);
    sh('setfacl', ['-d', '-m', 'u:101003:rwx,g:165535:rx', path.join(mnt, 'd')]);
    // A new file inherits the default ACL (created by a mapped caller).
    t.is(
      fsopsAs({ uid: 101000, gid: 101000 }, ['create', path.join(mnt, 'd', 'new'), '666']),
      'OK',
    );
  }
  for (const [rel, name] of [
    ['f', 'system.posix_acl_access'],
    ['d', 'system.posix_acl_default'],
    ['d/new', 'system.posix_acl_access'],
  ] as const) {
    const k = ops.getxattr(path.join(p.ksrc, rel), name).value;
    const f = ops.getxattr(path.join(p.fsrc, rel), name).value;
    t.deepEqual(f, k, `${rel} ${name}: same bytes as the kernel's`);
  }
  t.deepEqual(namedEntries(ops.getxattr(path.join(p.fsrc, 'f'), 'system.posix_acl_access').value), [
    'g:1002:6',
    'u:0:7',
    'u:1001:4',
  ]);
  t.deepEqual(
    namedEntries(ops.getxattr(path.join(p.fsrc, 'd'), 'system.posix_acl_default').value),
    ['g:65535:5', 'u:1003:7'],
  );
  // Read back through each mount: outside ids again.
  for (const mnt of [p.kmnt, p.fmnt])
    t.deepEqual(
      namedEntries(ops.getxattr(path.join(mnt, 'd', 'new'), 'system.posix_acl_access').value),
      ['g:165535:5', 'u:101003:7'],
    );
  // An id the map cannot store: EINVAL from both, and the ACL stays.
  for (const mnt of [p.kmnt, p.fmnt]) {
    t.is(
      fsopsAs(ROOT, [
        'setxattr',
        path.join(mnt, 'f'),
        'system.posix_acl_access',
        aclBytes([[ACL_USER, 4, 5]]).toString('hex'),
      ]),
      'EINVAL',
    );
  }
  t.deepEqual(
    ops.getxattr(path.join(p.fsrc, 'f'), 'system.posix_acl_access').value,
    ops.getxattr(path.join(p.ksrc, 'f'), 'system.posix_acl_access').value,
  );
});

/** A valid access ACL with the given named entries (owner rw, group r, mask rwx, other r). */
function aclBytes(named: [number, number, number][]): Buffer {
  const entries: [number, number, number][] = [
    [0x01, 6, 0xffffffff],
    ...named.filter((e) => e[0] === ACL_USER),
    [0x04, 4, 0xffffffff],
    ...named.filter((e) => e[0] === ACL_GROUP),
    [0x10, 7, 0xffffffff],
    [0x20, 4, 0xffffffff],
  ];
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id, 8 + 8 * i);
  });
  return b;
}

test('POSIX ACLs on the source read through the mount show outside ids and grant access by them', async (t) => {
  const p = await pair(t, MAP, MAP, async (src) => {
    const f = path.join(src, 'secret');
    writeFileSync(f, 'acl-protected');
    await fsp.chmod(f, 0o600); // disk root only, but for the ACL
    sh('setfacl', ['-m', 'u:1000:r,g:1005:r,u:70000:r', f]);
  });
  const k = namedEntries(
    ops.getxattr(path.join(p.kmnt, 'secret'), 'system.posix_acl_access').value,
  );
  const f = namedEntries(
    ops.getxattr(path.join(p.fmnt, 'secret'), 'system.posix_acl_access').value,
  );
  // The unmapped entry (70000): the kernel reports it as (uid_t)-1, fusekit as the overflow id
  // 65534, the id it shows for unmapped owners too. The mapped ones agree.
  t.deepEqual(k, ['g:101005:4', 'u:101000:4', 'u:4294967295:4']);
  t.deepEqual(f, ['g:101005:4', 'u:101000:4', 'u:65534:4']);
  // The kernel checks permissions on the FUSE side with the mapped ACL.
  const read = (mnt: string, c: Caller): string =>
    fsopsAs(c, ['open', path.join(mnt, 'secret'), 'r']);
  for (const mnt of [p.kmnt, p.fmnt]) {
    t.is(read(mnt, { uid: 101000, gid: 101000 }), 'OK', 'named user');
    t.is(read(mnt, { uid: 101009, gid: 101009, groups: [101005] }), 'OK', 'named group');
    t.is(read(mnt, { uid: 101001, gid: 101001 }), 'EACCES', 'neither');
    t.is(read(mnt, { uid: 170000, gid: 170000 }), 'EACCES', 'the unmapped entry grants nobody');
  }
});

// ---- squash

test('squash: every owner shows as the squash id, every new object gets it', async (t) => {
  const root = await tmpdir(t, 'fusekit-idmap-');
  await fsp.chmod(root, 0o755);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src, { mode: 0o777 });
  await fsp.chmod(src, 0o777);
  await fsp.mkdir(mnt);
  writeFileSync(path.join(src, 'a'), 'a');
  await fsp.chown(path.join(src, 'a'), 1000, 1005);
  writeFileSync(path.join(src, 'b'), 'b');
  await fsp.chown(path.join(src, 'b'), 70000, 70000); // unmapped, squashed all the same
  sh('setfacl', ['-m', 'u:1000:r', path.join(src, 'a')]);
  const m = await mount({
    source: src,
    mountpoint: mnt,
    allowOther: true,
    idmap: { uid: MAP, gid: MAP, squash: { uid: 0, gid: 0 } },
  });
  unmountInTeardown(t, m);
  for (const n of ['a', 'b', '.']) t.deepEqual(owner(path.join(mnt, n)), [100000, 100000], n);
  // Any caller, even one outside the map, creates as the squash ids.
  t.is(fsopsAs({ uid: 101000, gid: 101005 }, ['create', path.join(mnt, 'c1'), '644']), 'OK');
  t.is(fsopsAs(ROOT, ['mkdir', path.join(mnt, 'c2'), '755']), 'OK');
  t.is(fsopsAs({ uid: 5000, gid: 5000 }, ['symlink', 'x', path.join(mnt, 'c3')]), 'OK');
  for (const n of ['c1', 'c2', 'c3']) {
    t.deepEqual(owner(path.join(src, n)), [0, 0], `${n} on disk`);
    t.deepEqual(owner(path.join(mnt, n)), [100000, 100000], `${n} through the mount`);
  }
  // ACL entries name users, not owners: they are mapped, not squashed.
  t.deepEqual(namedEntries(ops.getxattr(path.join(mnt, 'a'), 'system.posix_acl_access').value), [
    'u:101000:4',
  ]);
});

test('squash without a map: owners show as the squash ids unchanged, only the squashed kind', async (t) => {
  const root = await tmpdir(t, 'fusekit-idmap-');
  await fsp.chmod(root, 0o755);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.chmod(src, 0o777);
  await fsp.mkdir(mnt);
  writeFileSync(path.join(src, 'a'), 'a');
  await fsp.chown(path.join(src, 'a'), 1000, 1005);
  const m = await mount({
    source: src,
    mountpoint: mnt,
    allowOther: true,
    idmap: { squash: { uid: 1234 } },
  });
  unmountInTeardown(t, m);
  t.deepEqual(owner(path.join(mnt, 'a')), [1234, 1005]);
  t.is(fsopsAs({ uid: 5000, gid: 5001 }, ['create', path.join(mnt, 'n'), '644']), 'OK');
  t.deepEqual(owner(path.join(src, 'n')), [1234, 5001]);
});

// ---- permission checks

test('permission checks for mapped callers behave like the same ids on a native filesystem', async (t) => {
  // Disk owner 1000:1005 is 101000:101005 through the mount; the control directory holds the
  // same files owned by 101000:101005 natively.
  const oct = (m: number): string => m.toString(8).padStart(3, '0');
  const modes = [0o600, 0o640, 0o660, 0o604, 0o060, 0o006];
  const fill =
    (uid: number, gid: number) =>
    async (dir: string): Promise<void> => {
      for (const mode of modes) {
        const f = path.join(dir, `m${oct(mode)}`);
        writeFileSync(f, 'data');
        await fsp.chown(f, uid, gid);
        await fsp.chmod(f, mode);
      }
      for (const mode of [0o755, 0o775, 0o777]) {
        const d = path.join(dir, `d${oct(mode)}`);
        await fsp.mkdir(d);
        await fsp.chown(d, uid, gid);
        await fsp.chmod(d, mode);
      }
    };
  const p = await pair(t, MAP, MAP, fill(1000, 1005));
  const native = path.join(p.root, 'native');
  await fsp.mkdir(native);
  await fill(101000, 101005)(native);
  const callers: [string, Caller][] = [
    ['owner', { uid: 101000, gid: 101000 }],
    ['owner-group', { uid: 101000, gid: 101005 }],
    ['member', { uid: 101001, gid: 101001, groups: [101005] }],
    ['primary', { uid: 101002, gid: 101005 }],
    ['other', { uid: 101001, gid: 101001 }],
    ['disk-owner-id', { uid: 1000, gid: 1005 }], // the unmapped disk ids are nobody here
  ];
  const matrix = (dir: string): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const [who, c] of callers) {
      for (const mode of modes) {
        const f = path.join(dir, `m${oct(mode)}`);
        out[`${who} read ${oct(mode)}`] = fsopsAs(c, ['open', f, 'r']);
        out[`${who} write ${oct(mode)}`] = fsopsAs(c, ['open', f, 'w']);
      }
      for (const mode of [0o755, 0o775, 0o777]) {
        const d = path.join(dir, `d${oct(mode)}`);
        out[`${who} list ${oct(mode)}`] = fsopsAs(c, ['readdir', d]);
        out[`${who} chmod ${oct(mode)}`] = fsopsAs(c, ['chmod', d, oct(mode)]);
      }
    }
    return out;
  };
  const expected = matrix(native);
  // Sanity: the matrix is not trivial.
  t.is(expected['owner read 600'], 'OK');
  t.is(expected['other read 600'], 'EACCES');
  t.is(expected['member write 660'], 'OK');
  t.is(expected['owner read 060'], 'EACCES');
  t.is(expected['other chmod 777'], 'EPERM');
  t.deepEqual(matrix(p.fmnt), expected, 'fusekit vs native');
  t.deepEqual(matrix(p.kmnt), expected, 'kernel idmapped vs native');
  // Creating in a directory: allowed by the mode for mapped callers.
  for (const mnt of [p.kmnt, p.fmnt]) {
    t.is(
      fsopsAs({ uid: 101000, gid: 101000 }, ['mkdir', path.join(mnt, 'd755', 'x'), '755']),
      'OK',
    );
    t.is(
      fsopsAs({ uid: 101001, gid: 101001 }, ['mkdir', path.join(mnt, 'd755', 'y'), '755']),
      'EACCES',
    );
    t.is(
      fsopsAs({ uid: 101001, gid: 101001, groups: [101005] }, [
        'mkdir',
        path.join(mnt, 'd775', 'z'),
        '755',
      ]),
      'OK',
    );
  }
  t.deepEqual(tree(p.fsrc), tree(p.ksrc));
});

// ---- setgid directories

test('setgid directories: group inheritance and setgid stripping as on a kernel idmapped mount', async (t) => {
  const p = await pair(t, MAP, MAP, async (src) => {
    const d = path.join(src, 'sg');
    await fsp.mkdir(d);
    await fsp.chown(d, 1000, 2000);
    await fsp.chmod(d, 0o2777);
  });
  const member: Caller = { uid: 101001, gid: 101001, groups: [102000] };
  const stranger: Caller = { uid: 101002, gid: 101002 };
  for (const mnt of [p.kmnt, p.fmnt]) {
    const d = (n: string): string => path.join(mnt, 'sg', n);
    for (const [tag, c] of [
      ['member', member],
      ['stranger', stranger],
    ] as const) {
      t.is(fsopsAs(c, ['create', d(`${tag}-plain`), '644']), 'OK');
      // setgid + group-exec asked for: kept for a member of the group, stripped for others.
      t.is(fsopsAs(c, ['create', d(`${tag}-sgid`), '2775']), 'OK');
      t.is(fsopsAs(c, ['mkdir', d(`${tag}-dir`), '755']), 'OK');
      t.is(fsopsAs(c, ['mknod', d(`${tag}-fifo`), 'fifo', '2770']), 'OK');
    }
  }
  const got = tree(path.join(p.fsrc, 'sg'));
  t.deepEqual(got, tree(path.join(p.ksrc, 'sg')));
  t.is(got['member-sgid'], 'f 2775 1001:2000');
  t.is(got['stranger-sgid'], 'f 775 1002:2000');
  t.is(got['stranger-dir'], 'd 2755 1002:2000');
  t.deepEqual(tree(path.join(p.fmnt, 'sg')), tree(path.join(p.kmnt, 'sg')));
});

// ---- parsers and validation

test('parseProcIdMap reads uid_map lines', (t) => {
  t.deepEqual(parseProcIdMap('         0     100000      65536\n'), [
    { inside: 0, outside: 100000, count: 65536 },
  ]);
  t.deepEqual(parseProcIdMap('0 1000 1\n1 100000 65535\n\n'), [
    { inside: 0, outside: 1000, count: 1 },
    { inside: 1, outside: 100000, count: 65535 },
  ]);
  // The identity map of the initial namespace is valid.
  t.deepEqual(parseProcIdMap('0 0 4294967295'), [{ inside: 0, outside: 0, count: 4294967295 }]);
  for (const bad of ['0 100000', '0 100000 65536 7', 'a b c', '0 1.5 3', '0 -1 3'])
    t.throws(() => parseProcIdMap(bad), { instanceOf: FusekitError, code: 'EINVAL' } as never, bad);
});

test('parseColonIdMap reads C:H:N[:C:H:N...]', (t) => {
  t.deepEqual(parseColonIdMap('0:100000:65536'), [{ inside: 0, outside: 100000, count: 65536 }]);
  t.deepEqual(parseColonIdMap('0:1000:1:1:100000:65535'), [
    { inside: 0, outside: 1000, count: 1 },
    { inside: 1, outside: 100000, count: 65535 },
  ]);
  for (const bad of ['', '0:1', '0:1:2:3', '0::2', 'x:1:2', '0:1:0'])
    t.throws(() => parseColonIdMap(bad), { code: 'EINVAL' } as never, bad);
});

test('parseSubid/readSubid turn /etc/subuid lines into consecutive inside ranges', async (t) => {
  const text = 'alice:100000:65536\nbob:200000:1000\n1001:300000:10\nalice:500000:5\n';
  t.deepEqual(parseSubid(text, 'alice'), [
    { inside: 0, outside: 100000, count: 65536 },
    { inside: 65536, outside: 500000, count: 5 },
  ]);
  t.deepEqual(parseSubid(text, 1001, 1), [{ inside: 1, outside: 300000, count: 10 }]);
  t.throws(() => parseSubid(text, 'carol'), { code: 'EINVAL' } as never);
  t.throws(() => parseSubid('alice:x:5\n', 'alice'), { code: 'EINVAL' } as never);
  // Two entries for one user that overlap on the host side are refused.
  t.throws(() => parseSubid('u:100:10\nu:105:10\n', 'u'), { code: 'EINVAL' } as never);
  const dir = await tmpdir(t);
  const file = path.join(dir, 'subuid');
  writeFileSync(file, text);
  t.deepEqual(await readSubid('bob', file), [{ inside: 0, outside: 200000, count: 1000 }]);
  await t.throwsAsync(readSubid('bob', path.join(dir, 'missing')), { code: 'ENOENT' } as never);
});

test('checkRanges refuses overlapping, overflowing, empty and malformed ranges', (t) => {
  const ok: IdRange[] = [
    { inside: 0, outside: 100000, count: 10 },
    { inside: 10, outside: 100010, count: 10 }, // adjacent on both sides
  ];
  t.deepEqual(checkRanges(ok, 'm'), ok);
  const bad: [string, unknown][] = [
    [
      'overlap inside',
      [
        { inside: 0, outside: 0, count: 10 },
        { inside: 9, outside: 100, count: 1 },
      ],
    ],
    [
      'overlap outside',
      [
        { inside: 0, outside: 100, count: 10 },
        { inside: 50, outside: 95, count: 10 },
      ],
    ],
    [
      'contained',
      [
        { inside: 0, outside: 0, count: 100 },
        { inside: 10, outside: 1000, count: 5 },
      ],
    ],
    ['overflow inside', [{ inside: 2 ** 32 - 5, outside: 0, count: 6 }]],
    ['overflow outside', [{ inside: 0, outside: 2 ** 32 - 1, count: 2 }]],
    ['zero count', [{ inside: 0, outside: 0, count: 0 }]],
    ['negative', [{ inside: -1, outside: 0, count: 1 }]],
    ['fraction', [{ inside: 0, outside: 0.5, count: 1 }]],
    ['too big', [{ inside: 2 ** 32, outside: 0, count: 1 }]],
    ['missing', [{ inside: 0, count: 1 }]],
    ['not an array', { inside: 0, outside: 0, count: 1 }],
  ];
  for (const [what, v] of bad)
    t.throws(() => checkRanges(v, 'm'), { code: 'EINVAL' } as never, what);
  // The whole 32-bit space in one range is fine; one more is not.
  t.notThrows(() => checkRanges([{ inside: 0, outside: 0, count: 2 ** 32 - 1 }], 'm'));
  t.throws(() => checkRanges([{ inside: 1, outside: 0, count: 2 ** 32 - 1 }], 'm'), {
    code: 'EINVAL',
  } as never);
});

test('mount() refuses a bad idmap with EINVAL before mounting anything', async (t) => {
  const root = await tmpdir(t);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  const bad: unknown[] = [
    { uid: [{ inside: 0, outside: 100000, count: 0 }] },
    {
      gid: [
        { inside: 0, outside: 1, count: 10 },
        { inside: 5, outside: 100, count: 1 },
      ],
    },
    { uid: [{ inside: 0, outside: 2 ** 32 - 1, count: 2 }] },
    { squash: { uid: -1 } },
    { squash: 5 },
    { users: [] },
    'nope',
  ];
  for (const idmap of bad) {
    const err = await t.throwsAsync(mount({ source: src, mountpoint: mnt, idmap: idmap as never }));
    t.is((err as FusekitError).code, 'EINVAL', JSON.stringify(idmap));
    t.false(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `), 'nothing mounted');
  }
});

test('overlay mounts map owners, creators, chown and ACLs the same way', async (t) => {
  const root = await tmpdir(t, 'fusekit-idmap-');
  await fsp.chmod(root, 0o755);
  const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((n) =>
    path.join(root, n),
  ) as [string, string, string, string];
  for (const d of [lower, upper, work, mnt]) await fsp.mkdir(d);
  await ownedTree(lower);
  await WORLD(lower);
  const m = await mount({
    overlay: { lower: [lower], upper, work },
    mountpoint: mnt,
    allowOther: true,
    idmap: { uid: UIDS, gid: GIDS },
    entryTimeout: 0,
    attrTimeout: 0,
  });
  unmountInTeardown(t, m);
  t.deepEqual(tree(path.join(mnt, 'dir')), expectedView());
  const c = { uid: 101000, gid: 300005 }; // gid 300005 is inside 1005 (second gid range)
  t.deepEqual(createAll(c, path.join(mnt, 'w'), 'x'), ALL_OK);
  for (const n of ['file', 'dir', 'sym', 'fifo', 'moved', 'dir/tmp'])
    t.deepEqual(owner(path.join(upper, 'w', `x.${n}`)), [1000, 1005], `upper x.${n}`);
  t.is(fsopsAs(ROOT, ['create', path.join(mnt, 'w', 'root'), '644']), 'EOVERFLOW');
  // chown copies the file up, owned by the mapped ids.
  t.is(fsopsAs(ROOT, ['chown', path.join(mnt, 'dir', 'f-u1000'), 101001, 200007]), 'OK');
  t.deepEqual(owner(path.join(upper, 'dir', 'f-u1000')), [1001, 7]);
  t.deepEqual(
    owner(path.join(lower, 'dir', 'f-u1000')),
    [1000, 1000],
    'the lower layer is untouched',
  );
  t.is(fsopsAs(ROOT, ['chown', path.join(mnt, 'dir', 'f-root'), 5, -1 >>> 0]), 'EINVAL');
  sh('setfacl', ['-m', 'u:101002:r,g:300009:r', path.join(mnt, 'dir', 'f-top')]);
  t.deepEqual(
    namedEntries(ops.getxattr(path.join(upper, 'dir', 'f-top'), 'system.posix_acl_access').value),
    ['g:1009:4', 'u:1002:4'],
  );
});
