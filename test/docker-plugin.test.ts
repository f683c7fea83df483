// The Docker volume plugin, driven over its Unix socket the way dockerd drives it (no Docker
// engine runs here): JSON over HTTP POST, errors as {"Err": "..."}.
import test, { type ExecutionContext } from 'ava';
import { promises as fsp, existsSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import { CONTENT_TYPE, type PluginHandle, startPlugin } from '../lib/docker-plugin';
import { tmpdir } from './helpers/fixture';
import {
  inPrivateNamespace,
  isMounted,
  mountTable,
  nodeArgv,
  pattern,
  snapshot,
  spawnChild,
  umountLazy,
  waitFor,
  within,
} from './helpers/proc-util';

interface VolStatus {
  mode?: string;
  source?: string;
  upper?: string;
  mounted?: boolean;
  users?: number;
  transport?: string;
  kernelPassthrough?: boolean;
}
interface Vol {
  Name: string;
  Mountpoint: string;
  CreatedAt?: string;
  Status: VolStatus;
}
/** A reply as the tests read it; a field missing where it is read fails the test with a TypeError. */
interface Body {
  Err?: string;
  Mountpoint?: string;
  Volume: Vol;
  Volumes: Vol[];
  Implements?: string[];
  Capabilities?: { Scope?: string };
}
interface Reply {
  status: number;
  contentType: string | undefined;
  body: Body;
}

function call(socket: string, endpoint: string, body?: unknown): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? '' : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: socket,
        path: endpoint,
        method: 'POST',
        headers: { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(data) },
        agent: false,
      },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => {
          try {
            resolve({
              status: res.statusCode ?? 0,
              contentType: res.headers['content-type'],
              body: JSON.parse(text) as Body,
            });
          } catch (e) {
            reject(new Error(`${endpoint}: not JSON: ${text}`, { cause: e }));
          }
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** A call that must succeed (Err empty or absent). */
async function ok(
  t: ExecutionContext,
  socket: string,
  endpoint: string,
  body?: unknown,
): Promise<Body> {
  const r = await call(socket, endpoint, body);
  t.is(r.body.Err ?? '', '', `${endpoint} ${JSON.stringify(body)}`);
  t.is(r.status, 200, endpoint);
  t.is(r.contentType, CONTENT_TYPE);
  return r.body;
}

/** A call that must fail with an Err matching re. */
async function fails(
  t: ExecutionContext,
  socket: string,
  endpoint: string,
  body: unknown,
  re: RegExp,
): Promise<string> {
  const r = await call(socket, endpoint, body);
  t.regex(String(r.body.Err ?? ''), re, `${endpoint} ${JSON.stringify(body)}`);
  t.is(r.status, 500, endpoint);
  return String(r.body.Err);
}

interface Env {
  root: string;
  stateDir: string;
  socket: string;
  logs: string[];
  start(): Promise<PluginHandle>;
}

/** Temp dirs and a plugin factory; every plugin is closed and every mount removed in teardown. */
async function env(t: ExecutionContext, unmountTimeoutMs?: number): Promise<Env> {
  const root = await tmpdir(t, 'fusekit-docker-');
  const stateDir = path.join(root, 'state');
  const socket = path.join(root, 'run', 'fusekit.sock');
  const logs: string[] = [];
  const handles: PluginHandle[] = [];
  // Registered after tmpdir's removal, so it runs before it.
  t.teardown(async () => {
    for (const h of handles) await within('plugin close', h.close(), 30_000).catch(() => undefined);
    for (const e of mountTable()) if (e.mountpoint.startsWith(root + '/')) umountLazy(e.mountpoint);
  });
  return {
    root,
    stateDir,
    socket,
    logs,
    async start() {
      const h = await startPlugin({
        socket,
        stateDir,
        log: (l) => logs.push(l),
        ...(unmountTimeoutMs ? { unmountTimeoutMs } : {}),
      });
      handles.push(h);
      return h;
    },
  };
}

async function dir(
  root: string,
  name: string,
  files: Record<string, string> = {},
): Promise<string> {
  const d = path.join(root, name);
  await fsp.mkdir(d, { recursive: true });
  for (const [f, content] of Object.entries(files)) await fsp.writeFile(path.join(d, f), content);
  return d;
}

const merged = (e: Env, name: string): string => path.join(e.stateDir, 'volumes', name, 'merged');

test('Activate and Capabilities', async (t) => {
  const e = await env(t);
  await e.start();
  const a = await call(e.socket, '/Plugin.Activate');
  t.is(a.status, 200);
  t.is(a.contentType, CONTENT_TYPE);
  t.deepEqual(a.body, { Implements: ['VolumeDriver'] });
  t.deepEqual((await call(e.socket, '/VolumeDriver.Capabilities', {})).body, {
    Capabilities: { Scope: 'local' },
  });
  t.is((await call(e.socket, '/VolumeDriver.Nope', {})).status, 404);
  t.is((await fsp.stat(e.socket)).mode & 0o777, 0o600);
});

test('passthrough volume: create, get, list, path, two mounts, unmounts, remove', async (t) => {
  const e = await env(t);
  await e.start();
  const src = await dir(e.root, 'src', { 'hello.txt': 'hello\n' });
  const mp = merged(e, 'data');

  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'data', Opts: { source: src } });
  t.false(isMounted(mp), 'Create mounts only to check, and unmounts again');
  const got = await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'data' });
  t.is(got.Volume.Name, 'data');
  t.is(got.Volume.Mountpoint, mp);
  t.is(got.Volume.Status.mode, 'passthrough');
  t.is(got.Volume.Status.source, src);
  t.false(got.Volume.Status.mounted);
  const list = await ok(t, e.socket, '/VolumeDriver.List', {});
  t.deepEqual(
    list.Volumes.map((v) => [v.Name, v.Mountpoint]),
    [['data', mp]],
  );
  t.is((await ok(t, e.socket, '/VolumeDriver.Path', { Name: 'data' })).Mountpoint, mp);

  const m1 = await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'data', ID: 'c1' });
  const m2 = await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'data', ID: 'c2' });
  t.is(m1.Mountpoint, mp);
  t.is(m2.Mountpoint, mp);
  const entries = mountTable().filter((x) => x.mountpoint === mp);
  t.is(entries.length, 1, 'mounted once for both IDs');
  t.is(entries[0]!.fstype, 'fuse.fusekit');
  t.is(await fsp.readFile(path.join(mp, 'hello.txt'), 'utf8'), 'hello\n');
  const data = pattern(3 * 1024 * 1024 + 17, 7);
  await fsp.writeFile(path.join(mp, 'blob.bin'), data);
  await fsp.mkdir(path.join(mp, 'sub'));
  await fsp.writeFile(path.join(mp, 'sub', 'x'), 'x');
  t.true((await fsp.readFile(path.join(src, 'blob.bin'))).equals(data), 'byte for byte');
  t.is(await fsp.readFile(path.join(src, 'sub', 'x'), 'utf8'), 'x');
  const st = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'data' })).Volume.Status;
  t.true(st.mounted);
  t.is(st.users, 2);

  await fails(t, e.socket, '/VolumeDriver.Remove', { Name: 'data' }, /mounted.*EBUSY/);
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'data', ID: 'c1' });
  t.true(isMounted(mp), 'still mounted for c2');
  // An ID that never mounted changes nothing.
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'data', ID: 'stranger' });
  t.true(isMounted(mp));
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'data', ID: 'c2' });
  t.false(isMounted(mp), 'unmounted after the last Unmount');
  t.false((await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'data' })).Volume.Status.mounted);

  // Mounts again after it was unmounted.
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'data', ID: 'c3' });
  t.true(isMounted(mp));
  t.is(await fsp.readFile(path.join(mp, 'sub', 'x'), 'utf8'), 'x');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'data', ID: 'c3' });
  t.false(isMounted(mp));

  const before = await snapshot(src);
  await ok(t, e.socket, '/VolumeDriver.Remove', { Name: 'data' });
  t.deepEqual((await ok(t, e.socket, '/VolumeDriver.List', {})).Volumes, []);
  t.false(existsSync(path.dirname(mp)), "the volume's directory is gone");
  t.deepEqual(await snapshot(src), before, 'the source is untouched by Remove');
  await fails(t, e.socket, '/VolumeDriver.Get', { Name: 'data' }, /no such volume: data/);
});

