import { constants as fsc, promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { serveControl } from './control';
import { FusekitError } from './errors';
import { EventEmitter } from 'node:events';

import { type FsEvent, native, type NativeMountHandle, type NativeStats } from './native';
import { type MountOptions, type NormalizedOptions, normalizeOptions } from './options';

export type MountStats = NativeStats;

export interface UnmountOptions {
  /** Detach now even if busy; open files keep working until closed. */
  lazy?: boolean;
  /**
   * Abort the connection: requests the daemon would serve fail. Files opened with kernel
   * passthrough keep reading and writing their backing file until closed (the kernel's doing).
   */
  force?: boolean;
}

export interface TraceOptions {
  /** Record one in `sample` matching operations (default 1: all). */
  sample?: number;
  /** Only these operations (names as in stats().ops, e.g. 'lookup', 'open'). */
  ops?: string[];
  /** Only failed operations. */
  errorsOnly?: boolean;
}

/**
 * A live fusekit mount. Emits 'audit' and 'trace' events (FsEvent), delivered in batches from the
 * native side; nothing waits for JavaScript, so a consumer that falls behind loses events (they are
 * counted in stats().events.dropped and by each events() iterator).
 */
export class Mount extends EventEmitter {
  readonly mountpoint: string;
  readonly source: string;
  /** Resolves when the mount has ended, however it was unmounted (also from outside). */
  readonly closed: Promise<void>;

  /** Path of this mount's control socket (see control.ts), if it has one. */
  controlSocket?: string;
  /** Why the control socket could not be set up, if it could not. */
  controlError?: FusekitError;

  #handle: NativeMountHandle;
  #unmounting: Promise<void> | undefined;
  #unmountMode: 'normal' | 'lazy' | 'force' | undefined;
  #isClosed = false;

  /** @internal */
  constructor(handle: NativeMountHandle, options: NormalizedOptions, closed: Promise<void>) {
    super();
    this.#handle = handle;
    this.mountpoint = options.mountpoint;
    this.source = options.source;
    this.closed = closed.then(() => {
      this.#isClosed = true;
      live.delete(this);
    });
  }

  /** The transport requests really travel over ('io_uring' or 'dev'). */
  get transport(): 'io_uring' | 'dev' {
    return this.#handle.info().transport;
  }

  /** Whether kernel passthrough was negotiated for this mount. */
  get passthrough(): boolean {
    return this.#handle.info().passthrough;
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /**
   * Unmounts. Without options a busy mount is refused with EBUSY and nothing changes. Resolves once
   * the request threads have stopped (for `lazy`, once the mount is detached). Idempotent.
   */
  unmount(options: UnmountOptions = {}): Promise<void> {
    if (this.#isClosed) return Promise.resolve();
    const mode = options.force ? 'force' : options.lazy ? 'lazy' : 'normal';
    // An unmount under way covers this one unless this one asks for more: after a lazy detach a
    // normal unmount still has to wait (or refuse), and force always has to abort.
    const prev = this.#unmountMode;
    if (this.#unmounting && (prev === mode || mode === 'lazy' || prev === 'force'))
      return this.#unmounting;
    this.#unmountMode = mode;
    const p = this.#handle.unmount(mode).then(
      async () => {
        if (mode !== 'lazy') await this.closed;
      },
      (err: unknown) => {
        if (this.#unmounting === p) {
          this.#unmounting = undefined;
          this.#unmountMode = undefined;
        }
        throw FusekitError.from(err, undefined, this.mountpoint);
      },
    );
    this.#unmounting = p;
    return p;
  }

  /** Per-operation counts, errors by errno, latency histograms, transport and passthrough use. */
  stats(): MountStats {
    return this.#handle.stats();
  }

  /** @internal Called with each batch of native events. */
  deliver(batch: FsEvent[]): void {
    for (const e of batch) this.emit(e.kind, e);
  }

  /** Starts (or with false stops) recording sampled trace events ('trace'). */
  trace(options: TraceOptions | false = {}): void {
    if (options === false) {
      this.#handle.setTrace({ enabled: false });
      return;
    }
    if (options.sample !== undefined && (!Number.isInteger(options.sample) || options.sample < 1))
      throw new FusekitError('EINVAL', 'trace sample must be a positive integer');
    this.#handle.setTrace({ enabled: true, ...options });
  }

  /**
   * Events as an async iterator, buffered up to `bufferSize` (default 10000); beyond that they are
   * dropped and counted in `dropped`. Ends when the mount closes or the iterator is returned.
   */
  events(
    options: { kinds?: Array<'audit' | 'trace'>; bufferSize?: number } = {},
  ): AsyncIterableIterator<FsEvent> & { readonly dropped: number } {
    const kinds = options.kinds ?? ['audit', 'trace'];
    const max = options.bufferSize ?? 10000;
    const queue: FsEvent[] = [];
    let waiting: ((r: IteratorResult<FsEvent>) => void) | undefined;
    let done = false;
    let dropped = 0;
    const push = (e: FsEvent): void => {
      if (waiting) {
        const w = waiting;
        waiting = undefined;
        w({ value: e, done: false });
      } else if (queue.length < max) {
        queue.push(e);
      } else {
        dropped++;
      }
    };
    const finish = (): void => {
      done = true;
      for (const k of kinds) this.off(k, push);
      if (waiting) waiting({ value: undefined, done: true });
      waiting = undefined;
    };
    for (const k of kinds) this.on(k, push);
    void this.closed.then(finish);
    const it = {
      get dropped() {
        return dropped;
      },
      next(): Promise<IteratorResult<FsEvent>> {
        if (queue.length) return Promise.resolve({ value: queue.shift()!, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((r) => (waiting = r));
      },
      return(): Promise<IteratorResult<FsEvent>> {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it as AsyncIterableIterator<FsEvent> & { readonly dropped: number };
  }

  /**
   * Makes the kernel forget what it cached about `path` (a path inside the mount, e.g. '/a/b'), or
   * about everything. Resolves to the number of invalidations sent.
   */
  async invalidate(path?: string): Promise<number> {
    if (path !== undefined && (typeof path !== 'string' || path.includes('\0')))
      throw new FusekitError('EINVAL', 'invalidate() takes a path inside the mount');
    try {
      return await this.#handle.invalidate(path ?? '');
    } catch (e) {
      throw FusekitError.from(e);
    }
  }

  /** Keep the process alive while mounted (the default). */
  ref(): this {
    this.#handle.ref();
    return this;
  }

  /** Let the process exit while mounted; the mount is removed on exit. */
  unref(): this {
    this.#handle.unref();
    return this;
  }
}

const live = new Set<Mount>();
let hooksInstalled = false;

// Mounts end with the process: on a normal exit and on SIGINT/SIGTERM they are detached and their
// connections aborted (the native watchdog covers SIGKILL). A signal handler of the application
// keeps control: the mounts stay until it unmounts them or exits.
function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => native().detachAll());
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      if (process.listenerCount(sig) === 1) {
        native().detachAll();
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, onSignal);
  }
}

async function isMountPoint(dir: string): Promise<boolean> {
  const info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of info.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unescapeMountinfo(f[4]!) === dir) return true;
  }
  return false;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function fail(code: string, message: string, p?: string, cause?: unknown): never {
  throw new FusekitError(code, message, { path: p, cause });
}

/** Checks everything a user can get wrong before touching the system; returns the real mount
 * point. */
async function preflight(o: NormalizedOptions): Promise<string> {
  // Overlay layers are checked by the core, which must check them anyway.
  if (!o.overlay) {
    try {
      const st = await fsp.stat(o.source);
      if (!st.isDirectory()) fail('ENOTDIR', `source ${o.source} is not a directory`, o.source);
    } catch (e) {
      if (e instanceof FusekitError) throw e;
      const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
      fail(
        code,
        `source ${o.source} ${code === 'ENOENT' ? 'does not exist' : 'cannot be used'} (${code})`,
        o.source,
        e,
      );
    }
  }
  let real: string;
  try {
    const st = await fsp.stat(o.mountpoint);
    if (!st.isDirectory())
      fail('ENOTDIR', `mount point ${o.mountpoint} is not a directory`, o.mountpoint);
    real = await fsp.realpath(o.mountpoint);
  } catch (e) {
    if (e instanceof FusekitError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    fail(
      code,
      `mount point ${o.mountpoint} ${code === 'ENOENT' ? 'does not exist' : 'cannot be used'} (${code})`,
      o.mountpoint,
      e,
    );
  }
  if (await isMountPoint(real))
    fail('EBUSY', `mount point ${o.mountpoint} is already a mount point`, o.mountpoint);
  if (!o.allowNonEmpty && (await fsp.readdir(o.mountpoint)).length > 0)
    fail(
      'ENOTEMPTY',
      `mount point ${o.mountpoint} is not empty (allowNonEmpty: true mounts over it)`,
      o.mountpoint,
    );
  try {
    await fsp.access('/dev/fuse', fsc.R_OK | fsc.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    if (code === 'ENOENT')
      fail(
        'ENODEV',
        '/dev/fuse does not exist: load the fuse kernel module (modprobe fuse)',
        '/dev/fuse',
        e,
      );
    fail(
      code,
      `/dev/fuse cannot be opened (${code}): mounting needs root or access to /dev/fuse`,
      '/dev/fuse',
      e,
    );
  }
  return real;
}

// Real mount points with a mount() of this process under way: two concurrent mounts on one
// directory would both pass the preflight and stack, and unmounting the lower one would hang.
const mounting = new Set<string>();

/**
 * Mounts a passthrough filesystem mirroring `source` at `mountpoint`, or an overlay of
 * `overlay.lower` (+ `upper`/`work`), served entirely by native threads. Rejects with a
 * FusekitError (code = errno name) and leaves nothing mounted on failure.
 */
export async function mount(options: MountOptions): Promise<Mount> {
  const o = normalizeOptions(options);
  const real = await preflight(o);
  if (mounting.has(real))
    fail('EBUSY', `mount point ${o.mountpoint} is being mounted already`, o.mountpoint);
  const binding = native();
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));
  let handle: NativeMountHandle;
  let mountRef: Mount | undefined;
  mounting.add(real);
  try {
    // Mounted by a mount() that finished after this one's preflight.
    if (await isMountPoint(real))
      fail('EBUSY', `mount point ${o.mountpoint} is already a mount point`, o.mountpoint);
    const { allowNonEmpty: _, control: __, ...config } = o;
    handle = await binding.mount(
      config,
      () => resolveClosed(),
      (batch) => mountRef?.deliver(batch),
    );
  } catch (e) {
    throw FusekitError.from(e, undefined, o.mountpoint);
  } finally {
    mounting.delete(real);
  }
  const m = new Mount(handle, o, closed);
  mountRef = m;
  if (o.control) {
    // The control socket is a convenience for other processes: a mount works without it.
    try {
      m.controlSocket = (await serveControl(m)).address() as string;
    } catch (e) {
      m.controlError = FusekitError.from(e);
    }
  }
  live.add(m);
  installExitHooks();
  return m;
}

/** Unmounts a fusekit mount by path, also one served by another process. */
export function unmountPath(mountpoint: string, options: UnmountOptions = {}): void {
  const mode = options.force ? 'force' : options.lazy ? 'lazy' : 'normal';
  try {
    native().unmountPath(path.resolve(mountpoint), mode);
  } catch (e) {
    throw FusekitError.from(e, undefined, mountpoint);
  }
}

/** Mounts of this process that have not ended yet. */
export function liveMounts(): Mount[] {
  return [...live];
}
