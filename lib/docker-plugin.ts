/**
 * A Docker volume plugin of the legacy (unmanaged) kind: dockerd finds the Unix socket under
 * /run/docker/plugins/ and speaks the VolumeDriver protocol to it (JSON over HTTP POST). A volume
 * is a fusekit mount, a passthrough of a host directory or an overlay of host layers, mounted on
 * the first Mount and unmounted on the last Unmount (counted by the caller's ID). Volumes are kept
 * as JSON in the state dir and outlive the plugin process; their mounts do not, since this process
 * serves them.
 */
import { randomBytes } from 'node:crypto';
import { type Stats, promises as fsp, lstatSync, readFileSync, unlinkSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

import { FusekitError } from './errors';
import { type IdRange, parseColonIdMap } from './idmap';
import { type Mount, mount } from './mount';
import type { MountOptions } from './options';

export const DEFAULT_SOCKET = '/run/docker/plugins/fusekit.sock';
export const DEFAULT_STATE_DIR = '/var/lib/fusekit-docker';
export const CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';

const MAX_BODY = 1 << 20;
const STATE_FILE = 'volumes.json';
const LOCK_FILE = 'plugin.lock';

export interface PluginOptions {
  /** Unix socket to serve (default /run/docker/plugins/fusekit.sock: driver name "fusekit"). */
  socket?: string;
  /** Where volumes.json and the volumes' directories live (default /var/lib/fusekit-docker). */
  stateDir?: string;
  /** One line per event worth a log entry (default: none). */
  log?: (line: string) => void;
  /**
   * How long the last Unmount waits for the mount to end before aborting its connection (a copy
   * of the mount in a container's mount namespace that is still being torn down keeps it alive).
   * Default 10000 ms.
   */
  unmountTimeoutMs?: number;
}

export interface PluginHandle {
  readonly socket: string;
  readonly stateDir: string;
  /** Stops serving, unmounts every volume and removes the socket. Idempotent. */
  close(): Promise<void>;
}

/** What a volume's Opts ask for, checked. */
export interface VolumeSpec {
  source?: string;
  /** Overlay layers, top first. */
  lower?: string[];
  upper?: string;
  work?: string;
  readOnly: boolean;
  uidmap?: IdRange[];
  gidmap?: IdRange[];
  watch: boolean;
  passthrough: 'auto' | 'on' | 'off';
  transport: 'auto' | 'io_uring' | 'dev';
}

interface VolumeRecord {
  opts: Record<string, string>;
  createdAt: string;
  /** Upper and work were made by the plugin under the volume's dir; Remove deletes them. */
  ownLayers: boolean;
}

interface Active {
  mount: Mount;
  ids: Set<string>;
}

export const VOLUME_OPTIONS = [
  'source',
  'lower',
  'upper',
  'work',
  'readonly',
  'uidmap',
  'gidmap',
  'watch',
  'passthrough',
  'transport',
] as const;

function invalid(message: string): FusekitError {
  return new FusekitError('EINVAL', message);
}

/** Docker's own rule for volume names, which also keeps a name one safe path component. */
export function checkVolumeName(name: unknown): string {
  if (typeof name !== 'string' || name === '') throw invalid('a volume name is required');
  if (name.length > 255 || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name) || name.includes('..'))
    throw invalid(
      `invalid volume name '${name}': use letters, digits, '_', '.' and '-', starting with a ` +
        "letter or digit, without '..', at most 255 characters",
    );
  return name;
}

function parseBool(key: string, v: string): boolean {
  // `docker volume create -o readonly` sends an empty value.
  if (v === '' || v === 'true' || v === '1' || v === 'yes') return true;
  if (v === 'false' || v === '0' || v === 'no') return false;
  throw invalid(`option ${key} must be true or false, not '${v}'`);
}

function absPath(key: string, v: string): string {
  if (v === '' || v.includes('\0')) throw invalid(`option ${key} needs a directory`);
  if (!path.isAbsolute(v)) throw invalid(`option ${key} must be an absolute path, not '${v}'`);
  return path.normalize(v).replace(/(.)\/$/, '$1');
}

