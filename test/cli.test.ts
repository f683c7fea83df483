// The `fusekit` command line, run as `node --import tsx lib/cli.ts ...` from the repository root.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';

import { OPTION_SPECS } from '../lib';
import { tmpdir } from './helpers/fixture';
import {
  findProcesses,
  isMounted,
  mountTable,
  repoRoot,
  run,
  snapshot,
  umountLazy,
  waitFor,
  within,
} from './helpers/proc-util';

const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

function cli(args: string[], timeoutMs = 60_000): ReturnType<typeof run> {
  return run(process.execPath, ['--import', 'tsx', 'lib/cli.ts', ...args], { timeoutMs });
}

async function layout(t: ExecutionContext): Promise<{ root: string; src: string; mnt: string }> {
  const root = await tmpdir(t);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  await fsp.writeFile(path.join(src, 'hello.txt'), 'hello from the source\n');
  await fsp.mkdir(path.join(src, 'dir'));
  // In teardown whatever happened: no daemon and no mount left behind.
  t.teardown(async () => {
    for (const pid of findProcesses('lib/cli.ts', mnt)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await waitFor(`${mnt} unmounted`, () => !isMounted(mnt), 5_000).catch(() => umountLazy(mnt));
  });
  return { root, src, mnt };
}

test('--help lists every mount option as a kebab-case flag', async (t) => {
  const r = await cli(['--help']);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  const names = Object.keys(OPTION_SPECS);
  t.true(names.length > 10);
  for (const name of names) {
    const spec = OPTION_SPECS[name]!;
    const line = lines.find(
      (l) => l.trimStart().startsWith(`--${kebab(name)} `) || l.trim() === `--${kebab(name)}`,
    );
    t.truthy(line, `--${kebab(name)} is not listed`);
    t.true(line!.includes(spec.help), `help text of --${kebab(name)}`);
    if (spec.kind === 'enum') t.true(line!.includes(`<${spec.values.join('|')}>`), line);
  }
  t.regex(r.stdout, /^\s+--background\b/m);
  t.regex(r.stdout, /fusekit mount SOURCE MOUNTPOINT/);
  t.regex(r.stdout, /fusekit umount MOUNTPOINT/);
  t.is((await cli(['-h'])).stdout, r.stdout);
});

test('--version prints the package version', async (t) => {
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as {
    version: string;
  };
  const r = await cli(['--version']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, `fusekit ${pkg.version}\n`);
});

test('mount --background returns once the mount is live; umount removes it and the daemon exits', async (t) => {
  const { src, mnt } = await layout(t);
  const before = await snapshot(src);
  const r = await cli([
    'mount',
    src,
    mnt,
    '--background',
    '--read-only',
    '--passthrough',
    'off',
    '--threads',
    '4',
    '--attr-timeout',
    '30',
  ]);
  t.is(r.code, 0, r.stderr);
  // Live the moment the command has returned.
  t.true(isMounted(mnt));
  t.true((await fsp.stat(mnt)).isDirectory());
  t.is(await fsp.readFile(path.join(mnt, 'hello.txt'), 'utf8'), 'hello from the source\n');
  const entry = mountTable().find((e) => e.mountpoint === mnt)!;
  t.is(entry.fstype, 'fuse.fusekit');
  t.true(entry.options.split(',').includes('ro'));
  await t.throwsAsync(fsp.writeFile(path.join(mnt, 'new.txt'), 'x'), { code: 'EROFS' });
  await t.throwsAsync(fsp.writeFile(path.join(mnt, 'hello.txt'), 'x'), { code: 'EROFS' });
  await t.throwsAsync(fsp.mkdir(path.join(mnt, 'newdir')), { code: 'EROFS' });
  t.true(findProcesses('--daemon-child', mnt).length > 0, 'a daemon serves the mount');

  const u = await cli(['umount', mnt]);
  t.is(u.code, 0, u.stderr);
  t.false(isMounted(mnt));
  await waitFor(
    'the daemon to exit',
    () => findProcesses('--daemon-child', mnt).length === 0,
    30_000,
  );
  t.deepEqual(await fsp.readdir(mnt), []);
  t.deepEqual(await snapshot(src), before);
});

test('foreground mount serves until SIGINT, then unmounts and exits 0', async (t) => {
  const { src, mnt } = await layout(t);
  const child = spawn(process.execPath, ['--import', 'tsx', 'lib/cli.ts', 'mount', src, mnt], {
    cwd: repoRoot,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) =>
    child.on('exit', (c, s) => r([c, s])),
  );
  await waitFor(
    'the mount banner',
    () => stderr.includes('mounted at') || child.exitCode !== null,
    60_000,
  );
  t.regex(
    stderr,
    new RegExp(`${src} mounted at ${mnt} \\(transport (io_uring|dev), passthrough (on|off)\\)`),
  );
  t.true(isMounted(mnt));
  t.is(await fsp.readFile(path.join(mnt, 'hello.txt'), 'utf8'), 'hello from the source\n');
  await fsp.writeFile(path.join(mnt, 'written.txt'), 'through the foreground mount');
  child.kill('SIGINT');
  t.deepEqual(await within('foreground exit', exited), [0, null]);
  t.false(isMounted(mnt));
  t.deepEqual(await fsp.readdir(mnt), []);
  t.is(await fsp.readFile(path.join(src, 'written.txt'), 'utf8'), 'through the foreground mount');
});

test('fusekit umount of a foreground mount makes the serving process exit 0', async (t) => {
  const { src, mnt } = await layout(t);
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'lib/cli.ts', 'mount', src, mnt, '--transport', 'dev'],
    { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) =>
    child.on('exit', (c, s) => r([c, s])),
  );
  await waitFor(
    'the mount banner',
    () => stderr.includes('mounted at') || child.exitCode !== null,
    60_000,
  );
  t.regex(stderr, /transport dev/);
  const u = await cli(['umount', mnt]);
  t.is(u.code, 0, u.stderr);
  t.deepEqual(await within('foreground exit', exited), [0, null]);
  t.false(isMounted(mnt));
});

