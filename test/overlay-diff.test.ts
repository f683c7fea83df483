// Differential test: kernel overlayfs and the fusekit overlay over the same lower layers (shared,
// read-only) with separate upper/work dirs run the same seeded random sequence of operations.
// Every operation must end the same way on both (success, or the same errno, and the same
// observable result), and the final merged views must be identical: names, types, modes,
// owners, sizes, data, link targets, non-directory link counts, xattrs, getdents types, and the
// inode-number relations (which names share an inode, which objects keep their lower number).
//
// The kernel runs with redirect_dir=on,index=on,metacopy=off: fusekit renames lower directories
// with redirects, and copies lower hard links up through an index as index=on does (index=off
// breaks the links, see the documented differences at the end).
//
// A failing sequence reproduces with FUSEKIT_DIFF_SEED=<seed> (and FUSEKIT_DIFF_OPS=<n>).
import test, { type ExecutionContext } from 'ava';
import { execSync } from 'node:child_process';
import { constants as C } from 'node:fs';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Mount } from '../lib';
import { tmpdir } from './helpers/fixture';
import type { Server } from './helpers/fsops';
import {
  DT,
  type Obj,
  buildStandardLowers,
  fsopsServer,
  fusekitOverlay,
  inodeClasses,
  kernelOverlay,
  mkdirs,
  pattern,
  sha256,
  snapshot,
  typeOf,
  umountQuiet,
  view,
} from './helpers/overlay-util';

/** mulberry32: a small seeded PRNG, so a sequence is reproducible from its seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Env {
  root: string;
  lower: string[];
  kmnt: string;
  fmnt: string;
  s: Server;
}

/** Shared lowers, one kernel and one fusekit overlay with their own upper/work. The two mount
 * points have symmetric parents, so a symlink that leads one level out of a mount lands in
 * equivalent places for both. */
interface Config {
  seed: number;
  passthrough: 'auto' | 'off';
  /** No entry/attribute caching in the kernel: every access looks the name up again, which is
   * where an in-memory state that disagrees with the layers on disk shows. */
  nocache: boolean;
  /** File-handle mode with this tiny descriptor cache: states are evicted and reopened all the
   * time, across copy-up, rename and unlink. */
  maxFds?: number;
}

async function setup(t: ExecutionContext, c: Config): Promise<Env & { fm: Mount }> {
  const root = await tmpdir(t, 'fusekit-ovdiff-');
  const s = fsopsServer(t);
  const lower = await buildStandardLowers(s, root);
  const kmnt = path.join(root, 'k', 'mnt');
  const fmnt = path.join(root, 'f', 'mnt');
  mkdirs(kmnt, fmnt, ...['ku', 'kw', 'fu', 'fw'].map((d) => path.join(root, d)));
  const fm = await fusekitOverlay(
    t,
    { lower, upper: path.join(root, 'fu'), work: path.join(root, 'fw'), mnt: fmnt },
    {
      passthrough: c.passthrough,
      ...(c.nocache ? { entryTimeout: 0, attrTimeout: 0 } : {}),
      ...(c.maxFds ? { fileHandles: 'on' as const, maxFds: c.maxFds } : {}),
    },
  );
  kernelOverlay(t, {
    lower,
    upper: path.join(root, 'ku'),
    work: path.join(root, 'kw'),
    mnt: kmnt,
  });
  return { root, lower, kmnt, fmnt, s, fm };
}

// ---- the operations

const NAMES = ['f1', 'f0', 'n1', 'n2', 'b', 'c', 'hl1', 'new', 'x', 'y', 'e', 'sub', 'link'];
const UIDS = [0, 1000, 1001];
const XNAMES = ['user.a', 'user.b', 'user.color'];

type Outcome = string;

const errCode = (e: unknown): string => {
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  throw e;
};

function attempt(fn: () => string | void): Outcome {
  try {
    const r = fn();
    return r === undefined ? 'OK' : `OK ${r}`;
  } catch (e) {
    return errCode(e);
  }
}

/** What a stat shows that both overlays must agree on (directory link counts and st_ino differ
 * by design, see the file header). */
function statSummary(p: string, follow = false): string {
  const st = (follow ? fs.statSync : fs.lstatSync)(p, { bigint: true });
  const type = typeOf(st);
  const base = `${type} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid}`;
  return type === 'dir' ? base : `${base} size=${st.size} nlink=${st.nlink}`;
}