test('overlay volume: writes land in the plugin-made upper, lower unchanged; Remove deletes it', async (t) => {
  const e = await env(t);
  await e.start();
  const top = await dir(e.root, 'top', { 'a.txt': 'top a\n' });
  const base = await dir(e.root, 'base', { 'a.txt': 'base a\n', 'b.txt': 'base b\n' });
  await fsp.chmod(top, 0o777);
  await fsp.chown(top, 1234, 5678);
  const lowerBefore = { top: await snapshot(top), base: await snapshot(base) };
  const vol = path.join(e.stateDir, 'volumes', 'ovl');
  const mp = merged(e, 'ovl');

  await ok(t, e.socket, '/VolumeDriver.Create', {
    Name: 'ovl',
    Opts: { lower: `${top}:${base}` },
  });
  t.true((await fsp.stat(path.join(vol, 'upper'))).isDirectory());
  t.true((await fsp.stat(path.join(vol, 'work'))).isDirectory());
  const status = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'ovl' })).Volume.Status;
  t.is(status.mode, 'overlay');
  t.is(status.upper, path.join(vol, 'upper'));

  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'ovl', ID: 'c1' });
  // The root looks like the top layer's, so a container user it allows may write there.
  const rootSt = await fsp.stat(mp);
  t.is(rootSt.mode & 0o777, 0o777);
  t.is(rootSt.uid, 1234);
  t.is(rootSt.gid, 5678);
  t.is(await fsp.readFile(path.join(mp, 'a.txt'), 'utf8'), 'top a\n');
  t.is(await fsp.readFile(path.join(mp, 'b.txt'), 'utf8'), 'base b\n');
  await fsp.writeFile(path.join(mp, 'new.txt'), 'new\n');
  await fsp.appendFile(path.join(mp, 'b.txt'), 'more\n');
  await fsp.unlink(path.join(mp, 'a.txt'));
  t.is(await fsp.readFile(path.join(vol, 'upper', 'new.txt'), 'utf8'), 'new\n');
  t.is(await fsp.readFile(path.join(vol, 'upper', 'b.txt'), 'utf8'), 'base b\nmore\n');
  t.false(existsSync(path.join(mp, 'a.txt')));
  t.deepEqual({ top: await snapshot(top), base: await snapshot(base) }, lowerBefore);
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'ovl', ID: 'c1' });
  t.false(isMounted(mp));

  // The upper persists across mounts.
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'ovl', ID: 'c2' });
  t.is(await fsp.readFile(path.join(mp, 'new.txt'), 'utf8'), 'new\n');
  t.false(existsSync(path.join(mp, 'a.txt')));
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'ovl', ID: 'c2' });

  await ok(t, e.socket, '/VolumeDriver.Remove', { Name: 'ovl' });
  t.false(existsSync(vol), 'the plugin-made upper and work are gone');
  t.deepEqual({ top: await snapshot(top), base: await snapshot(base) }, lowerBefore);
});