const usageErrors: [string, (src: string, mnt: string) => string[], RegExp][] = [
  ['an unknown flag', (s, m) => ['mount', s, m, '--bogus'], /unknown option --bogus/],
  [
    'a non-numeric --threads',
    (s, m) => ['mount', s, m, '--threads', 'abc'],
    /invalid --threads: .*threads must be a finite number/,
  ],
  [
    '--threads 0',
    (s, m) => ['mount', s, m, '--threads', '0'],
    /invalid --threads: .*between 1 and 1024/,
  ],
  [
    'an empty --attr-timeout',
    (s, m) => ['mount', s, m, '--attr-timeout='],
    /invalid --attr-timeout/,
  ],
  [
    'a bad --passthrough value',
    (s, m) => ['mount', s, m, '--passthrough', 'maybe'],
    /invalid --passthrough: .*one of auto, on, off/,
  ],
  [
    'a bad --transport value',
    (s, m) => ['mount', s, m, '--transport=uring'],
    /invalid --transport/,
  ],
  ['a bad --subtype', (s, m) => ['mount', s, m, '--subtype', 'a b'], /invalid --subtype/],
  [
    'a flag missing its value',
    (s, m) => ['mount', s, m, '--passthrough'],
    /--passthrough needs a value/,
  ],
  [
    'a value given to a boolean flag',
    (s, m) => ['mount', s, m, '--read-only=maybe'],
    /--read-only takes no value/,
  ],
  ['mount without a mount point', (s) => ['mount', s], /mount needs SOURCE and MOUNTPOINT/],
  ['mount with three paths', (s, m) => ['mount', s, m, m], /mount needs SOURCE and MOUNTPOINT/],
  ['umount without a path', () => ['umount'], /umount needs MOUNTPOINT/],
  ['an unknown command', () => ['frobnicate'], /unknown command frobnicate/],
];

for (const [what, args, message] of usageErrors) {
  test(`usage error: ${what} exits 2 with a message`, async (t) => {
    const { src, mnt } = await layout(t);
    const r = await cli(args(src, mnt));
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, new RegExp('^fusekit: ' + message.source));
    t.regex(r.stderr, /Usage:/);
    t.false(isMounted(mnt));
  });
}

test('no arguments prints the usage and exits 2', async (t) => {
  const r = await cli([]);
  t.is(r.code, 2);
  t.regex(r.stdout, /Usage:/);
});

test('mount errors exit 1 with the FusekitError message (foreground and background)', async (t) => {
  const { root, src, mnt } = await layout(t);
  const missing = path.join(root, 'missing');
  for (const bg of [[], ['--background']]) {
    const r1 = await cli(['mount', missing, mnt, ...bg]);
    t.is(r1.code, 1, r1.stderr);
    t.is(r1.stderr, `fusekit: source ${missing} does not exist (ENOENT)\n`);

    await fsp.writeFile(path.join(mnt, 'occupied'), '');
    const r2 = await cli(['mount', src, mnt, ...bg]);
    t.is(r2.code, 1, r2.stderr);
    t.regex(
      r2.stderr,
      /^fusekit: mount point .*mnt is not empty \(allowNonEmpty: true mounts over it\)\n$/,
    );
    await fsp.rm(path.join(mnt, 'occupied'));

    t.false(isMounted(mnt));
    t.is(findProcesses('--daemon-child', mnt).length, 0, 'no daemon left');
  }
});

test('fusekit umount of a path that is not mounted exits 1 with the reason', async (t) => {
  const { mnt } = await layout(t);
  const r = await cli(['umount', mnt]);
  t.is(r.code, 1);
  t.regex(r.stderr, /^fusekit: unmounting .*mnt failed: Invalid argument\n$/);
});