function readNonBlocking(p: string): string {
  const fd = fs.openSync(p, C.O_RDONLY | C.O_NONBLOCK);
  try {
    const chunks: Buffer[] = [];
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
    return sha256(Buffer.concat(chunks));
  } finally {
    fs.closeSync(fd);
  }
}

function writeAt(p: string, flags: number, data: Buffer, pos: number | null): void {
  const fd = fs.openSync(p, flags | C.O_NONBLOCK, 0o644);
  try {
    fs.writeSync(fd, data, 0, data.length, pos);
  } finally {
    fs.closeSync(fd);
  }
}

/** One operation, chosen from the random stream and the current (kernel) view; `run` performs it
 * on one mount and reports its outcome. */
interface Op {
  desc: string;
  run: (mnt: string) => Promise<Outcome>;
}

/** Relative paths of everything in the view, directories separately ('' is the root). */
function scan(mnt: string): { all: string[]; dirs: string[]; listing: string[] } {
  const all: string[] = [];
  const dirs: string[] = [''];
  const listing: string[] = [];
  const walk = (rel: string): void => {
    for (const d of fs
      .readdirSync(path.join(mnt, rel), { withFileTypes: true })
      .sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      all.push(r);
      const st = fs.lstatSync(path.join(mnt, r), { bigint: true });
      const type = typeOf(st);
      // Sizes and link counts too, so a divergence shows at the operation that caused it.
      listing.push(type === 'dir' ? `${r}:${type}` : `${r}:${type}:${st.size}:${st.nlink}`);
      if (type === 'dir') {
        dirs.push(r);
        walk(r);
      }
    }
  };
  walk('');
  return { all, dirs, listing };
}

