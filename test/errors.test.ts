// Every mistake a user can make gives a FusekitError whose code is the errno name and whose
// message says what is wrong; nothing stays mounted and the directories involved are untouched.
import test, { type ExecutionContext } from 'ava';
import { promises as fsp, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { FusekitError, type MountOptions, mount } from '../lib';
import { tmpdir, unmountInTeardown } from './helpers/fixture';
import { inPrivateNamespace, isMounted, nodeArgv, run, snapshot } from './helpers/proc-util';

interface Layout {
  root: string;
  src: string;
  mnt: string;
}

/** root/src (with content) and an empty root/mnt; root is world-searchable for non-root children. */
async function layout(t: ExecutionContext): Promise<Layout> {
  const root = await tmpdir(t);
  await fsp.chmod(root, 0o755);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  await fsp.writeFile(path.join(src, 'file.txt'), 'source content\n');
  await fsp.mkdir(path.join(src, 'dir'));
  await fsp.writeFile(path.join(src, 'dir', 'nested'), Buffer.from([0, 1, 2, 255]));
  await fsp.symlink('file.txt', path.join(src, 'link'));
  return { root, src, mnt };
}

/** Mounting must fail with `code`, a message matching `message`, nothing mounted, nothing changed. */
async function expectFailure(
  t: ExecutionContext,
  l: Layout,
  options: MountOptions,
  code: string,
  message: RegExp,
): Promise<FusekitError> {
  const before = await snapshot(l.root);
  const err = await t.throwsAsync(mount(options));
  t.true(err instanceof FusekitError, `not a FusekitError: ${String(err)}`);
  const fe = err as FusekitError;
  t.is(fe.name, 'FusekitError');
  t.is(fe.code, code, fe.message);
  t.is(fe.errno, (os.constants.errno as Record<string, number>)[code] ?? -1);
  t.regex(fe.message, message);
  t.false(isMounted(l.mnt), 'nothing may stay mounted');
  t.deepEqual(await snapshot(l.root), before, 'the directories are untouched');
  return fe;
}

test('a missing source is ENOENT', async (t) => {
  const l = await layout(t);
  const missing = path.join(l.root, 'nope');
  const e = await expectFailure(
    t,
    l,
    { source: missing, mountpoint: l.mnt },
    'ENOENT',
    /source .*nope does not exist/,
  );
  t.is(e.path, missing);
});

test('a source that is a file is ENOTDIR', async (t) => {
  const l = await layout(t);
  await expectFailure(
    t,
    l,
    { source: path.join(l.src, 'file.txt'), mountpoint: l.mnt },
    'ENOTDIR',
    /source .*file\.txt is not a directory/,
  );
});

test('a missing mount point is ENOENT', async (t) => {
  const l = await layout(t);
  await expectFailure(
    t,
    l,
    { source: l.src, mountpoint: path.join(l.root, 'nope') },
    'ENOENT',
    /mount point .*nope does not exist/,
  );
});

test('a mount point that is a file is ENOTDIR', async (t) => {
  const l = await layout(t);
  const file = path.join(l.root, 'plain');
  await fsp.writeFile(file, 'x');
  await expectFailure(
    t,
    l,
    { source: l.src, mountpoint: file },
    'ENOTDIR',
    /mount point .*plain is not a directory/,
  );
  t.false(isMounted(file));
});

test('a non-empty mount point is ENOTEMPTY, and allowNonEmpty mounts over it', async (t) => {
  const l = await layout(t);
  await fsp.writeFile(path.join(l.mnt, 'hidden'), 'under the mount');
  await expectFailure(
    t,
    l,
    { source: l.src, mountpoint: l.mnt },
    'ENOTEMPTY',
    /not empty .*allowNonEmpty/,
  );

  const m = await mount({ source: l.src, mountpoint: l.mnt, allowNonEmpty: true });
  unmountInTeardown(t, m);
  t.true(isMounted(l.mnt));
  t.deepEqual((await fsp.readdir(l.mnt)).sort(), (await fsp.readdir(l.src)).sort());
  t.is(await fsp.readFile(path.join(l.mnt, 'file.txt'), 'utf8'), 'source content\n');
  await m.unmount();
  t.false(isMounted(l.mnt));
  t.deepEqual(await fsp.readdir(l.mnt), ['hidden']);
  t.is(await fsp.readFile(path.join(l.mnt, 'hidden'), 'utf8'), 'under the mount');
});

test('mounting on a live mount point is EBUSY and leaves the first mount serving', async (t) => {
  const l = await layout(t);
  const m = await mount({ source: l.src, mountpoint: l.mnt });
  unmountInTeardown(t, m);
  const other = path.join(l.root, 'other');
  await fsp.mkdir(other);
  const before = await snapshot(l.src);
  const err = await t.throwsAsync(mount({ source: other, mountpoint: l.mnt }));
  t.true(err instanceof FusekitError);
  t.is((err as FusekitError).code, 'EBUSY');
  t.regex(err.message, /already a mount point/);
  t.is(await fsp.readFile(path.join(l.mnt, 'file.txt'), 'utf8'), 'source content\n');
  t.deepEqual(await snapshot(l.src), before);
  t.is(mountsAt(l.mnt), 1, 'exactly one mount on the mount point');
  await m.unmount();
  t.false(isMounted(l.mnt));
});

test('two concurrent mounts on one mount point: one wins, the other is EBUSY, nothing stacks', async (t) => {
  const l = await layout(t);
  const results = await Promise.allSettled([
    mount({ source: l.src, mountpoint: l.mnt }),
    mount({ source: l.src, mountpoint: l.mnt }),
  ]);
  for (const r of results) if (r.status === 'fulfilled') unmountInTeardown(t, r.value);
  const ok = results.filter((r) => r.status === 'fulfilled');
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.is(ok.length, 1);
  t.is(failed.length, 1);
  t.true(failed[0]!.reason instanceof FusekitError);
  t.is((failed[0]!.reason as FusekitError).code, 'EBUSY');
  t.is(mountsAt(l.mnt), 1);
  await (ok[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof mount>>>).value.unmount();
  t.false(isMounted(l.mnt));
});

function mountsAt(dir: string): number {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => line.split(' ')[4] === dir).length;
}

// ---- invalid options: rejected before anything touches the system

const invalid: [string, Record<string, unknown>, RegExp][] = [
  ['an unknown option key', { bogus: true }, /unknown option 'bogus'/],
  ['a misspelt option key', { readonly: true }, /unknown option 'readonly'/],
  ['readOnly as a string', { readOnly: 'yes' }, /readOnly must be a boolean/],
  ['allowOther as a number', { allowOther: 1 }, /allowOther must be a boolean/],
  ['threads as a string', { threads: '4' }, /threads must be a finite number/],
  ['threads = 0', { threads: 0 }, /threads must be between 1 and 1024/],
  ['threads above the maximum', { threads: 1025 }, /threads must be between 1 and 1024/],
  ['fractional threads', { threads: 1.5 }, /threads must be an integer/],
  ['NaN threads', { threads: NaN }, /threads must be a finite number/],
  ['uringQueueDepth = 0', { uringQueueDepth: 0 }, /uringQueueDepth must be between 1 and 4096/],
  [
    'uringQueueDepth above the maximum',
    { uringQueueDepth: 4097 },
    /uringQueueDepth must be between/,
  ],
  ['a negative entryTimeout', { entryTimeout: -1 }, /entryTimeout must be between 0 and/],
  ['an infinite attrTimeout', { attrTimeout: Infinity }, /attrTimeout must be a finite number/],
  ['a huge negativeTimeout', { negativeTimeout: 1e8 }, /negativeTimeout must be between 0 and/],
  ['passthrough = "yes"', { passthrough: 'yes' }, /passthrough must be one of auto, on, off/],
  ['passthrough = true', { passthrough: true }, /passthrough must be one of/],
  ['transport = "uring"', { transport: 'uring' }, /transport must be one of auto, io_uring, dev/],
  ['a subtype with a space', { subtype: 'my fs' }, /subtype must match/],
  ['a subtype with a comma', { subtype: 'a,b' }, /subtype must match/],
  ['a too long subtype', { subtype: 'x'.repeat(33) }, /subtype must match/],
  ['an empty subtype', { subtype: '' }, /subtype must be a non-empty string/],
  ['an fsname with a NUL', { fsname: 'a\0b' }, /fsname must be a non-empty string/],
  ['an empty source', { source: '' }, /source must be a non-empty path/],
  ['a numeric source', { source: 42 }, /source must be a non-empty path/],
  ['a missing mountpoint', { mountpoint: undefined }, /mountpoint must be a non-empty path/],
  ['a mountpoint with a NUL', { mountpoint: '/tmp/a\0b' }, /mountpoint must be a non-empty path/],
];

for (const [what, override, message] of invalid) {
  test(`invalid options: ${what} is EINVAL`, async (t) => {
    const l = await layout(t);
    const options = { source: l.src, mountpoint: l.mnt, ...override } as unknown as MountOptions;
    await expectFailure(t, l, options, 'EINVAL', message);
  });
}

test('mount() without an options object is EINVAL', async (t) => {
  for (const bad of [undefined, null, 'src'] as unknown[]) {
    const err = await t.throwsAsync(mount(bad as MountOptions));
    t.true(err instanceof FusekitError);
    t.is((err as FusekitError).code, 'EINVAL');
    t.regex(err.message, /options object|non-empty path/);
  }
});

// ---- environments the test process itself must not change: run the mount in a child

interface ChildReport {
  ok: boolean;
  isFusekitError?: boolean;
  code?: string;
  message?: string;
  mounted?: boolean;
  transport?: string;
}

/** Runs test/helpers/child-mount.ts ('report' mode), wrapped in `wrap` (e.g. setpriv ...). */
async function childMount(
  t: ExecutionContext,
  wrap: string[],
  options: MountOptions,
): Promise<ChildReport> {
  const argv = [
    ...wrap,
    ...nodeArgv('test/helpers/child-mount.ts', JSON.stringify({ options, mode: 'report' })),
  ];
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: 60_000 });
  t.is(r.code, 0, `child failed: ${r.stderr}`);
  const lines = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as ChildReport & { unmounted?: boolean });
  // The outcome first; after a successful mount the child unmounts and says whether it is gone.
  if (lines[0]?.ok) t.like(lines[1], { unmounted: true, mounted: false });
  return lines[0]!;
}