/** Checks a volume's Opts (all strings, as Docker passes them); touches nothing. */
export function parseVolumeOptions(opts: Record<string, string>): VolumeSpec {
  const spec: VolumeSpec = {
    readOnly: false,
    watch: false,
    passthrough: 'auto',
    transport: 'auto',
  };
  for (const [key, v] of Object.entries(opts)) {
    switch (key) {
      case 'source':
        spec.source = absPath(key, v);
        break;
      case 'lower': {
        const parts = v.split(':');
        if (parts.some((p) => p === ''))
          throw invalid(`option lower must be directories separated by ':', not '${v}'`);
        spec.lower = parts.map((p) => absPath('lower', p));
        break;
      }
      case 'upper':
      case 'work':
        spec[key] = absPath(key, v);
        break;
      case 'readonly':
        spec.readOnly = parseBool(key, v);
        break;
      case 'watch':
        spec.watch = parseBool(key, v);
        break;
      case 'uidmap':
      case 'gidmap':
        try {
          spec[key] = parseColonIdMap(v);
        } catch (e) {
          throw invalid(`option ${key}: ${(e as Error).message}`);
        }
        break;
      case 'passthrough':
        if (v !== 'auto' && v !== 'on' && v !== 'off')
          throw invalid(`option passthrough must be auto, on or off, not '${v}'`);
        spec.passthrough = v;
        break;
      case 'transport':
        if (v !== 'auto' && v !== 'io_uring' && v !== 'dev')
          throw invalid(`option transport must be auto, io_uring or dev, not '${v}'`);
        spec.transport = v;
        break;
      default:
        throw invalid(`unknown option '${key}' (known: ${VOLUME_OPTIONS.join(', ')})`);
    }
  }
  if ((spec.source === undefined) === (spec.lower === undefined))
    throw invalid('a volume needs exactly one of source=DIR (passthrough) and lower=DIR[:DIR...]');
  if (spec.source !== undefined && (spec.upper !== undefined || spec.work !== undefined))
    throw invalid('options upper and work go with lower, not with source');
  if ((spec.upper === undefined) !== (spec.work === undefined))
    throw invalid('options upper and work go together (neither: the plugin makes them)');
  return spec;
}

/** Err text for Docker: the message, naming the errno when the message does not already. */
export function errText(e: unknown): string {
  const err = FusekitError.from(e);
  return err.message.includes(err.code) ? err.message : `${err.message} (${err.code})`;
}