function chooseOp(rand: () => number, v: { all: string[]; dirs: string[] }, s: Server): Op {
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)]!;
  const int = (n: number): number => Math.floor(rand() * n);
  const existing = (): string => (v.all.length ? pick(v.all) : 'a');
  const fresh = (): string => {
    const d = pick(v.dirs);
    return d ? `${d}/${pick(NAMES)}` : pick(NAMES);
  };
  // Mostly existing paths, sometimes a name that may or may not exist.
  const anyPath = (): string => (rand() < 0.8 ? existing() : fresh());
  const data = (): Buffer => pattern(1 + int(rand() < 0.2 ? 200000 : 6000), int(1e9));
  const fsop = async (mnt: string, ...args: (string | number)[]): Promise<Outcome> => {
    const r = await s.call(
      ...args.map((a) =>
        typeof a === 'string' && a.startsWith('@') ? path.join(mnt, a.slice(1)) : a,
      ),
    );
    return r.errno ?? 'OK';
  };
  const J = (mnt: string, rel: string): string => path.join(mnt, rel);

  const ops: [number, () => Op][] = [
    [
      6,
      () => {
        const p = fresh();
        const d = data();
        return {
          desc: `create ${p} (${d.length} bytes)`,
          run: async (m) =>
            attempt(() => writeAt(J(m, p), C.O_CREAT | C.O_EXCL | C.O_WRONLY, d, 0)),
        };
      },
    ],
    [
      4,
      () => {
        const p = anyPath();
        const d = data();
        return {
          desc: `write-truncate ${p} (${d.length} bytes)`,
          run: async (m) =>
            attempt(() => writeAt(J(m, p), C.O_CREAT | C.O_TRUNC | C.O_WRONLY, d, 0)),
        };
      },
    ],
    [
      7,
      () => {
        const p = existing();
        const d = data();
        const off = int(80000);
        return {
          desc: `pwrite ${p} @${off} (${d.length} bytes)`,
          run: async (m) => attempt(() => writeAt(J(m, p), C.O_WRONLY, d, off)),
        };
      },
    ],
    [
      5,
      () => {
        const p = existing();
        const d = data();
        return {
          desc: `append ${p} (${d.length} bytes)`,
          run: async (m) => attempt(() => writeAt(J(m, p), C.O_WRONLY | C.O_APPEND, d, null)),
        };
      },
    ],
    [
      4,
      () => {
        const p = existing();
        const len = pick([0, 1, 100, 4096, 70001, 1 << 20]);
        return {
          desc: `truncate ${p} ${len}`,
          run: async (m) => attempt(() => fs.truncateSync(J(m, p), len)),
        };
      },
    ],
    [
      6,
      () => {
        const p = anyPath();
        return { desc: `read ${p}`, run: async (m) => attempt(() => readNonBlocking(J(m, p))) };
      },
    ],
    [
      6,
      () => {
        const p = anyPath();
        return { desc: `lstat ${p}`, run: async (m) => attempt(() => statSummary(J(m, p))) };
      },
    ],
    [
      5,
      () => {
        const p = anyPath();
        return { desc: `unlink ${p}`, run: async (m) => attempt(() => fs.unlinkSync(J(m, p))) };
      },
    ],
    [
      4,
      () => {
        const p = fresh();
        const mode = pick([0o755, 0o700, 0o2775]);
        return {
          desc: `mkdir ${p} ${mode.toString(8)}`,
          run: async (m) => attempt(() => fs.mkdirSync(J(m, p), mode)),
        };
      },
    ],
    [
      4,
      () => {
        const p = rand() < 0.7 ? pick(v.dirs.slice(1).length ? v.dirs.slice(1) : ['a']) : anyPath();
        return { desc: `rmdir ${p}`, run: async (m) => attempt(() => fs.rmdirSync(J(m, p))) };
      },
    ],
    [
      8,
      () => {
        const a = rand() < 0.3 && v.dirs.length > 1 ? pick(v.dirs.slice(1)) : existing();
        const b = rand() < 0.5 ? fresh() : anyPath();
        return {
          desc: `rename ${a} -> ${b}`,
          run: async (m) => attempt(() => fs.renameSync(J(m, a), J(m, b))),
        };
      },
    ],
    [
      3,
      () => {
        const a = existing();
        const b = anyPath();
        return {
          desc: `rename noreplace ${a} -> ${b}`,
          run: (m) => fsop(m, 'rename2', `@${a}`, `@${b}`, 'noreplace'),
        };
      },
    ],
    [
      4,
      () => {
        const a = rand() < 0.4 && v.dirs.length > 1 ? pick(v.dirs.slice(1)) : existing();
        const b = existing();
        return {
          desc: `rename exchange ${a} <-> ${b}`,
          run: (m) => fsop(m, 'rename2', `@${a}`, `@${b}`, 'exchange'),
        };
      },
    ],
    [
      3,
      () => {
        const p = fresh();
        // A bare name (same directory) or one level up: targets stay inside the mount, or reach the
        // symmetric parent of both mounts.
        const target = rand() < 0.8 ? pick(NAMES) : `../${pick(NAMES)}`;
        return {
          desc: `symlink ${p} -> ${target}`,
          run: async (m) => attempt(() => fs.symlinkSync(target, J(m, p))),
        };
      },
    ],
    [
      4,
      () => {
        const a = existing();
        const b = fresh();
        return {
          desc: `link ${a} => ${b}`,
          run: async (m) => attempt(() => fs.linkSync(J(m, a), J(m, b))),
        };
      },
    ],
    [
      4,
      () => {
        const p = anyPath();
        const mode = pick([0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000]);
        return {
          desc: `chmod ${p} ${mode.toString(8)}`,
          run: async (m) =>
            attempt(() => {
              fs.chmodSync(J(m, p), mode);
              return statSummary(J(m, p), true);
            }),
        };
      },
    ],
    [
      3,
      () => {
        const p = anyPath();
        const u = pick(UIDS);
        const g = pick(UIDS);
        const follow = rand() < 0.5;
        return {
          desc: `${follow ? 'chown' : 'lchown'} ${p} ${u}:${g}`,
          run: async (m) =>
            attempt(() => {
              (follow ? fs.chownSync : fs.lchownSync)(J(m, p), u, g);
              return statSummary(J(m, p), follow);
            }),
        };
      },
    ],
    [
      3,
      () => {
        const p = anyPath();
        const at = 1_000_000_000 + int(1e8) + 0.5;
        const mt = 1_100_000_000 + int(1e8) + 0.25;
        const follow = rand() < 0.6;
        return {
          desc: `${follow ? 'utimes' : 'lutimes'} ${p} ${at} ${mt}`,
          run: async (m) =>
            attempt(() => {
              (follow ? fs.utimesSync : fs.lutimesSync)(J(m, p), at, mt);
              const st = (follow ? fs.statSync : fs.lstatSync)(J(m, p), { bigint: true });
              return `${statSummary(J(m, p), follow)} mtime=${st.mtimeNs}`;
            }),
        };
      },
    ],
    [
      4,
      () => {
        const p = anyPath();
        const name = pick(XNAMES);
        const value = Buffer.from(`v${int(1000)}`).toString('hex');
        const flag = pick(['0', '0', 'create', 'replace']);
        return {
          desc: `setxattr ${p} ${name}=${value} ${flag}`,
          run: (m) => fsop(m, 'setxattr', `@${p}`, name, value, flag),
        };
      },
    ],
    [
      2,
      () => {
        const p = anyPath();
        const name = pick(XNAMES);
        return {
          desc: `removexattr ${p} ${name}`,
          run: (m) => fsop(m, 'removexattr', `@${p}`, name),
        };
      },
    ],
    [
      3,
      () => {
        const p = anyPath();
        return {
          desc: `listxattr ${p}`,
          run: async (m) => {
            const r = await s.call('llistxattr', J(m, p));
            if (r.errno) return r.errno;
            const names = (r.names as string[]).slice().sort();
            const vals: string[] = [];
            for (const n of names) {
              const g = await s.call('lgetxattr', J(m, p), n);
              vals.push(`${n}=${g.errno ?? (g.value as string)}`);
            }
            return `OK ${vals.join(',')}`;
          },
        };
      },
    ],
    [
      2,
      () => {
        const p = fresh();
        return { desc: `mkfifo ${p}`, run: (m) => fsop(m, 'mknod', `@${p}`, 'fifo', '640') };
      },
    ],
    [
      3,
      () => {
        const p = pick(v.dirs);
        return {
          desc: `readdir ${p || '.'}`,
          run: async (m) => attempt(() => fs.readdirSync(J(m, p)).sort().join(',')),
        };
      },
    ],
  ];
  const total = ops.reduce((n, [w]) => n + w, 0);
  let r = rand() * total;
  for (const [w, make] of ops) {
    if ((r -= w) < 0) return make();
  }
  return ops[0]![1]();
}

