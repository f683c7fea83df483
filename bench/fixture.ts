// Fixtures, made once and kept under bench/fixtures/ (git-ignored). Each target serves its own
// copy, so no target reads another target's cached inodes (but the overlays, which never change
// their lower layer, share one: see suites.ts):
// - src/<target>: a Debian minbase root filesystem (made once with debootstrap, kept as
//   rootfs.tar) unpacked as rootfs/, and read.bin (passthrough suite);
// - lower/<copy>: the same plus data.bin of BENCH_SIZE (a copy, for the copy-up), files/
//   (BENCH_FILES small files) and an empty work/, used as the lower layer of the overlays
//   (overlay suite);
// - tree/<target>: tree/ (BENCH_TREE_FILES files, a git repository when git is installed) and
//   chg/ (BENCH_CHANGES files for the change-latency helper) (cache and memory suites).
// read.bin, which the read workloads read, is one hard link of the shared data file in every
// copy: the same blocks of the disk for every target. Copies sit at different places of the
// disk, and one 1 GiB copy read ~100 ms slower than another here, whoever read it.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { check, exists, FIXTURES, formatSize, log, run } from './util';

export const ROOTFS_TAR = path.join(FIXTURES, 'rootfs.tar');

/** The Debian archive of this machine's own release, read from the apt sources (never hardcoded). */
export async function debianMirror(): Promise<{ mirror: string; codename: string }> {
  const osr = await fsp.readFile('/etc/os-release', 'utf8');
  const codename = /^VERSION_CODENAME=("?)([^"\n]*)\1$/m.exec(osr)?.[2] ?? '';
  if (!codename) throw new Error('cannot tell the Debian release from /etc/os-release');
  const dir = '/etc/apt/sources.list.d';
  const files = (await fsp.readdir(dir).catch(() => [])).filter((f) => f.endsWith('.sources'));
  for (const f of files) {
    // deb822: blank-line separated stanzas; the plain codename suite, not -updates/-security.
    for (const stanza of (await fsp.readFile(path.join(dir, f), 'utf8')).split(/\n\s*\n/)) {
      const field = (name: string): string[] =>
        new RegExp(`^${name}:[ \\t]*(.*)$`, 'mi').exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
      if (!field('Types').includes('deb') || !field('Suites').includes(codename)) continue;
      const uri = field('URIs')[0];
      if (uri) return { mirror: uri, codename };
    }
  }
  const legacy = await fsp.readFile('/etc/apt/sources.list', 'utf8').catch(() => '');
  for (const line of legacy.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'deb' && f[2] === codename && f[1]) return { mirror: f[1], codename };
  }
  throw new Error(`cannot find the Debian archive for '${codename}' in the apt sources`);
}

/** Makes bench/fixtures/rootfs.tar with debootstrap unless it already exists. */
export async function ensureRootfsTar(): Promise<void> {
  if (await exists(ROOTFS_TAR)) return;
  await fsp.mkdir(FIXTURES, { recursive: true });
  if ((await run('sh', ['-c', 'command -v debootstrap'])).code !== 0) {
    log('installing debootstrap');
    if ((await run('apt-get', ['install', '-y', 'debootstrap'])).code !== 0) {
      await check('apt-get', ['update']);
      await check('apt-get', ['install', '-y', 'debootstrap']);
    }
  }
  const { mirror, codename } = await debianMirror();
  const work = path.join(FIXTURES, 'debootstrap.tmp');
  await fsp.rm(work, { recursive: true, force: true });
  log(`debootstrap --variant=minbase ${codename} (a few minutes, once)`);
  try {
    await check('debootstrap', ['--variant=minbase', codename, work, mirror]);
    // Device nodes are left out: a FUSE mount without `dev` rightly refuses mknod of them, and
    // they say nothing about file-system speed. The apt cache is emptied like in a container image.
    await check('tar', [
      '-C',
      work,
      '--exclude=./dev/*',
      '--exclude=./var/cache/apt/archives/*.deb',
      '-cf',
      ROOTFS_TAR + '.tmp',
      '.',
    ]);
    await fsp.rename(ROOTFS_TAR + '.tmp', ROOTFS_TAR);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
    await fsp.rm(ROOTFS_TAR + '.tmp', { force: true });
  }
}