async function checkDir(what: string, dir: string): Promise<void> {
  let st: Stats;
  try {
    st = await fsp.stat(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw new FusekitError(
      code,
      `${what} ${dir} ${code === 'ENOENT' ? 'does not exist' : 'cannot be used'} (${code})`,
      { path: dir, cause: e },
    );
  }
  if (!st.isDirectory())
    throw new FusekitError('ENOTDIR', `${what} ${dir} is not a directory (ENOTDIR)`, { path: dir });
}

function isInside(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function mountedAt(dir: string): boolean {
  return readMountinfoSync().includes(dir);
}

function readMountinfoSync(): string[] {
  // Synchronous on purpose: used right before removing a directory, with nothing in between.
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => m !== undefined)
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** Whether something accepts connections on the Unix socket at file. */
function socketAlive(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection(file);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

function listen(server: net.Server, file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Refuses a path some live process serves; removes a stale socket a dead one left. */
async function claimSocketPath(file: string, what: string): Promise<void> {
  const st = await fsp.lstat(file).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket())
    throw new FusekitError('EEXIST', `${what} ${file} exists and is not a socket`, { path: file });
  if (await socketAlive(file))
    throw new FusekitError('EADDRINUSE', `another process serves ${what} ${file}`, { path: file });
  await fsp.rm(file, { force: true });
}

class VolumePlugin {
  readonly volumes = new Map<string, VolumeRecord>();
  readonly active = new Map<string, Active>();
  readonly #locks = new Map<string, Promise<unknown>>();
  #saving: Promise<void> = Promise.resolve();

  constructor(
    readonly stateDir: string,
    readonly log: (line: string) => void,
    readonly unmountTimeoutMs: number,
  ) {}

  dirs(name: string): { root: string; merged: string; upper: string; work: string } {
    const root = path.join(this.stateDir, 'volumes', name);
    return {
      root,
      merged: path.join(root, 'merged'),
      upper: path.join(root, 'upper'),
      work: path.join(root, 'work'),
    };
  }

  /** Runs operations on one volume one at a time (a Mount racing an Unmount, say). */
  withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.#locks.set(name, tail);
    void tail.then(() => {
      if (this.#locks.get(name) === tail) this.#locks.delete(name);
    });
    return next;
  }

  async load(): Promise<void> {
    const file = path.join(this.stateDir, STATE_FILE);
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw FusekitError.from(e, `cannot read ${file}`, file);
    }
    let data: { volumes?: Record<string, Partial<VolumeRecord>> };
    try {
      data = JSON.parse(text) as typeof data;
    } catch (e) {
      // Refuse to start rather than forget volumes Docker still knows about.
      throw new FusekitError('EINVAL', `state file ${file} is not valid JSON`, { cause: e });
    }
    for (const [name, r] of Object.entries(data.volumes ?? {})) {
      try {
        checkVolumeName(name);
      } catch {
        this.log(`ignoring volume with invalid name ${JSON.stringify(name)} in ${file}`);
        continue;
      }
      this.volumes.set(name, {
        opts: typeof r.opts === 'object' && r.opts !== null ? r.opts : {},
        createdAt: typeof r.createdAt === 'string' ? r.createdAt : new Date(0).toISOString(),
        ownLayers: r.ownLayers === true,
      });
    }
  }

  /** Writes volumes.json whole, after any write under way, via a synced temp file and a rename. */
  save(): Promise<void> {
    const run = async (): Promise<void> => {
      const file = path.join(this.stateDir, STATE_FILE);
      const tmp = `${file}.${process.pid}.tmp`;
      const data = { version: 1, volumes: Object.fromEntries(this.volumes) };
      const fh = await fsp.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(data, null, 2) + '\n');
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, file);
    };
    const p = this.#saving.then(run, run);
    this.#saving = p.catch(() => undefined);
    return p;
  }

  record(name: unknown): { name: string; rec: VolumeRecord } {
    const n = checkVolumeName(name);
    const rec = this.volumes.get(n);
    if (!rec) throw new FusekitError('ENOENT', `no such volume: ${n}`);
    return { name: n, rec };
  }

  async checkLayers(spec: VolumeSpec): Promise<void> {
    const paths: Array<[string, string]> = [
      ...(spec.source !== undefined ? [['source', spec.source] as [string, string]] : []),
      ...(spec.lower ?? []).map((l) => ['lower', l] as [string, string]),
      ...(spec.upper !== undefined ? [['upper', spec.upper] as [string, string]] : []),
      ...(spec.work !== undefined ? [['work', spec.work] as [string, string]] : []),
    ];
    for (const [what, p] of paths) {
      // Another volume's mount point or upper as a layer would stack mounts the plugin manages.
      if (isInside(p, this.stateDir))
        throw invalid(`${what} ${p} is inside the plugin's state dir ${this.stateDir}`);
      // A layer holding the state dir would show the volumes' own mounts inside the volume, and a
      // walk of it would have the daemon call itself.
      if (isInside(this.stateDir, p))
        throw invalid(`${what} ${p} contains the plugin's state dir ${this.stateDir}`);
      await checkDir(what, p);
    }
  }

  mountOptions(name: string, spec: VolumeSpec, rec: VolumeRecord): MountOptions {
    const d = this.dirs(name);
    const upper = rec.ownLayers ? d.upper : spec.upper;
    const work = rec.ownLayers ? d.work : spec.work;
    const idmap =
      spec.uidmap || spec.gidmap
        ? {
            ...(spec.uidmap ? { uid: spec.uidmap } : {}),
            ...(spec.gidmap ? { gid: spec.gidmap } : {}),
          }
        : undefined;
    return {
      ...(spec.source !== undefined
        ? { source: spec.source }
        : {
            overlay: {
              lower: spec.lower!,
              ...(upper !== undefined ? { upper, work: work! } : {}),
            },
          }),
      ...(idmap ? { idmap } : {}),
      mountpoint: d.merged,
      readOnly: spec.readOnly,
      watch: spec.watch,
      passthrough: spec.passthrough,
      transport: spec.transport,
      // Container processes run as any user, not only as root who mounts.
      allowOther: true,
      fsname: `fusekit-docker:${name}`,
    };
  }

  async mountVolume(name: string, rec: VolumeRecord): Promise<Mount> {
    const spec = parseVolumeOptions(rec.opts);
    await this.checkLayers(spec);
    return mount(this.mountOptions(name, spec, rec));
  }

  /** Ends a mount: a normal unmount, lazy if busy here, aborted if it does not end in time. */
  async release(name: string, a: Active): Promise<void> {
    const m = a.mount;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), this.unmountTimeoutMs);
    });
    const normal = m.unmount();
    normal.catch(() => undefined);
    try {
      const r = await Promise.race([normal, timedOut]);
      if (r === 'timeout') {
        // Detached here, kept alive by a copy elsewhere (a container's namespace being torn down):
        // Docker is done with it, so abort it; without fusectl the copy ends with its namespace.
        this.log(`${name}: the mount did not end within ${this.unmountTimeoutMs} ms; aborting it`);
        await m.unmount({ force: true }).catch((e: unknown) => {
          this.log(`${name}: ${errText(e)}; leaving it to end by itself`);
        });
      }
    } catch (e) {
      if (FusekitError.from(e).code !== 'EBUSY') throw e;
      // Open files or a working directory on the host: detach now, it ends when they close.
      this.log(`${name}: busy, detaching lazily`);
      await m.unmount({ lazy: true });
    } finally {
      clearTimeout(timer);
    }
    if (this.active.get(name) === a) this.active.delete(name);
  }

  async create(body: Record<string, unknown>): Promise<object> {
    const name = checkVolumeName(body.Name);
    const raw = body.Opts ?? {};
    if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid('Opts must be an object');
    const opts: Record<string, string> = {};
    for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
      if (typeof v !== 'string') throw invalid(`option ${k} must be a string`);
      opts[k] = v;
    }
    return this.withLock(name, async () => {
      const existing = this.volumes.get(name);
      if (existing) {
        // `docker run -v name:/dst --volume-driver fusekit` creates with no options.
        const same =
          Object.keys(opts).length === 0 ||
          JSON.stringify(Object.entries(opts).sort()) ===
            JSON.stringify(Object.entries(existing.opts).sort());
        if (same) return { Err: '' };
        throw new FusekitError('EEXIST', `volume ${name} exists with other options`);
      }
      const spec = parseVolumeOptions(opts);
      await this.checkLayers(spec);
      const d = this.dirs(name);
      const rec: VolumeRecord = {
        opts,
        createdAt: new Date().toISOString(),
        ownLayers: spec.lower !== undefined && spec.upper === undefined && !spec.readOnly,
      };
      await fsp.mkdir(d.root, { recursive: true, mode: 0o700 });
      try {
        await fsp.mkdir(d.merged, { recursive: true });
        if (rec.ownLayers) {
          await fsp.mkdir(d.upper, { recursive: true });
          await fsp.mkdir(d.work, { recursive: true });
          // The merged root takes the upper root's owner and mode: make them the top layer's, so
          // the volume's root is as writable for the container's user as that layer says.
          const st = await fsp.stat(spec.lower![0]!);
          await fsp.chown(d.upper, st.uid, st.gid);
          await fsp.chmod(d.upper, st.mode & 0o7777);
        }
        // A volume that cannot mount must fail now, not when a container starts.
        const m = await mount(this.mountOptions(name, spec, rec));
        await m.unmount();
      } catch (e) {
        await this.removeDirs(name, rec.ownLayers).catch(() => undefined);
        throw e;
      }
      this.volumes.set(name, rec);
      await this.save();
      this.log(`created ${name} (${JSON.stringify(opts)})`);
      return { Err: '' };
    });
  }

  /** Removes a volume's directories; never recursively where a mount could be. */
  async removeDirs(name: string, ownLayers: boolean): Promise<void> {
    const d = this.dirs(name);
    if (mountedAt(d.merged))
      throw new FusekitError('EBUSY', `${d.merged} is still a mount point; unmount it first`);
    if (ownLayers) {
      await fsp.rm(d.upper, { recursive: true, force: true });
      await fsp.rm(d.work, { recursive: true, force: true });
    }
    for (const dir of [d.merged, d.root]) {
      await fsp.rmdir(dir).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
  }

  async remove(body: Record<string, unknown>): Promise<object> {
    const name = checkVolumeName(body.Name);
    return this.withLock(name, async () => {
      const { rec } = this.record(name);
      const a = this.active.get(name);
      if (a && !a.mount.isClosed)
        throw new FusekitError(
          'EBUSY',
          `volume ${name} is mounted (${a.ids.size} user${a.ids.size === 1 ? '' : 's'}); ` +
            'unmount it first',
        );
      await this.removeDirs(name, rec.ownLayers);
      this.volumes.delete(name);
      await this.save();
      this.log(`removed ${name}`);
      return { Err: '' };
    });
  }

  async mount(body: Record<string, unknown>): Promise<object> {
    const name = checkVolumeName(body.Name);
    const id = typeof body.ID === 'string' ? body.ID : '';
    return this.withLock(name, async () => {
      const { rec } = this.record(name);
      let a = this.active.get(name);
      if (a?.mount.isClosed) {
        this.active.delete(name);
        a = undefined;
      }
      if (!a) {
        const m = await this.mountVolume(name, rec);
        const entry: Active = { mount: m, ids: new Set() };
        a = entry;
        this.active.set(name, entry);
        this.log(`mounted ${name} at ${m.mountpoint} (transport ${m.transport})`);
        void m.closed.then(() => {
          // Unmounted from outside (or gone): the next Mount mounts again.
          if (this.active.get(name) === entry) {
            this.active.delete(name);
            this.log(`${name}: the mount ended without an Unmount`);
          }
        });
      }
      a.ids.add(id);
      return { Mountpoint: this.dirs(name).merged, Err: '' };
    });
  }

  async unmount(body: Record<string, unknown>): Promise<object> {
    const name = checkVolumeName(body.Name);
    const id = typeof body.ID === 'string' ? body.ID : '';
    return this.withLock(name, async () => {
      this.record(name);
      const a = this.active.get(name);
      // Not mounted (e.g. mounted by a plugin process before a restart): nothing to undo.
      if (!a) return { Err: '' };
      if (!a.ids.delete(id) && a.ids.size > 0) {
        this.log(`${name}: Unmount by unknown ID ${id} ignored`);
        return { Err: '' };
      }
      // Empty also after an earlier release failed: then this one tries again.
      if (a.ids.size === 0) {
        await this.release(name, a);
        this.log(`unmounted ${name}`);
      }
      return { Err: '' };
    });
  }

  describe(name: string, rec: VolumeRecord): Record<string, unknown> {
    return { Name: name, Mountpoint: this.dirs(name).merged, CreatedAt: rec.createdAt };
  }

  status(name: string, rec: VolumeRecord): Record<string, unknown> {
    const a = this.active.get(name);
    const live = a && !a.mount.isClosed ? a : undefined;
    const d = this.dirs(name);
    const o = rec.opts;
    return {
      mode: o.source !== undefined ? 'passthrough' : 'overlay',
      ...(o.source !== undefined ? { source: o.source } : { lower: o.lower }),
      ...(rec.ownLayers ? { upper: d.upper } : o.upper !== undefined ? { upper: o.upper } : {}),
      options: o,
      mounted: live !== undefined,
      users: live?.ids.size ?? 0,
      ...(live
        ? { transport: live.mount.transport, kernelPassthrough: live.mount.passthrough }
        : {}),
    };
  }

  async get(body: Record<string, unknown>): Promise<object> {
    const { name, rec } = this.record(body.Name);
    return { Volume: { ...this.describe(name, rec), Status: this.status(name, rec) }, Err: '' };
  }

  async path(body: Record<string, unknown>): Promise<object> {
    const { name } = this.record(body.Name);
    return { Mountpoint: this.dirs(name).merged, Err: '' };
  }

  async list(): Promise<object> {
    const Volumes = [...this.volumes].map(([name, rec]) => this.describe(name, rec));
    return { Volumes, Err: '' };
  }

  /** Unmounts every volume (at shutdown). */
  async releaseAll(): Promise<void> {
    await Promise.all(
      [...this.active.keys()].map((name) =>
        this.withLock(name, async () => {
          const a = this.active.get(name);
          if (!a) return;
          try {
            await this.release(name, a);
            this.log(`unmounted ${name}`);
          } catch (e) {
            this.log(`${name}: unmount failed: ${errText(e)}; aborting it`);
            await a.mount.unmount({ force: true }).catch(() => undefined);
          }
        }),
      ),
    );
  }
}

function readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(invalid('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('error', reject);
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').trim();
      // Docker sends no body (or null) to the calls that take no arguments.
      if (text === '' || text === 'null') return resolve({});
      try {
        const v = JSON.parse(text) as unknown;
        if (typeof v !== 'object' || v === null || Array.isArray(v))
          return reject(invalid('request body must be a JSON object'));
        resolve(v as Record<string, unknown>);
      } catch {
        reject(invalid('request body is not valid JSON'));
      }
    });
  });
}

/** Starts serving the plugin; resolves once the socket accepts requests. */
export async function startPlugin(options: PluginOptions = {}): Promise<PluginHandle> {
  const stateDir = path.resolve(options.stateDir ?? DEFAULT_STATE_DIR);
  const socket = path.resolve(options.socket ?? DEFAULT_SOCKET);
  const log = options.log ?? (() => undefined);
  await fsp.mkdir(path.join(stateDir, 'volumes'), { recursive: true, mode: 0o700 });

  // One plugin per state dir: two would mount the same volumes and undo each other's work. A
  // listening socket as the lock: it dies with its process, and a pid file could name a reused pid.
  const lockFile = path.join(stateDir, LOCK_FILE);
  await claimSocketPath(lockFile, 'the lock of state dir').catch((e: FusekitError) => {
    throw e.code === 'EADDRINUSE'
      ? new FusekitError('EBUSY', `state dir ${stateDir} is used by another running plugin`)
      : e;
  });
  const lock = net.createServer((c) => c.destroy());
  await listen(lock, lockFile);
  lock.unref();

  const plugin = new VolumePlugin(stateDir, log, options.unmountTimeoutMs ?? 10_000);
  const inflight = new Set<Promise<void>>();
  let closing: Promise<void> | undefined;

  const routes: Record<string, (b: Record<string, unknown>) => Promise<object>> = {
    '/Plugin.Activate': async () => ({ Implements: ['VolumeDriver'] }),
    '/VolumeDriver.Capabilities': async () => ({ Capabilities: { Scope: 'local' } }),
    '/VolumeDriver.Create': (b) => plugin.create(b),
    '/VolumeDriver.Remove': (b) => plugin.remove(b),
    '/VolumeDriver.Mount': (b) => plugin.mount(b),
    '/VolumeDriver.Unmount': (b) => plugin.unmount(b),
    '/VolumeDriver.Path': (b) => plugin.path(b),
    '/VolumeDriver.Get': (b) => plugin.get(b),
    '/VolumeDriver.List': () => plugin.list(),
  };

  const server = http.createServer((req, res) => {
    const reply = (status: number, body: object): void => {
      const text = JSON.stringify(body);
      res.writeHead(status, {
        'content-type': CONTENT_TYPE,
        'content-length': Buffer.byteLength(text),
      });
      res.end(text);
    };
    const route = routes[(req.url ?? '').split('?')[0]!];
    if (req.method !== 'POST') return reply(405, { Err: 'plugin calls are POST requests' });
    if (!route) return reply(404, { Err: `unknown call ${req.url}` });
    if (closing) return reply(503, { Err: 'the fusekit plugin is shutting down' });
    const p = (async () => {
      let body: Record<string, unknown> | undefined;
      try {
        body = await readBody(req);
        reply(200, await route(body));
      } catch (e) {
        // Docker takes the reason from Err; the status only says that the call failed.
        const msg = errText(e);
        const vol = typeof body?.Name === 'string' ? ` ${body.Name}` : '';
        log(`${req.url}${vol} failed: ${msg}`);
        if (!res.headersSent) reply(500, { Err: msg });
      }
    })();
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  });

  let own: Stats;
  try {
    await plugin.load();
    await fsp.mkdir(path.dirname(socket), { recursive: true, mode: 0o755 });
    await claimSocketPath(socket, 'socket');
    // Bound under a private name, made 0600 and renamed into place: whoever can talk to the socket
    // can mount any host directory, so it is never reachable with looser permissions.
    const tmp = path.join(
      path.dirname(socket),
      `.${path.basename(socket)}.${process.pid}.${randomBytes(6).toString('hex')}`,
    );
    await listen(server, tmp);
    await fsp.chmod(tmp, 0o600);
    own = await fsp.lstat(tmp);
    await fsp.rename(tmp, socket);
  } catch (e) {
    server.close();
    lock.close();
    throw FusekitError.from(e);
  }
  log(`serving ${socket} (state in ${stateDir}, ${plugin.volumes.size} volumes)`);

  const close = async (): Promise<void> => {
    server.close();
    server.closeIdleConnections();
    await Promise.allSettled([...inflight]);
    server.closeAllConnections();
    await plugin.releaseAll();
    // Only the socket this process made: a new plugin may have replaced it already.
    try {
      const st = lstatSync(socket);
      if (st.ino === own.ino && st.dev === own.dev) unlinkSync(socket);
    } catch {
      // gone already
    }
    lock.close();
    log('stopped');
  };
  return {
    socket,
    stateDir,
    close: () => (closing ??= close()),
  };
}