test("passthrough 'on' without CAP_SYS_ADMIN is EPERM", async (t) => {
  const l = await layout(t);
  const before = await snapshot(l.root);
  const r = await childMount(
    t,
    ['setpriv', '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-sys_admin'],
    {
      source: l.src,
      mountpoint: l.mnt,
      passthrough: 'on',
    },
  );
  t.false(r.ok);
  t.true(r.isFusekitError);
  t.is(r.code, 'EPERM');
  t.regex(r.message!, /passthrough 'on' needs CAP_SYS_ADMIN/);
  t.false(r.mounted);
  t.false(isMounted(l.mnt));
  t.deepEqual(await snapshot(l.root), before);
});

test("transport 'io_uring' with FUSE-over-io_uring disabled is EOPNOTSUPP ('auto' falls back to /dev/fuse)", async (t) => {
  const l = await layout(t);
  // The kernel parameter is global and other tests run at the same time: hide it behind a bind
  // mount in a private mount namespace instead of changing it.
  const off = path.join(l.root, 'enable_uring');
  await fsp.writeFile(off, 'N\n');
  const wrap = inPrivateNamespace(`mount --bind ${off} /sys/module/fuse/parameters/enable_uring`);
  const before = await snapshot(l.src);

  const r = await childMount(t, wrap, { source: l.src, mountpoint: l.mnt, transport: 'io_uring' });
  t.false(r.ok);
  t.true(r.isFusekitError);
  t.is(r.code, 'EOPNOTSUPP');
  t.regex(r.message!, /io_uring.*enable_uring/);
  t.false(r.mounted, 'nothing mounted in the child namespace');

  const auto = await childMount(t, wrap, { source: l.src, mountpoint: l.mnt, transport: 'auto' });
  t.true(auto.ok, JSON.stringify(auto));
  t.is(auto.transport, 'dev');

  t.false(isMounted(l.mnt));
  t.deepEqual(await snapshot(l.src), before);
});