// ---- comparing final views

/** Checks both views, and fusekit's own invariants; returns nothing, asserts through t. */
function compareFinal(
  t: ExecutionContext,
  k: Map<string, Obj>,
  f: Map<string, Obj>,
  lowerInos: Set<bigint>,
  what: string,
): void {
  t.deepEqual(view(f), view(k), `${what}: merged views differ`);
  // getdents: the same names, with the type lstat gives and the inode number stat gives.
  for (const [name, snap] of [
    ['kernel', k],
    ['fusekit', f],
  ] as const) {
    for (const [rel, o] of snap) {
      if (o.type !== 'dir') continue;
      for (const [n, [dino, dtype]] of Object.entries(o.entries!)) {
        const child = snap.get(rel ? `${rel}/${n}` : n);
        if (!child) {
          t.fail(`${what}: ${name}: ${rel}/${n} listed but not found`);
          continue;
        }
        if (dtype !== DT[child.type])
          t.fail(`${what}: ${name}: ${rel}/${n} d_type ${dtype}, lstat says ${child.type}`);
        // (The kernel's d_ino is not always st_ino for entries moved into a pure upper directory;
        // fusekit's always is.)
        if (name === 'fusekit' && BigInt(dino) !== child.ino)
          t.fail(`${what}: ${name}: ${rel}/${n} d_ino ${dino}, st_ino ${child.ino}`);
      }
    }
  }
  // st_ino: the same hard-link classes in both mounts (which also makes them unique per object).
  t.deepEqual(inodeClasses(f), inodeClasses(k), `${what}: inode classes differ`);
  // Objects that come from a lower layer show the lower inode number in both (all layers share
  // one filesystem, where the kernel shows real numbers): kept across copy-up and rename.
  for (const [rel, ko] of k) {
    if (!lowerInos.has(ko.ino)) continue;
    const fo = f.get(rel)!;
    if (fo.ino !== ko.ino)
      t.fail(`${what}: ${rel}: fusekit st_ino ${fo.ino}, kernel ${ko.ino} (the lower's)`);
  }
  // Directory link counts are a deliberate difference: fusekit counts 2 + merged subdirectories;
  // the kernel reports 1 for a merged directory and the real count for a pure upper one.
  for (const [rel, fo] of f) {
    if (fo.type !== 'dir') continue;
    const subdirs = Object.values(fo.entries!).filter(([, dt]) => dt === DT.dir).length;
    if (fo.nlink !== 2 + subdirs)
      t.fail(`${what}: fusekit: ${rel || '.'} nlink ${fo.nlink}, ${subdirs} subdirectories`);
    const kn = k.get(rel)!.nlink;
    if (kn !== 1 && kn !== 2 + subdirs)
      t.fail(`${what}: kernel: ${rel || '.'} nlink ${kn}, ${subdirs} subdirectories`);
  }
}