test('overlay with a given upper and work keeps them on Remove; readonly and uidmap', async (t) => {
  const e = await env(t);
  await e.start();
  const lower = await dir(e.root, 'lower', { 'f.txt': 'lower\n' });
  await fsp.chown(path.join(lower, 'f.txt'), 0, 0);
  const upper = await dir(e.root, 'upper');
  const work = await dir(e.root, 'work');
  await ok(t, e.socket, '/VolumeDriver.Create', {
    Name: 'given',
    // Stored ids 0-99 show as 4000-4099; stored 100 shows as root, who writes in the test.
    Opts: { lower, upper, work, uidmap: '0:4000:100:100:0:1', gidmap: '0:5000:100:100:0:1' },
  });
  const mp = merged(e, 'given');
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'given', ID: 'c' });
  const st = await fsp.stat(path.join(mp, 'f.txt'));
  t.is(st.uid, 4000, 'stored uid 0 shows as host uid 4000');
  t.is(st.gid, 5000);
  await fsp.writeFile(path.join(mp, 'w.txt'), 'w');
  t.is(await fsp.readFile(path.join(upper, 'w.txt'), 'utf8'), 'w');
  t.is((await fsp.stat(path.join(upper, 'w.txt'))).uid, 100, 'root writes as stored uid 100');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'given', ID: 'c' });
  await ok(t, e.socket, '/VolumeDriver.Remove', { Name: 'given' });
  t.is(await fsp.readFile(path.join(upper, 'w.txt'), 'utf8'), 'w', 'a given upper is not removed');
  t.true(existsSync(work));

  // readonly: a read-only overlay (no upper made) and a read-only passthrough.
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'ro1', Opts: { lower, readonly: 'true' } });
  t.false(existsSync(path.join(e.stateDir, 'volumes', 'ro1', 'upper')));
  await ok(t, e.socket, '/VolumeDriver.Create', {
    Name: 'ro2',
    Opts: { source: lower, readonly: '', transport: 'dev', passthrough: 'off', watch: 'true' },
  });
  for (const name of ['ro1', 'ro2']) {
    await ok(t, e.socket, '/VolumeDriver.Mount', { Name: name, ID: 'c' });
    if (name === 'ro2') {
      const st = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: name })).Volume.Status;
      t.is(st.transport, 'dev');
      t.false(st.kernelPassthrough);
      // watch=true: a change made to the source outside the mount shows at once.
      await fsp.writeFile(path.join(lower, 'outside.txt'), 'outside');
      await waitFor(
        'the change to show',
        () => existsSync(path.join(merged(e, name), 'outside.txt')),
        10_000,
      );
      await fsp.unlink(path.join(lower, 'outside.txt'));
    }
    t.is(await fsp.readFile(path.join(merged(e, name), 'f.txt'), 'utf8'), 'lower\n');
    await t.throwsAsync(fsp.writeFile(path.join(merged(e, name), 'x'), 'x'), { code: 'EROFS' });
    await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: name, ID: 'c' });
  }
});

