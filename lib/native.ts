import { existsSync } from 'node:fs';
import * as path from 'node:path';

/** The addon's surface, as binding.cc and mount_handle.cc define it. */
export interface NativeConfig {
  source: string;
  overlay?: {
    lower: string[];
    upper: string;
    work: string;
    ociWhiteouts: boolean;
    redirectDir: boolean;
    volatile: boolean;
  };
  idmap?: {
    uid?: { inside: number; outside: number; count: number }[];
    gid?: { inside: number; outside: number; count: number }[];
    squash?: { uid?: number; gid?: number };
  };
  rules: { path: string; deny: boolean; readOnly: boolean }[];
  audit: 'off' | 'denied' | 'changes';
  watch: 'off' | 'auto' | 'fanotify' | 'inotify';
  fileHandles: 'auto' | 'on' | 'off';
  maxFds: number;
  mountpoint: string;
  fsname: string;
  subtype: string;
  readOnly: boolean;
  allowOther: boolean;
  devices: boolean;
  suid: boolean;
  debug: boolean;
  passthrough: 'auto' | 'on' | 'off';
  transport: 'auto' | 'io_uring' | 'dev';
  threads: number;
  uringQueueDepth: number;
  entryTimeout: number;
  attrTimeout: number;
  negativeTimeout: number;
}

export interface NativeOpCounters {
  count: number;
  errors: number;
  totalNs: number;
  latencyLog2Ns: number[];
  errnos: Record<string, number>;
}

export interface NativeStats {
  ops: Record<string, NativeOpCounters>;
  transport: 'io_uring' | 'dev';
  requests: { ioUring: number; dev: number };
  daemonBytes: { read: number; written: number };
  passthrough: {
    enabled: boolean;
    opens: number;
    directOpens: number;
    cachedOpens: number;
    backingRegistered: number;
    backingActive: number;
    failures: number;
  };
  inodes: number;
  /** Estimated bytes the daemon spends on the inodes it knows. */
  inodeMemory: number;
  /**
   * Descriptors the daemon holds for inodes: 'handles' (file-handle mode: a bounded cache, reopened
   * from file handles) or 'descriptors' (one O_PATH descriptor per inode, bounded by RLIMIT_NOFILE).
   */
  inodeFds: { mode: 'handles' | 'descriptors'; open: number; capacity: number; reopens: number };
  events: { recorded: number; dropped: number };
  /** overflows: watcher queue overflows, each answered by invalidating everything. */
  cache: { watch: 'off' | 'fanotify' | 'inotify'; invalidations: number; overflows: number };
}

/** One audit or trace record. */
export interface FsEvent {
  kind: 'audit' | 'trace';
  /** Milliseconds since the epoch. */
  time: number;
  op: string;
  path: string;
  /** The second path of rename/link. */
  path2?: string;
  uid: number;
  gid: number;
  pid: number;
  /** 0, or the errno name of the failure. */
  result: 0 | string;
  /** Refused by an access rule. */
  denied: boolean;
  latencyNs: number;
}

export interface NativeMountHandle {
  unmount(mode?: 'normal' | 'lazy' | 'force'): Promise<void>;
  stats(): NativeStats;
  info(): {
    mountpoint: string;
    transport: 'io_uring' | 'dev';
    passthrough: boolean;
    closed: boolean;
  };
  ref(): void;
  unref(): void;
  setTrace(config: {
    enabled: boolean;
    sample?: number;
    ops?: string[];
    errorsOnly?: boolean;
  }): void;
  invalidate(path?: string): Promise<number>;
}

export interface NativeBinding {
  mount(
    config: NativeConfig,
    onClosed: () => void,
    onEvents: (batch: FsEvent[]) => void,
  ): Promise<NativeMountHandle>;
  unmountPath(path: string, mode?: 'normal' | 'lazy' | 'force'): void;
  detachAll(): void;
  capabilities(): { capSysAdmin: boolean; uringEnabled: boolean; libfuseVersion: number };
  xattrs(path: string): Record<string, Buffer>;
  dirLocked(path: string): boolean;
}

let binding: NativeBinding | undefined;

/** The package directory, from lib/ (sources run by tsx) or dist/lib/ (compiled). */
export function packageRoot(): string {
  let dir = __dirname;
  while (!existsSync(path.join(dir, 'binding.gyp'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('fusekit: cannot find the package directory');
    dir = up;
  }
  return dir;
}

/** Loads the addon: a prebuild when one matches, else build/Release. */
export function native(): NativeBinding {
  if (!binding) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => NativeBinding;
    binding = load(packageRoot());
  }
  return binding;
}