async function lowerInodes(lower: string[]): Promise<Set<bigint>> {
  const out = new Set<bigint>();
  const walk = (d: string): void => {
    out.add(fs.lstatSync(d, { bigint: true }).ino);
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.add(fs.lstatSync(p, { bigint: true }).ino);
    }
  };
  for (const l of lower) walk(l);
  return out;
}

async function runSequence(t: ExecutionContext, c: Config, count: number): Promise<void> {
  const { seed } = c;
  const env = await setup(t, c);
  const lowerBefore = await lowerInodes(env.lower);
  const rand = rng(seed);
  const history: string[] = [];
  const dumpLog = (): void => {
    // FUSEKIT_DIFF_LOG=file keeps the whole sequence and both upper layers for a post-mortem.
    const log = process.env.FUSEKIT_DIFF_LOG;
    if (!log) return;
    fs.writeFileSync(log, history.join('\n'));
    execSync(
      `(cd ${env.root} && find fu fw ku kw -printf '%p %y %i %n\\n' && getfattr -R -d -m - -P fu fw ku kw; true) > ${log}.layers 2>&1`,
    );
  };
  let okCount = 0;
  for (let i = 0; i < count; i++) {
    const kv = scan(env.kmnt);
    const fv = scan(env.fmnt);
    if (kv.listing.join('\n') !== fv.listing.join('\n')) {
      dumpLog();
      const only = (a: string[], b: string[]): string[] => a.filter((x) => !b.includes(x));
      t.fail(
        `seed ${seed}: listings differ before op #${i}: only in fusekit ${JSON.stringify(only(fv.listing, kv.listing))}, ` +
          `only in the kernel ${JSON.stringify(only(kv.listing, fv.listing))}; last ops:\n${history.slice(-12).join('\n')}`,
      );
      return;
    }
    const op = chooseOp(rand, kv, env.s);
    const ko = await op.run(env.kmnt);
    const fo = await op.run(env.fmnt);
    history.push(`#${i} ${op.desc}: ${ko}`);
    if (ko !== fo) {
      dumpLog();
      t.is(
        fo,
        ko,
        `seed ${seed} op #${i} ${op.desc}: fusekit ${fo}, kernel ${ko}; last ops:\n${history.slice(-12).join('\n')}`,
      );
      return;
    }
    if (ko.startsWith('OK')) okCount++;
  }
  dumpLog();
  t.log(`seed ${seed}: ${count} ops, ${okCount} succeeded`);
  // The sequence must actually have changed things, or the comparison proves little.
  t.true(okCount > count / 3, `only ${okCount} of ${count} operations succeeded`);
  const k = await snapshot(env.s, env.kmnt, { dirents: true });
  const f = await snapshot(env.s, env.fmnt, { dirents: true });
  t.true(k.size > 20);
  compareFinal(t, k, f, lowerBefore, 'live mounts');
  if (c.maxFds) {
    const fds = env.fm.stats().inodeFds;
    t.log(fds);
    t.is(fds.mode, 'handles');
    t.true(fds.open <= fds.capacity, 'the descriptor cache stays bounded');
    t.true(fds.reopens > 0, 'states were evicted and reopened from their handles');
  }

  // What is on disk must say the same as what the live mount said: remount fusekit on its layers.
  await env.fm.unmount();
  const fm2 = await fusekitOverlay(t, {
    lower: env.lower,
    upper: path.join(env.root, 'fu'),
    work: path.join(env.root, 'fw'),
    mnt: env.fmnt,
  });
  compareFinal(
    t,
    k,
    await snapshot(env.s, env.fmnt, { dirents: true }),
    lowerBefore,
    'fusekit remounted',
  );
  await fm2.unmount();

  // The layers are interchangeable: the kernel on fusekit's upper, fusekit on the kernel's.
  umountQuiet(env.kmnt);
  kernelOverlay(t, {
    lower: env.lower,
    upper: path.join(env.root, 'fu'),
    work: path.join(env.root, 'fw'),
    mnt: env.kmnt,
  });
  await fusekitOverlay(t, {
    lower: env.lower,
    upper: path.join(env.root, 'ku'),
    work: path.join(env.root, 'kw'),
    mnt: env.fmnt,
  });
  const kOnF = await snapshot(env.s, env.kmnt, { dirents: true });
  const fOnK = await snapshot(env.s, env.fmnt, { dirents: true });
  t.deepEqual(view(kOnF), view(k), 'kernel overlayfs on the upper fusekit wrote');
  t.deepEqual(
    inodeClasses(kOnF),
    inodeClasses(k),
    'kernel overlayfs on the upper fusekit wrote: inode classes',
  );
  compareFinal(t, k, fOnK, lowerBefore, 'fusekit on the upper kernel overlayfs wrote');
}