test('bad options, missing directories and bad names fail Create with Err', async (t) => {
  const e = await env(t);
  await e.start();
  const src = await dir(e.root, 'src');
  const create = (Name: unknown, Opts: unknown): Promise<Reply> =>
    call(e.socket, '/VolumeDriver.Create', { Name, Opts });
  const cases: Array<[Record<string, string> | null, RegExp]> = [
    [{ source: src, colour: 'blue' }, /unknown option 'colour'.*known: source, lower/],
    [null, /exactly one of source=DIR.*lower=/],
    [{}, /exactly one of source=DIR/],
    [{ source: src, lower: src }, /exactly one of source/],
    [{ source: 'relative/dir' }, /source must be an absolute path/],
    [{ source: src, upper: src, work: src }, /upper and work go with lower/],
    [{ lower: src, upper: path.join(e.root, 'u') }, /upper and work go together/],
    [{ lower: `${src}::${src}` }, /lower must be directories separated by ':'/],
    [{ source: src, readonly: 'maybe' }, /readonly must be true or false/],
    [{ source: src, watch: 'sometimes' }, /watch must be true or false/],
    [{ source: src, uidmap: '0:1000' }, /uidmap.*C:H:N/],
    [{ source: src, gidmap: '0:1:2:0:1:2' }, /gidmap.*overlap/],
    [{ source: src, passthrough: 'always' }, /passthrough must be auto, on or off/],
    [{ source: src, transport: 'pigeon' }, /transport must be auto, io_uring or dev/],
    [{ source: path.join(e.root, 'missing') }, /source .*missing does not exist.*ENOENT/],
    [{ lower: `${src}:${path.join(e.root, 'gone')}` }, /lower .*gone does not exist.*ENOENT/],
    [{ source: path.join(src, '..', 'src', 'none') }, /ENOENT/],
    [{ source: e.stateDir }, /inside the plugin's state dir/],
    [{ source: path.join(e.stateDir, 'volumes') }, /inside the plugin's state dir/],
    [{ lower: `${src}:${e.root}` }, /lower .* contains the plugin's state dir/],
  ];
  await fsp.writeFile(path.join(e.root, 'file'), '');
  cases.push([{ source: path.join(e.root, 'file') }, /not a directory.*ENOTDIR/]);
  for (const [opts, re] of cases) {
    const r = await create('v', opts);
    t.is(r.status, 500, JSON.stringify(opts));
    t.regex(String(r.body.Err), re, JSON.stringify(opts));
  }
  const r = await call(e.socket, '/VolumeDriver.Create', { Name: 'v', Opts: { source: 7 } });
  t.regex(String(r.body.Err), /option source must be a string/);

  for (const name of ['a/b', '..', '.', '.hidden', 'a..b', '', 'x'.repeat(256), 'a b', 'é']) {
    const b = await create(name, { source: src });
    t.regex(String(b.body.Err), /volume name/, JSON.stringify(name));
    t.is(b.status, 500);
  }
  t.regex(String((await call(e.socket, '/VolumeDriver.Create', { Opts: {} })).body.Err), /name/);
  for (const ep of ['Mount', 'Unmount', 'Get', 'Path', 'Remove'])
    await fails(t, e.socket, `/VolumeDriver.${ep}`, { Name: '../x', ID: 'c' }, /volume name/);
  for (const ep of ['Mount', 'Unmount', 'Get', 'Path', 'Remove'])
    await fails(t, e.socket, `/VolumeDriver.${ep}`, { Name: 'nothere', ID: 'c' }, /no such volume/);
  const bad = await new Promise<Reply>((resolve, reject) => {
    const req = http.request(
      { socketPath: e.socket, path: '/VolumeDriver.Create', method: 'POST', agent: false },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () =>
          resolve({ status: res.statusCode!, contentType: '', body: JSON.parse(text) as Body }),
        );
      },
    );
    req.on('error', reject);
    req.end('{not json');
  });
  t.is(bad.status, 500);
  t.regex(String(bad.body.Err), /not valid JSON/);

  // Nothing of the failed volumes is left behind.
  t.deepEqual((await ok(t, e.socket, '/VolumeDriver.List', {})).Volumes, []);
  t.deepEqual(await fsp.readdir(path.join(e.stateDir, 'volumes')), []);

  // Create again: the same options (or none, as `docker run -v` sends) are fine, others are not.
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'v', Opts: { source: src } });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'v', Opts: { source: src } });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'v', Opts: {} });
  await fails(
    t,
    e.socket,
    '/VolumeDriver.Create',
    { Name: 'v', Opts: { source: src, readonly: 'true' } },
    /exists with other options.*EEXIST/,
  );

  // The source vanishing after Create fails Mount, naming ENOENT.
  const gone = await dir(e.root, 'gone-later');
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'later', Opts: { source: gone } });
  await fsp.rmdir(gone);
  await fails(t, e.socket, '/VolumeDriver.Mount', { Name: 'later', ID: 'c' }, /ENOENT/);
  t.false(isMounted(merged(e, 'later')));
});

