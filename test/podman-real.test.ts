// podman itself with fusekit-overlay as its overlay mount_program: a container runs on the merged
// view, its changes land in its upper layer in the kernel's format, `podman commit` turns that
// upper into an image layer, and a container of the new image sees the change. This is the
// contract test of podman-cli.test.ts done by the real client (Debian 12's podman 4.3 with crun).
//
// The image is made locally (`podman import` of a busybox root filesystem): no registry is
// reachable. podman runs in a private mount namespace (its storage mounts and the container's
// end with it), with cgroups disabled: crun refuses a hybrid cgroup v1/v2 layout, so where
// /sys/fs/cgroup is not cgroup2 the namespace gets a cgroup2 mount of its own there.
import test, { type ExecutionContext } from 'ava';
import { promises as fsp, accessSync, constants, existsSync, lstatSync } from 'node:fs';
import * as path from 'node:path';

import { tmpdir } from './helpers/fixture';
import { findProcesses, inPrivateNamespace, repoRoot, run, waitFor } from './helpers/proc-util';

const prog = path.join(repoRoot, 'dist', 'lib', 'overlay-cli.js');

interface Podman {
  (
    ...args: string[]
  ): Promise<{ code: number | null; stdout: string; stderr: string; mountsLeft: number }>;
  storage: string;
}