/** A data file of `size` random bytes, made once per size and copied into each source. */
async function ensureDataFile(size: number): Promise<string> {
  const file = path.join(FIXTURES, `data-${formatSize(size)}.bin`);
  if (await exists(file)) return file;
  log(`making ${formatSize(size)} data file`);
  await check('sh', [
    '-c',
    `head -c ${size} /dev/urandom > "$1.tmp" && mv "$1.tmp" "$1"`,
    'sh',
    file,
  ]);
  return file;
}

/** What the fixtures depend on (from the environment; see run.ts). */
export interface FixtureConfig {
  /** Size of data.bin in bytes (BENCH_SIZE). */
  size: number;
  /** Small files of the metadata workloads (BENCH_FILES). */
  files: number;
  /** Files of the large tree (BENCH_TREE_FILES). */
  treeFiles: number;
  /** Changes of the change-latency workload, one file each (BENCH_CHANGES). */
  changes: number;
}

/** A kind of directory the targets serve, one copy per target (or per shared copy name). */
export interface Fixture {
  /** Directory under bench/fixtures holding the copies. */
  readonly name: string;
  /** Makes the copy (slow, once) and returns its directory. */
  ensure(copy: string, cfg: FixtureConfig): Promise<string>;
  /**
   * Brings a copy that workloads wrote to back to its pristine state (untimed): used for the
   * directories workloads run in directly (native, passthrough sources), never for overlay lowers,
   * which the overlays leave alone.
   */
  restore(dir: string, cfg: FixtureConfig): Promise<void>;
}

async function emptyDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  for (const e of await fsp.readdir(dir))
    await fsp.rm(path.join(dir, e), { recursive: true, force: true });
}

/** Unpacks the rootfs into dir/rootfs once; the marker holds its entry count. */
async function ensureRootfs(dir: string): Promise<void> {
  const tree = path.join(dir, 'rootfs');
  const marker = path.join(dir, '.tree-done');
  if (await exists(marker)) return;
  log(`unpacking rootfs into ${path.relative(FIXTURES, tree)}`);
  await fsp.rm(tree, { recursive: true, force: true });
  await fsp.mkdir(tree);
  await check('tar', ['-C', tree, '-xf', ROOTFS_TAR]);
  await fsp.writeFile(marker, String(await countEntries(tree)));
}

/** Entries under dir, symbolic links not followed (the rootfs has absolute ones). */
async function countEntries(dir: string): Promise<number> {
  let n = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    n++;
    if (e.isDirectory()) n += await countEntries(path.join(dir, e.name));
  }
  return n;
}

/** dir/data.bin of exactly `size` bytes, copied from the shared random data file. */
async function ensureData(dir: string, size: number): Promise<void> {
  const data = path.join(dir, 'data.bin');
  const st = await fsp.stat(data).catch(() => undefined);
  if (st?.size === size) return;
  await fsp.rm(data, { force: true });
  await check('cp', [await ensureDataFile(size), data + '.tmp']);
  await fsp.rename(data + '.tmp', data);
}

/**
 * dir/read.bin: a hard link of the shared data file of `size` bytes (its size is part of the
 * shared file's name, so a run with another size links another file).
 */
async function ensureReadFile(dir: string, size: number): Promise<void> {
  const shared = await ensureDataFile(size);
  const link = path.join(dir, 'read.bin');
  const [want, have] = await Promise.all([
    fsp.stat(shared),
    fsp.lstat(link).catch(() => undefined),
  ]);
  if (have && have.ino === want.ino && have.dev === want.dev) return;
  await fsp.rm(link, { force: true });
  await fsp.link(shared, link);
}

/**
 * The source directory of one target, created on first use and reused. Everything the workloads
 * write goes under work/, which is emptied (untimed) before every run.
 */
export async function ensureSource(slug: string, size: number): Promise<string> {
  await ensureRootfsTar();
  const dir = path.join(FIXTURES, 'src', slug);
  await fsp.mkdir(dir, { recursive: true });
  await ensureRootfs(dir);
  await ensureReadFile(dir, size);
  // Sources made before read.bin held a 1 GiB copy that nothing reads any more.
  await fsp.rm(path.join(dir, 'data.bin'), { force: true });
  return dir;
}

/** Passthrough suite: rootfs/, data.bin and a scratch work/. */
export const sourceFixture: Fixture = {
  name: 'src',
  ensure: (copy, cfg) => ensureSource(copy, cfg.size),
  async restore(dir) {
    // Leftovers of an interrupted run would change what the next run measures.
    await fsp.rm(path.join(dir, 'work'), { recursive: true, force: true });
    await fsp.mkdir(path.join(dir, 'work'));
  },
};