test('volumes persist across a plugin restart; one plugin per state dir and socket', async (t) => {
  const e = await env(t);
  const p1 = await e.start();
  const src = await dir(e.root, 'src', { 'f.txt': 'f' });
  const lower = await dir(e.root, 'lower', { 'l.txt': 'l' });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'one', Opts: { source: src } });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'two', Opts: { lower } });
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'two', ID: 'c' });
  await fsp.writeFile(path.join(merged(e, 'two'), 'written.txt'), 'kept');

  // A second plugin may not take over the state dir or the socket of a running one.
  await t.throwsAsync(
    startPlugin({ socket: path.join(e.root, 'other.sock'), stateDir: e.stateDir }),
    { code: 'EBUSY', message: /used by another running plugin/ },
  );
  await t.throwsAsync(
    startPlugin({ socket: e.socket, stateDir: path.join(e.root, 'other-state') }),
    { code: 'EADDRINUSE' },
  );
  const created = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'one' })).Volume.CreatedAt;

  await p1.close();
  t.false(isMounted(merged(e, 'two')), 'close() unmounted the volume');
  t.false(existsSync(e.socket));
  const state = JSON.parse(await fsp.readFile(path.join(e.stateDir, 'volumes.json'), 'utf8')) as {
    volumes: Record<string, unknown>;
  };
  t.deepEqual(Object.keys(state.volumes).sort(), ['one', 'two']);

  await e.start();
  const names = (await ok(t, e.socket, '/VolumeDriver.List', {})).Volumes.map((v) => v.Name);
  t.deepEqual(names.sort(), ['one', 'two']);
  const got = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'one' })).Volume;
  t.is(got.CreatedAt, created);
  t.is(got.Status.source, src);
  t.false(got.Status.mounted);
  // Docker's Unmount for a mount the old process made is accepted.
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'two', ID: 'c' });
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'two', ID: 'c2' });
  t.is(await fsp.readFile(path.join(merged(e, 'two'), 'written.txt'), 'utf8'), 'kept');
  t.is(await fsp.readFile(path.join(merged(e, 'two'), 'l.txt'), 'utf8'), 'l');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'two', ID: 'c2' });
});