test('no /dev/fuse is ENODEV with a message naming /dev/fuse', async (t) => {
  const l = await layout(t);
  const before = await snapshot(l.root);
  const r = await childMount(t, inPrivateNamespace('mount -t tmpfs -o mode=755 none /dev'), {
    source: l.src,
    mountpoint: l.mnt,
  });
  t.false(r.ok);
  t.true(r.isFusekitError);
  t.is(r.code, 'ENODEV');
  t.regex(r.message!, /\/dev\/fuse/);
  t.false(r.mounted);
  t.false(isMounted(l.mnt));
  t.deepEqual(await snapshot(l.root), before);
});

test('no permission on /dev/fuse (a non-root user) is EACCES', async (t) => {
  const l = await layout(t);
  // /dev/fuse is root-only here; the user can reach source and mount point.
  await fsp.chmod(l.mnt, 0o777);
  const before = await snapshot(l.root);
  const r = await childMount(
    t,
    ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'],
    {
      source: l.src,
      mountpoint: l.mnt,
    },
  );
  t.false(r.ok);
  t.true(r.isFusekitError);
  t.is(r.code, 'EACCES');
  t.regex(r.message!, /\/dev\/fuse/);
  t.false(r.mounted);
  t.false(isMounted(l.mnt));
  t.deepEqual(await snapshot(l.root), before);
});