async function podmanIn(t: ExecutionContext, root: string): Promise<Podman> {
  const storage = path.join(root, 'storage');
  const conf = path.join(root, 'storage.conf');
  await fsp.writeFile(
    conf,
    [
      '[storage]',
      'driver = "overlay"',
      `graphroot = "${storage}"`,
      `runroot = "${path.join(root, 'run')}"`,
      '[storage.options.overlay]',
      `mount_program = "${prog}"`,
      '',
    ].join('\n'),
  );
  const cgroup2 =
    '{ [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || { umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup; }; }';
  // After podman, still in its namespace: how many fusekit-overlay mounts it left (podman
  // unmounts a container's merged dir with fusermount3 -u when the container stops).
  const after =
    'podman "$@"; rc=$?; echo "fusekit-overlay mounts left: $(grep -c " fuse.fusekit-overlay " /proc/self/mounts)"; exit $rc';
  const ns = inPrivateNamespace(cgroup2);
  const fn = (async (...args: string[]) => {
    const r = await run(
      ns[0]!,
      [
        ...ns.slice(1),
        'sh',
        '-c',
        after,
        'sh',
        '--cgroup-manager=cgroupfs',
        '--events-backend=none',
        ...args,
      ],
      { env: { ...process.env, CONTAINERS_STORAGE_CONF: conf }, timeoutMs: 120_000 },
    );
    const m = /fusekit-overlay mounts left: (\d+)\n$/.exec(r.stdout);
    return {
      code: r.code,
      stdout: m ? r.stdout.slice(0, m.index) : r.stdout,
      stderr: r.stderr,
      mountsLeft: m ? Number(m[1]) : -1,
    };
  }) as Podman;
  fn.storage = storage;
  t.teardown(async () => {
    // Whatever podman left: its containers, then any daemon still serving one of its layers.
    await fn('rm', '-af').catch(() => undefined);
    await fn('rmi', '-af').catch(() => undefined);
    for (const pid of findProcesses(storage)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });
  return fn;
}

// A container's flags: no network, no cgroups, and limits the sandbox lets crun set.
const runFlags = [
  '--cgroups=disabled',
  '--network=none',
  '--ulimit=nofile=1024:4096',
  '--ulimit=nproc=4096:4096',
];

test.serial(
  'podman runs a container on fusekit-overlay and commits its upper as a layer',
  async (t) => {
    t.timeout(10 * 60_000);
    const which = await run('sh', ['-c', 'command -v podman crun busybox']);
    t.is(which.code, 0, 'podman, crun and busybox are installed (scripts/install-deps.sh)');
    accessSync(prog, constants.X_OK); // podman execs it directly: the build leaves it executable

    const root = await tmpdir(t, 'fusekit-podman-');
    const podman = await podmanIn(t, root);

    // A busybox root filesystem with a file to change and one to delete.
    const rootfs = path.join(root, 'rootfs');
    for (const d of ['bin', 'etc', 'tmp', 'data'])
      await fsp.mkdir(path.join(rootfs, d), { recursive: true });
    await fsp.copyFile(
      (await run('sh', ['-c', 'command -v busybox'])).stdout.trim(),
      path.join(rootfs, 'bin', 'busybox'),
    );
    await fsp.chmod(path.join(rootfs, 'bin', 'busybox'), 0o755);
    await fsp.symlink('busybox', path.join(rootfs, 'bin', 'sh'));
    await fsp.writeFile(path.join(rootfs, 'etc', 'greeting'), 'hello from the lower layer\n');
    await fsp.writeFile(path.join(rootfs, 'data', 'keep'), 'kept\n');
    await fsp.writeFile(path.join(rootfs, 'data', 'gone'), 'deleted in the container\n');
    const tar = path.join(root, 'rootfs.tar');
    t.is((await run('tar', ['-C', rootfs, '-cf', tar, '.'])).code, 0);
    const imp = await podman('import', tar, 'localhost/fusekit-test:base');
    t.is(imp.code, 0, imp.stderr);

    // The container: reads the lower file, writes, appends to a lower file (copy-up), deletes one.
    const script = [
      'cat /etc/greeting',
      'echo new > /etc/new',
      'echo more >> /data/keep',
      'rm /data/gone',
      'mkdir /data/dir',
      '/bin/busybox grep " / " /proc/mounts',
      'ls /data',
    ].join(' && ');
    const ran = await podman(
      'run',
      ...runFlags,
      '--name',
      'c1',
      'localhost/fusekit-test:base',
      '/bin/sh',
      '-c',
      script,
    );
    t.is(ran.code, 0, ran.stderr);
    const out = ran.stdout.split('\n');
    t.is(out[0], 'hello from the lower layer');
    t.regex(
      ran.stdout,
      /^fusekit-overlay \/ fuse\.fusekit-overlay /m,
      'the root is a fusekit-overlay mount',
    );
    t.deepEqual(out.slice(2).filter(Boolean).sort(), ['dir', 'keep']);

    // The container has stopped: podman unmounted the merged dir and the daemon ended.
    t.is(ran.mountsLeft, 0, 'podman unmounted the merged dir');
    await waitFor('the daemon to exit', () => findProcesses(prog, podman.storage).length === 0);

    // Its upper layer, in the kernel's format: the new file, the copied-up file, a whiteout.
    const layers = path.join(podman.storage, 'overlay');
    const uppers: string[] = [];
    for (const id of await fsp.readdir(layers)) {
      if (existsSync(path.join(layers, id, 'diff', 'etc', 'new')))
        uppers.push(path.join(layers, id, 'diff'));
    }
    t.is(uppers.length, 1, 'exactly one layer holds the container changes');
    const upper = uppers[0]!;
    t.is(await fsp.readFile(path.join(upper, 'etc', 'new'), 'utf8'), 'new\n');
    t.is(await fsp.readFile(path.join(upper, 'data', 'keep'), 'utf8'), 'kept\nmore\n');
    const wh = lstatSync(path.join(upper, 'data', 'gone'));
    t.true(
      wh.isCharacterDevice() && wh.rdev === 0,
      'a deletion is a 0/0 character device whiteout',
    );
    t.false(
      existsSync(path.join(upper, 'etc', 'greeting')),
      'an unchanged lower file is not copied up',
    );

    // podman commit reads that upper into an image layer; a container of the image sees the changes.
    const commit = await podman('commit', 'c1', 'localhost/fusekit-test:changed');
    t.is(commit.code, 0, commit.stderr);
    const check = await podman(
      'run',
      ...runFlags,
      '--rm',
      'localhost/fusekit-test:changed',
      '/bin/sh',
      '-c',
      'cat /etc/new /data/keep /etc/greeting; ls -a /data; test ! -e /data/gone && echo no-gone',
    );
    t.is(check.code, 0, check.stderr);
    t.is(
      check.stdout,
      'new\nkept\nmore\nhello from the lower layer\n.\n..\ndir\nkeep\nno-gone\n',
      'the committed layer carries the file, the copy-up and the deletion',
    );
    t.is(check.mountsLeft, 0);
    await waitFor('the daemon to exit', () => findProcesses(prog, podman.storage).length === 0);
  },
);