test('concurrent Mounts and Unmounts of one volume mount it once and end it once', async (t) => {
  const e = await env(t);
  await e.start();
  const src = await dir(e.root, 'src', { 'f.txt': 'f' });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'busy', Opts: { source: src } });
  const mp = merged(e, 'busy');
  const ids = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5'];
  const mounts = await Promise.all(
    ids.map((ID) => ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'busy', ID })),
  );
  for (const m of mounts) t.is(m.Mountpoint, mp);
  t.is(mountTable().filter((x) => x.mountpoint === mp).length, 1, 'one mount for all IDs');
  t.is((await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'busy' })).Volume.Status.users, 6);
  await Promise.all(
    ids.slice(0, 5).map((ID) => ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'busy', ID })),
  );
  t.true(isMounted(mp), 'still mounted for c5');
  t.is(await fsp.readFile(path.join(mp, 'f.txt'), 'utf8'), 'f');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'busy', ID: 'c5' });
  t.false(isMounted(mp));
  await ok(t, e.socket, '/VolumeDriver.Remove', { Name: 'busy' });
});

test('close() unmounts every volume and removes the socket; later calls are refused', async (t) => {
  const e = await env(t);
  const p = await e.start();
  const names = ['a1', 'a2', 'a3'];
  for (const n of names) {
    const src = await dir(e.root, `src-${n}`);
    await ok(t, e.socket, '/VolumeDriver.Create', { Name: n, Opts: { source: src } });
    await ok(t, e.socket, '/VolumeDriver.Mount', { Name: n, ID: 'c' });
    t.true(isMounted(merged(e, n)));
  }
  // A file held open does not stop the shutdown (the mount is detached lazily).
  const fh = await fsp.open(path.join(merged(e, 'a1'), 'open.txt'), 'w');
  t.teardown(() => fh.close().catch(() => undefined));
  await within('close', p.close(), 30_000);
  for (const n of names) t.false(isMounted(merged(e, n)), n);
  t.false(mountTable().some((m) => m.mountpoint.startsWith(e.stateDir)));
  t.false(existsSync(e.socket));
  t.false(existsSync(path.join(e.stateDir, 'plugin.lock')));
  await t.throwsAsync(call(e.socket, '/Plugin.Activate'));
  await p.close(); // idempotent
});

test('the last Unmount ends a mount that a copy in another namespace keeps alive', async (t) => {
  const e = await env(t, 500);
  await e.start();
  const src = await dir(e.root, 'src', { 'f.txt': 'f' });
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'shared', Opts: { source: src } });
  const mp = merged(e, 'shared');
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'shared', ID: 'c' });
  // Like a container's mount namespace still being torn down when Docker unmounts.
  const holder = spawnChild(t, [
    ...inPrivateNamespace(`cat ${mp}/f.txt >/dev/null && echo '{"ready":true}'`, mp),
    'sleep',
    '60',
  ]);
  await holder.message((m) => m.ready === true);
  await within(
    'Unmount',
    ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'shared', ID: 'c' }),
    20_000,
  );
  t.false(isMounted(mp));
  t.true(
    e.logs.some((l) => /did not end within 500 ms/.test(l)),
    e.logs.join('\n'),
  );
  t.log(e.logs.join('\n'));
  holder.kill();
  await holder.exited;
  // Mounts again.
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'shared', ID: 'c2' });
  t.is(await fsp.readFile(path.join(mp, 'f.txt'), 'utf8'), 'f');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'shared', ID: 'c2' });
  t.false(isMounted(mp));
});