const SMALL_FILE = Buffer.alloc(1024, 'x');
const SMALL_MODE = 0o644;
const LOWER_ENTRIES = ['rootfs', 'data.bin', 'read.bin', 'files', 'work'];

/** files/f0000000.. of 1 KiB, mode 0644, as many as cfg.files; the marker holds the count. */
async function ensureSmallFiles(dir: string, n: number): Promise<void> {
  const files = path.join(dir, 'files');
  const marker = path.join(dir, '.files-done');
  if ((await fsp.readFile(marker, 'utf8').catch(() => '')) === String(n)) return;
  log(`making ${n} small files in ${path.relative(FIXTURES, files)}`);
  await fsp.rm(marker, { force: true });
  await fsp.rm(files, { recursive: true, force: true });
  await fsp.mkdir(files);
  for (let i = 0; i < n; i++)
    await fsp.writeFile(path.join(files, smallName(i)), SMALL_FILE, { mode: SMALL_MODE });
  await fsp.writeFile(marker, String(n));
}

/** Name of the i-th small file (the naming of bench/c/metaops.c). */
export function smallName(i: number): string {
  return `f${String(i).padStart(7, '0')}`;
}

/**
 * Overlay suite: the lower layer of the overlays (and the native baseline's directory): rootfs/,
 * data.bin, read.bin, files/ (small files for chmod) and an empty work/ for the writing
 * workloads. Overlay workloads change the lower's content as seen through the overlay (rm -rf,
 * chmod, append), so the overlays start every sample from an empty upper and the native copy is
 * restored.
 */
export const lowerFixture: Fixture = {
  name: 'lower',
  async ensure(copy, cfg) {
    await ensureRootfsTar();
    const dir = path.join(FIXTURES, 'lower', copy);
    await fsp.mkdir(dir, { recursive: true });
    await ensureRootfs(dir);
    await ensureData(dir, cfg.size);
    await ensureReadFile(dir, cfg.size);
    await ensureSmallFiles(dir, cfg.files);
    await fsp.mkdir(path.join(dir, 'work'), { recursive: true });
    return dir;
  },
  async restore(dir, cfg) {
    for (const e of await fsp.readdir(dir)) {
      if (!e.startsWith('.') && !LOWER_ENTRIES.includes(e))
        await fsp.rm(path.join(dir, e), { recursive: true, force: true });
    }
    await emptyDir(path.join(dir, 'work'));
    // rm -rf took the tree (or part of it): unpack it again.
    const want = Number(await fsp.readFile(path.join(dir, '.tree-done'), 'utf8').catch(() => -1));
    const rootfs = path.join(dir, 'rootfs');
    const have = await countEntries(rootfs).catch(() => -2);
    if (have !== want) {
      await fsp.rm(path.join(dir, '.tree-done'), { force: true });
      await ensureRootfs(dir);
    }
    // chmod changed the small files' modes.
    const files = path.join(dir, 'files');
    for (let i = 0; i < cfg.files; i++) {
      const f = path.join(files, smallName(i));
      const st = await fsp.lstat(f).catch(() => undefined);
      if (!st) await fsp.writeFile(f, SMALL_FILE, { mode: SMALL_MODE });
      else if ((st.mode & 0o7777) !== SMALL_MODE) await fsp.chmod(f, SMALL_MODE);
    }
    // The copy-up workload appended to data.bin.
    const data = path.join(dir, 'data.bin');
    const st = await fsp.stat(data).catch(() => undefined);
    if (st && st.size > cfg.size) await fsp.truncate(data, cfg.size);
    else await ensureData(dir, cfg.size);
  },
};

/** Whether git is installed: the tree is then a repository and `git status` runs for real. */
export async function haveGit(): Promise<boolean> {
  return (await run('sh', ['-c', 'command -v git'])).code === 0;
}

/** git with no system or user configuration (which could enable fsmonitor, untracked cache...). */
export function gitEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' };
}

export const GIT_CONFIG = [
  '-c',
  'core.fsmonitor=false',
  '-c',
  'core.untrackedCache=false',
  '-c',
  'core.preloadIndex=true',
  '-c',
  'gc.auto=0',
  '-c',
  'user.name=bench',
  '-c',
  'user.email=bench@localhost',
];

