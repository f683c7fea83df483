// The fusekit-overlay contract with podman/containers-storage (mount_program), run the way podman
// runs it: `fusekit-overlay -o <opts> MERGED` with stdin and stdout on /dev/null and stderr a pipe
// podman reads to EOF. It must exit 0 only once the overlay is live, leave a daemon holding none
// of podman's descriptors, only warn about options it does not know, and end (daemon and mount)
// on `fusermount3 -u MERGED`.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { tmpdir } from './helpers/fixture';
import { kernelWhiteout, mkdirs, mountsUnder } from './helpers/overlay-util';
import { findProcesses, nodeArgv, repoRoot, waitFor } from './helpers/proc-util';
import { server } from './helpers/fsops';

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The mount table entry for MERGED and what stat saw, captured the moment the CLI exited. */
  atExit: { fstype: string | undefined; dev: number | undefined };
  /** Whether stderr reached EOF (nobody else holds its write end). */
  stderrEof: boolean;
}

function fstypeOf(mnt: string): string | undefined {
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[4] === mnt) return f[f.indexOf('-') + 1];
  }
  return undefined;
}

/** Runs the CLI as podman does; stdout is a pipe only when asked (for --version). */
function runCli(args: string[], merged?: string, captureStdout = false): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      nodeArgv('lib/overlay-cli.ts')[0]!,
      [...nodeArgv('lib/overlay-cli.ts').slice(1), ...args],
      {
        cwd: repoRoot,
        stdio: ['ignore', captureStdout ? 'pipe' : 'ignore', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    let eof = false;
    let exit: { code: number | null; atExit: CliResult['atExit'] } | undefined;
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stderr!.on('end', () => {
      eof = true;
      finish();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      // Right away: the mount must already be there when the CLI says so.
      let dev: number | undefined;
      try {
        dev = merged ? fs.statSync(merged).dev : undefined;
      } catch {
        dev = undefined;
      }
      exit = { code, atExit: { fstype: merged ? fstypeOf(merged) : undefined, dev } };
      finish();
      // EOF must follow the exit; a daemon holding the pipe would keep it open forever.
      setTimeout(() => {
        if (!eof) resolve({ ...exit!, stdout, stderr, stderrEof: false });
      }, 30_000).unref();
    });
    function finish(): void {
      if (exit && eof) resolve({ ...exit, stdout, stderr, stderrEof: true });
    }
  });
}

interface Layers {
  root: string;
  l1: string;
  l2: string;
  upper: string;
  work: string;
  merged: string;
}

/** Two lowers (the top one with OCI and kernel whiteouts), upper, work, merged; whatever the
 * test does, the overlay is unmounted and its daemon gone at the end. */