test('CLI: --help; serves until SIGTERM, then unmounts and removes the socket', async (t) => {
  const e = await env(t);
  const help = spawnChild(t, [...nodeArgv('lib/docker-plugin-cli.ts'), '--help']);
  let out = '';
  help.proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  t.is((await help.exited).code, 0);
  t.regex(out, /usage: fusekit-docker-plugin \[--socket PATH\] \[--state-dir DIR\]/);

  const bad = spawnChild(t, [...nodeArgv('lib/docker-plugin-cli.ts'), '--bogus']);
  t.is((await bad.exited).code, 2);
  t.regex(bad.stderr, /unknown argument --bogus/);

  const src = await dir(e.root, 'src');
  const child = spawnChild(
    t,
    [...nodeArgv('lib/docker-plugin-cli.ts'), '--socket', e.socket, '--state-dir', e.stateDir],
    { mountpoints: [merged(e, 'cli')] },
  );
  await waitFor('the plugin socket', () => existsSync(e.socket) || !child.running, 60_000);
  t.true(child.running, child.stderr);
  await ok(t, e.socket, '/Plugin.Activate');
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'cli', Opts: { source: src } });
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'cli', ID: 'c' });
  await fsp.writeFile(path.join(merged(e, 'cli'), 'via-cli.txt'), 'cli');
  t.is(await fsp.readFile(path.join(src, 'via-cli.txt'), 'utf8'), 'cli');
  t.true(isMounted(merged(e, 'cli')));

  child.kill('SIGTERM');
  const { code } = await within('plugin exit', child.exited, 30_000);
  t.is(code, 0, child.stderr);
  t.false(isMounted(merged(e, 'cli')));
  t.false(mountTable().some((m) => m.mountpoint.startsWith(e.root + '/')));
  t.false(existsSync(e.socket), 'socket removed');
  t.regex(child.stderr, /SIGTERM: unmounting volumes/);
  t.regex(child.stderr, /unmounted cli/);
  // The volume is still known to the next plugin.
  await e.start();
  t.is((await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'cli' })).Volume.Name, 'cli');
});

test('after the plugin is killed, its mounts are gone and a new plugin takes over the state', async (t) => {
  const e = await env(t);
  const src = await dir(e.root, 'src', { 'f.txt': 'before' });
  const mp = merged(e, 'crash');
  const child = spawnChild(
    t,
    [...nodeArgv('lib/docker-plugin-cli.ts'), '--socket', e.socket, '--state-dir', e.stateDir],
    { mountpoints: [mp] },
  );
  await waitFor('the plugin socket', () => existsSync(e.socket) || !child.running, 60_000);
  t.true(child.running, child.stderr);
  await ok(t, e.socket, '/VolumeDriver.Create', { Name: 'crash', Opts: { source: src } });
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'crash', ID: 'c' });
  t.true(isMounted(mp));

  child.kill('SIGKILL');
  await within('plugin exit', child.exited, 30_000);
  // fusekit's watchdog detaches the mounts of a killed process.
  await waitFor('the mount to go', () => !isMounted(mp), 30_000);
  t.true(existsSync(e.socket), 'a killed plugin leaves its socket');
  t.true(existsSync(path.join(e.stateDir, 'plugin.lock')), 'and its lock');

  // The stale socket and lock do not stop the next plugin.
  await e.start();
  const got = (await ok(t, e.socket, '/VolumeDriver.Get', { Name: 'crash' })).Volume;
  t.false(got.Status.mounted);
  await ok(t, e.socket, '/VolumeDriver.Mount', { Name: 'crash', ID: 'c2' });
  t.is(await fsp.readFile(path.join(mp, 'f.txt'), 'utf8'), 'before');
  await fsp.writeFile(path.join(mp, 'f.txt'), 'after');
  t.is(await fsp.readFile(path.join(src, 'f.txt'), 'utf8'), 'after');
  await ok(t, e.socket, '/VolumeDriver.Unmount', { Name: 'crash', ID: 'c2' });
  t.false(isMounted(mp));
  await ok(t, e.socket, '/VolumeDriver.Remove', { Name: 'crash' });
});