/** Path of the i-th file of the tree: 32 top directories of up to 32 leaves of 100 files. */
function treePath(i: number): string {
  const leaf = Math.floor(i / 100);
  const top = Math.floor(leaf / 32);
  return path.join(
    `d${String(top).padStart(3, '0')}`,
    `e${String(leaf % 32).padStart(2, '0')}`,
    `f${String(i % 100).padStart(2, '0')}.c`,
  );
}

/**
 * The template tree: tree/ with n small files (mtimes in the past, so git never finds them
 * racily clean), committed to git when git is installed, and tree.list (every file, then every
 * directory, for the emulation of `git status` without git).
 */
async function ensureTreeTemplate(n: number, git: boolean): Promise<string> {
  const dir = path.join(FIXTURES, 'tree', '.template');
  const marker = path.join(dir, '.done');
  const want = `${n} ${git ? 'git' : 'nogit'}`;
  if ((await fsp.readFile(marker, 'utf8').catch(() => '')) === want) return dir;
  log(`making a tree of ${n} files${git ? ' (git repository)' : ''}, once`);
  await fsp.rm(dir, { recursive: true, force: true });
  const tree = path.join(dir, 'tree');
  await fsp.mkdir(tree, { recursive: true });
  const past = new Date('2020-01-01T00:00:00Z');
  const dirs = new Set<string>();
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const rel = treePath(i);
    const d = path.dirname(rel);
    if (!dirs.has(d)) {
      await fsp.mkdir(path.join(tree, d), { recursive: true });
      dirs.add(path.dirname(d)).add(d);
    }
    const f = path.join(tree, rel);
    await fsp.writeFile(f, `/* file ${i} */\nint f${i}(void) { return ${i}; }\n`);
    await fsp.utimes(f, past, past);
    files.push(rel);
  }
  await fsp.writeFile(
    path.join(dir, 'tree.list'),
    [...files, ...[...dirs].sort().map((d) => `${d}/`)].join('\n') + '\n',
  );
  if (git) {
    const g = (...args: string[]): Promise<unknown> =>
      check('git', ['-C', tree, ...GIT_CONFIG, ...args], { env: gitEnv() });
    await g('init', '-q');
    await g('add', '-A');
    await g('commit', '-q', '-m', 'tree');
    // One pack instead of n loose objects, which would double the files of the walk.
    await g('gc', '-q', '--prune=now');
  }
  await fsp.writeFile(marker, want);
  return dir;
}

/** chg/c0000.. (mode 0644, 1 byte) for the change-latency helper, as many as cfg.changes. */
async function ensureChangeFiles(dir: string, n: number): Promise<void> {
  const chg = path.join(dir, 'chg');
  await fsp.mkdir(chg, { recursive: true });
  for (let i = 0; i < n; i++) {
    const f = path.join(chg, `c${String(i).padStart(4, '0')}`);
    if (!(await exists(f))) await fsp.writeFile(f, 'x', { mode: 0o644 });
  }
}

/**
 * Cache and memory suites: tree/ (cfg.treeFiles files; a git repository when git is installed),
 * tree.list, and chg/ for the change-latency helper.
 */
export const treeFixture: Fixture = {
  name: 'tree',
  async ensure(copy, cfg) {
    const git = await haveGit();
    const template = await ensureTreeTemplate(cfg.treeFiles, git);
    const stamp = await fsp.readFile(path.join(template, '.done'), 'utf8');
    const dir = path.join(FIXTURES, 'tree', copy);
    const marker = path.join(dir, '.done');
    if ((await fsp.readFile(marker, 'utf8').catch(() => '')) !== stamp) {
      log(`copying the tree to ${path.relative(FIXTURES, dir)}`);
      await fsp.rm(dir, { recursive: true, force: true });
      await check('cp', ['-a', template, dir]);
      // The copy's inode numbers and ctimes differ from the index's: refresh it once, so every
      // timed `git status` finds a clean tree by its stat data alone.
      if (git)
        await check(
          'git',
          ['-C', path.join(dir, 'tree'), ...GIT_CONFIG, 'update-index', '-q', '--refresh'],
          {
            env: gitEnv(),
          },
        );
      await fsp.writeFile(marker, stamp);
    }
    await ensureChangeFiles(dir, cfg.changes);
    return dir;
  },
  async restore() {},
};

if (require.main === module) {
  ensureRootfsTar().then(
    () => log(`ready: ${ROOTFS_TAR}`),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