async function layers(t: ExecutionContext): Promise<Layers> {
  const root = await tmpdir(t, 'fusekit-podman-');
  const L: Layers = {
    root,
    l1: path.join(root, 'l1'),
    l2: path.join(root, 'l2'),
    upper: path.join(root, 'upper'),
    work: path.join(root, 'work'),
    merged: path.join(root, 'merged'),
  };
  mkdirs(L.l1, L.l2, L.upper, L.work, L.merged, path.join(L.l2, 'etc'), path.join(L.l1, 'etc'));
  fs.writeFileSync(path.join(L.l2, 'etc/os-release'), 'ID=test\n');
  fs.writeFileSync(path.join(L.l2, 'etc/gone'), 'removed by the top layer\n');
  fs.writeFileSync(path.join(L.l2, 'etc/kgone'), 'removed by a kernel whiteout\n');
  fs.writeFileSync(path.join(L.l1, 'etc/.wh.gone'), '');
  fs.writeFileSync(path.join(L.l1, 'etc/hostname'), 'top\n');
  const s = server(t);
  await kernelWhiteout(path.join(L.l1, 'etc/kgone'), s);
  await s.close();
  t.teardown(async () => {
    if (mountsUnder(root).length) spawnSync('fusermount3', ['-u', '-z', L.merged]);
    for (const pid of findProcesses('--daemon-child', L.merged)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (mountsUnder(root).length) spawnSync('umount', ['-l', L.merged]);
  });
  return L;
}

function ppidOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

async function unmountAndWaitForDaemon(t: ExecutionContext, L: Layers): Promise<void> {
  // The daemon (detached: re-parented away from the CLI) and its forks (the native watchdog).
  const procs = findProcesses('--daemon-child', L.merged);
  const daemons = procs.filter((p) => !procs.includes(ppidOf(p)));
  t.is(daemons.length, 1, 'one daemon serves the mount');
  const r = spawnSync('fusermount3', ['-u', L.merged], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  await waitFor('the daemon to exit', () => findProcesses('--daemon-child', L.merged).length === 0);
  t.deepEqual(mountsUnder(L.root), []);
}

test.serial(
  'mounts as podman runs it: exit 0 once live, stderr released, options warned about, fusermount3 -u ends it',
  async (t) => {
    const L = await layers(t);
    const opts =
      `lowerdir=${L.l1}:${L.l2},upperdir=${L.upper},workdir=${L.work},,volatile,` +
      'context="system_u:object_r:container_file_t:s0:c1,c2",bogus_option=1';
    const parentDev = fs.statSync(L.root).dev;
    const r = await runCli(['-o', opts, L.merged], L.merged);
    t.is(r.code, 0, r.stderr);
    t.is(r.atExit.fstype, 'fuse.fusekit-overlay', 'mounted when the CLI exited');
    t.not(r.atExit.dev, parentDev, 'stat right after exit sees the mount');
    t.true(r.stderrEof, 'stderr reached EOF: the daemon does not hold it');
    t.regex(r.stderr, /warning: context ignored/);
    t.regex(r.stderr, /warning: unknown option bogus_option=1 ignored/);
    t.notRegex(
      r.stderr,
      /volatile|lowerdir|upperdir|workdir/,
      'known options are not warned about',
    );

    // The merged view, with OCI and kernel whiteouts honoured.
    t.deepEqual(fs.readdirSync(path.join(L.merged, 'etc')).sort(), ['hostname', 'os-release']);
    t.is(fs.readFileSync(path.join(L.merged, 'etc/os-release'), 'utf8'), 'ID=test\n');
    // Writes land in the upper.
    fs.writeFileSync(path.join(L.merged, 'etc/hostname'), 'container\n');
    t.is(fs.readFileSync(path.join(L.upper, 'etc/hostname'), 'utf8'), 'container\n');
    t.is(fs.readFileSync(path.join(L.l1, 'etc/hostname'), 'utf8'), 'top\n');
    await unmountAndWaitForDaemon(t, L);
  },
);

test.serial('read-only: lowerdir= only mounts a read-only overlay', async (t) => {
  const L = await layers(t);
  const r = await runCli(['-o', `lowerdir=${L.l1}:${L.l2}`, L.merged], L.merged);
  t.is(r.code, 0, r.stderr);
  t.is(r.atExit.fstype, 'fuse.fusekit-overlay');
  t.true(r.stderrEof);
  t.is(r.stderr, '');
  t.is(fs.readFileSync(path.join(L.merged, 'etc/hostname'), 'utf8'), 'top\n');
  t.throws(() => fs.writeFileSync(path.join(L.merged, 'etc/new'), 'x'), { code: 'EROFS' });
  t.throws(() => fs.unlinkSync(path.join(L.merged, 'etc/hostname')), { code: 'EROFS' });
  t.deepEqual(fs.readdirSync(L.upper), []);
  await unmountAndWaitForDaemon(t, L);
});

test.serial('--version answers on stdout', async (t) => {
  const r = await runCli(['--version'], undefined, true);
  t.is(r.code, 0);
  t.regex(r.stdout, /^fusekit-overlay: version \d+\.\d+\.\d+/m);
  t.regex(r.stdout, /^FUSE library version 3\.\d+/m);
  t.true(r.stderrEof);
});

test.serial('errors exit non-zero with a message on stderr and leave nothing behind', async (t) => {
  const L = await layers(t);
  const missing = path.join(L.root, 'missing');
  const cases: [string, string[], number, RegExp][] = [
    [
      'missing lower',
      ['-o', `lowerdir=${L.l1}:${missing},upperdir=${L.upper},workdir=${L.work}`, L.merged],
      1,
      /missing does not exist/,
    ],
    [
      'missing upper',
      ['-o', `lowerdir=${L.l1},upperdir=${missing},workdir=${L.work}`, L.merged],
      1,
      /missing does not exist/,
    ],
    ['no lowerdir', ['-o', `upperdir=${L.upper},workdir=${L.work}`, L.merged], 1, /no lowerdir/],
    ['no mount point', ['-o', `lowerdir=${L.l1}`], 2, /usage: fusekit-overlay/],
  ];
  for (const [what, args, code, message] of cases) {
    const r = await runCli(args, L.merged);
    t.is(r.code, code, `${what}: ${r.stderr}`);
    t.regex(r.stderr, message, what);
    t.true(r.stderrEof, what);
    t.is(r.atExit.fstype, undefined, `${what}: nothing mounted`);
    await waitFor(
      `${what}: no daemon left`,
      () => findProcesses('--daemon-child', L.merged).length === 0,
    );
  }
  t.deepEqual(mountsUnder(L.root), []);
  t.deepEqual(fs.readdirSync(L.upper), []);
  t.deepEqual(fs.readdirSync(L.work), []);
});