const envSeed = process.env.FUSEKIT_DIFF_SEED;
const envOps = Number(process.env.FUSEKIT_DIFF_OPS ?? 400);
const CONFIGS: Config[] = envSeed
  ? [{ seed: Number(envSeed), passthrough: 'auto', nocache: !!process.env.FUSEKIT_DIFF_NOCACHE }]
  : [
      { seed: 1, passthrough: 'auto', nocache: false },
      { seed: 20240611, passthrough: 'auto', nocache: false },
      { seed: 777, passthrough: 'off', nocache: false },
      { seed: 31337, passthrough: 'auto', nocache: true },
      { seed: 4242, passthrough: 'auto', nocache: true, maxFds: 16 },
      { seed: 9001, passthrough: 'off', nocache: false, maxFds: 16 },
    ];

for (const c of CONFIGS) {
  const how =
    `passthrough ${c.passthrough}${c.nocache ? ', no kernel caching' : ''}` +
    (c.maxFds ? `, maxFds ${c.maxFds}` : '');
  test.serial(
    `random sequence, seed ${c.seed}, ${envOps} ops (${how}): kernel overlayfs and fusekit agree`,
    async (t) => {
      await runSequence(t, c, envOps);
    },
  );
}

// ---- deliberate differences from the kernel, each asserted on both sides

/** One lower layer built by `build`, a kernel overlay (with `kopts`) and a fusekit overlay over it. */
async function pair(
  t: ExecutionContext,
  build: (lower: string, s: Server) => Promise<void> | void,
  kopts?: string,
): Promise<{ k: string; f: string; root: string; s: Server }> {
  const root = await tmpdir(t, 'fusekit-ovdiff-');
  const s = fsopsServer(t);
  const lower = path.join(root, 'lower');
  const k = path.join(root, 'k', 'mnt');
  const f = path.join(root, 'f', 'mnt');
  mkdirs(lower, k, f, ...['ku', 'kw', 'fu', 'fw'].map((d) => path.join(root, d)));
  await build(lower, s);
  await fusekitOverlay(t, {
    lower: [lower],
    upper: path.join(root, 'fu'),
    work: path.join(root, 'fw'),
    mnt: f,
  });
  kernelOverlay(t, {
    lower: [lower],
    upper: path.join(root, 'ku'),
    work: path.join(root, 'kw'),
    mnt: k,
    ...(kopts ? { options: kopts } : {}),
  });
  return { k, f, root, s };
}

test('difference: a merged directory has nlink 2 + subdirectories in fusekit, 1 in the kernel', async (t) => {
  const { k, f, root } = await pair(t, (lower) =>
    mkdirs(path.join(lower, 'm/s1'), path.join(lower, 'm/s2')),
  );
  for (const mnt of [k, f]) fs.mkdirSync(path.join(mnt, 'm', 's3')); // m now merges upper and lower
  t.is(fs.lstatSync(path.join(k, 'm')).nlink, 1);
  t.is(fs.lstatSync(path.join(f, 'm')).nlink, 2 + 3);
  // Both agree on a directory that is not merged (it has its real count).
  t.is(fs.lstatSync(path.join(k, 'm', 's3')).nlink, 2);
  t.is(fs.lstatSync(path.join(f, 'm', 's3')).nlink, 2);
  t.true(fs.existsSync(path.join(root, 'fu', 'm', 's3')));
});

