// Fixtures: a Debian minbase root filesystem (made once with debootstrap, kept as
// bench/fixtures/rootfs.tar), a data file of BENCH_SIZE, and one source directory per target
// holding its own unpacked copy of both, so no target reads another target's cached inodes.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { check, exists, FIXTURES, formatSize, log, run } from './util';

export const ROOTFS_TAR = path.join(FIXTURES, 'rootfs.tar');
const SOURCES = path.join(FIXTURES, 'src');

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

export interface Source {
  /** The target's source directory: rootfs/ (the unpacked tree) and data.bin. */
  dir: string;
  tree: string;
  data: string;
}

/**
 * The source directory of one target, created on first use and reused. Everything the workloads
 * write goes under work/, which is emptied (untimed) after every run.
 */
export async function ensureSource(slug: string, size: number): Promise<Source> {
  await ensureRootfsTar();
  const dir = path.join(SOURCES, slug);
  const tree = path.join(dir, 'rootfs');
  const data = path.join(dir, 'data.bin');
  await fsp.mkdir(dir, { recursive: true });
  if (!(await exists(path.join(dir, '.tree-done')))) {
    log(`unpacking rootfs into ${path.relative(FIXTURES, tree)}`);
    await fsp.rm(tree, { recursive: true, force: true });
    await fsp.mkdir(tree);
    await check('tar', ['-C', tree, '-xf', ROOTFS_TAR]);
    await fsp.writeFile(path.join(dir, '.tree-done'), '');
  }
  const st = await fsp.stat(data).catch(() => undefined);
  if (st?.size !== size) {
    await fsp.rm(data, { force: true });
    await check('cp', [await ensureDataFile(size), data + '.tmp']);
    await fsp.rename(data + '.tmp', data);
  }
  return { dir, tree, data };
}

if (require.main === module) {
  ensureRootfsTar().then(
    () => log(`ready: ${ROOTFS_TAR}`),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