test('difference: with the kernel at index=off, a copy-up breaks a lower hard link; fusekit keeps it (index)', async (t) => {
  const { k, f } = await pair(
    t,
    (lower) => {
      fs.writeFileSync(path.join(lower, 'h1'), 'old\n');
      fs.linkSync(path.join(lower, 'h1'), path.join(lower, 'h2'));
    },
    'redirect_dir=on,index=off,metacopy=off',
  );
  for (const mnt of [k, f]) fs.appendFileSync(path.join(mnt, 'h1'), 'new\n');
  // The kernel: h1 is a new upper file, h2 still the lower one.
  t.is(fs.readFileSync(path.join(k, 'h2'), 'utf8'), 'old\n');
  t.is(fs.lstatSync(path.join(k, 'h1')).nlink, 1);
  t.not(fs.lstatSync(path.join(k, 'h1')).ino, fs.lstatSync(path.join(k, 'h2')).ino);
  // fusekit: both names are still one inode with the new data.
  t.is(fs.readFileSync(path.join(f, 'h2'), 'utf8'), 'old\nnew\n');
  t.is(fs.lstatSync(path.join(f, 'h1')).nlink, 2);
  t.is(fs.lstatSync(path.join(f, 'h1')).ino, fs.lstatSync(path.join(f, 'h2')).ino);
});

test('difference: renaming a lower directory whose redirect exceeds redirect_max: kernel EXDEV, fusekit renames', async (t) => {
  const long = ['a', 'b', 'c'].map((c) => c.repeat(100));
  const rel = path.join(...long, 'd');
  const { k, f, root, s } = await pair(t, (lower) => {
    mkdirs(path.join(lower, rel));
    fs.writeFileSync(path.join(lower, rel, 'file'), 'content\n');
  });
  // The kernel refuses redirects longer than its redirect_max (256) with EXDEV, which makes
  // mv(1) fall back to copying; fusekit records any redirect that fits an xattr.
  t.is(
    errCode(captureError(() => fs.renameSync(path.join(k, rel), path.join(k, 'moved')))),
    'EXDEV',
  );
  fs.renameSync(path.join(f, rel), path.join(f, 'moved'));
  t.is(fs.readFileSync(path.join(f, 'moved', 'file'), 'utf8'), 'content\n');
  t.false(fs.existsSync(path.join(f, rel)));
  const redirect = await s.ok(
    'lgetxattr',
    path.join(root, 'fu', 'moved'),
    'trusted.overlay.redirect',
  );
  t.is(Buffer.from(redirect.value as string, 'hex').toString(), '/' + rel);
  // Where the redirect is short enough both rename the lower directory alike.
  for (const mnt of [k, f]) fs.renameSync(path.join(mnt, long[0]!), path.join(mnt, 'short'));
  t.deepEqual(fs.readdirSync(path.join(f, 'short')), fs.readdirSync(path.join(k, 'short')));
});

test('agreement: without redirects (kernel redirect_dir=off, fusekit redirectDir: false) both refuse to rename a lower directory with EXDEV', async (t) => {
  const root = await tmpdir(t, 'fusekit-ovdiff-');
  const lower = path.join(root, 'lower');
  mkdirs(
    path.join(lower, 'dir'),
    ...['k', 'f', 'ku', 'kw', 'fu', 'fw'].map((d) => path.join(root, d)),
  );
  fs.writeFileSync(path.join(lower, 'file'), 'x');
  await fusekitOverlay(t, {
    lower: [lower],
    upper: path.join(root, 'fu'),
    work: path.join(root, 'fw'),
    mnt: path.join(root, 'f'),
    redirectDir: false,
  });
  kernelOverlay(t, {
    lower: [lower],
    upper: path.join(root, 'ku'),
    work: path.join(root, 'kw'),
    mnt: path.join(root, 'k'),
    options: 'redirect_dir=off,index=off,metacopy=off',
  });
  for (const m of ['k', 'f']) {
    const mnt = path.join(root, m);
    t.is(
      errCode(captureError(() => fs.renameSync(path.join(mnt, 'dir'), path.join(mnt, 'dir2')))),
      'EXDEV',
      m,
    );
    // Files and new directories still move.
    fs.renameSync(path.join(mnt, 'file'), path.join(mnt, 'file2'));
    fs.mkdirSync(path.join(mnt, 'new'));
    fs.renameSync(path.join(mnt, 'new'), path.join(mnt, 'new2'));
    t.deepEqual(fs.readdirSync(mnt).sort(), ['dir', 'file2', 'new2'], m);
  }
});

function captureError(fn: () => void): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return Object.assign(new Error('no error'), { code: 'OK' });
}
