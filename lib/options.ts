import * as path from 'node:path';

import { invalid } from './errors';
import { type IdMapOptions, checkIdMap } from './idmap';
import type { NativeConfig } from './native';

/** Layers of an overlay mount, as kernel overlayfs takes them. */
export interface OverlayLayers {
  /** Lower layers, top first. At least one. */
  lower: string[];
  /** Writable upper layer; without it the overlay is read-only. */
  upper?: string;
  /** Work dir on the upper's filesystem, empty or used by an overlay before. */
  work?: string;
  /** Also read OCI/AUFS `.wh.<name>` and `.wh..wh..opq` files as whiteouts. Default false. */
  ociWhiteouts?: boolean;
  /** Allow renaming directories that come from a lower layer (kernel: redirect_dir). Default true. */
  redirectDir?: boolean;
  /** Skip fsync: the upper is disposable (podman's "volatile"). Default false. */
  volatile?: boolean;
}

/** Options of `mount()`. Every one is also a kebab-case flag of `fusekit mount`. */
export interface MountOptions {
  /** Directory to mirror (passthrough). Exactly one of `source` and `overlay`. */
  source?: string;
  /** Layers to merge (overlay). Exactly one of `source` and `overlay`. */
  overlay?: OverlayLayers;
  /** Empty directory to mount on. */
  mountpoint: string;
  /** Mount read-only (the kernel and the daemon both refuse writes). Default false. */
  readOnly?: boolean;
  /**
   * Data path. 'auto' (default) uses kernel FUSE passthrough when the kernel and privileges allow
   * (root) and the daemon's splice path otherwise; 'on' fails to mount without it; 'off' always
   * serves data through the daemon.
   */
  passthrough?: 'auto' | 'on' | 'off';
  /**
   * Request transport. 'auto' (default) uses FUSE-over-io_uring when the kernel has it enabled,
   * else /dev/fuse; 'io_uring' fails without it; 'dev' always uses /dev/fuse.
   */
  transport?: 'auto' | 'io_uring' | 'dev';
  /** Maximum request threads of the /dev/fuse loop (default 10). */
  threads?: number;
  /** io_uring queue depth per CPU (default 16). */
  uringQueueDepth?: number;
  /** Seconds the kernel may cache names (default 1; 3600 with watch). */
  entryTimeout?: number;
  /** Seconds the kernel may cache attributes (default 1; 3600 with watch). */
  attrTimeout?: number;
  /** Seconds the kernel may cache "no such file" (default 0; 3600 with watch). */
  negativeTimeout?: number;
  /** Shorthand for cache.watch = true. */
  watch?: boolean;
  /** Expose a control socket for `fusekit stats|top|trace` (default true). */
  control?: boolean;
  /**
   * Passthrough inode store: 'auto' (default) keeps kernel file handles instead of one open
   * descriptor per known inode when the source's filesystem and privileges allow it (a tree of
   * millions of files then needs a bounded number of descriptors); 'on' fails without it; 'off'
   * holds one O_PATH descriptor per inode (bounded by RLIMIT_NOFILE).
   */
  fileHandles?: 'auto' | 'on' | 'off';
  /**
   * Descriptors kept open in file-handle mode. Default: RLIMIT_NOFILE less a reserve (an eighth of
   * it, or 8192 or half of it where that is more), at most 65536. When the daemon's opens run out
   * of descriptors, the cache gives some back and stays that much smaller.
   */
  maxFds?: number;
  /** Kernel cache settings; these win over the top-level timeouts. */
  cache?: CacheOptions;
  /** Let users other than the mounting one use the mount. Default false. */
  allowOther?: boolean;
  /** Filesystem name shown in /proc/mounts (default: the source path). */
  fsname?: string;
  /** Filesystem subtype: the type shows as fuse.<subtype> (default "fusekit"). */
  subtype?: string;
  /** Honour device nodes and allow creating them (mount without nodev). Default false. */
  devices?: boolean;
  /** Honour setuid/setgid bits on executables (mount without nosuid). Default false. */
  suid?: boolean;
  /** Allow mounting over a non-empty directory (its content is hidden). Default false. */
  allowNonEmpty?: boolean;
  /** libfuse debug output on stderr. Default false. */
  debug?: boolean;
  /** UID/GID mapping between the source's ids and the ids used through the mount. */
  idmap?: IdMapOptions;
  /**
   * Access rules, enforced in the core: `path` is a path from the mount root or a glob ("*", "**",
   * "?") and covers everything below it; deny → EACCES for every access, readOnly → EROFS for
   * every change. deny wins.
   */
  rules?: AccessRule[];
  /**
   * Audit events ('audit' on the Mount): 'denied' (the default when rules are given) reports
   * operations refused by a rule; 'changes' also every change (create, write-open, setattr,
   * rename, unlink, xattrs, ...); 'off'.
   */
  audit?: 'off' | 'denied' | 'changes';
}

export interface CacheOptions {
  entryTimeout?: number;
  attrTimeout?: number;
  negativeTimeout?: number;
  /**
   * Turn changes made to the source (or any overlay layer) outside the mount into kernel cache
   * invalidations within milliseconds, so long cache timeouts stay correct. true picks fanotify
   * (one mark per filesystem; needs CAP_SYS_ADMIN) and falls back to inotify.
   */
  watch?: boolean | 'fanotify' | 'inotify';
}

/** Cache timeouts with a watcher: invalidations, not timeouts, keep the cache true. */
export const WATCHED_TIMEOUT = 3600;

export interface AccessRule {
  path: string;
  deny?: boolean;
  readOnly?: boolean;
}

function checkCache(v: unknown): CacheOptions {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null) throw invalid('option cache must be an object');
  const o = v as Record<string, unknown>;
  const out: CacheOptions = {};
  for (const [k, val] of Object.entries(o)) {
    if (val === undefined) continue;
    if (k === 'watch') {
      if (typeof val !== 'boolean' && val !== 'fanotify' && val !== 'inotify')
        throw invalid("cache.watch must be true, false, 'fanotify' or 'inotify'");
      out.watch = val;
    } else if (k === 'entryTimeout' || k === 'attrTimeout' || k === 'negativeTimeout') {
      checkOption(k, val);
      out[k] = val as number;
    } else {
      throw invalid(`unknown cache option '${k}'`);
    }
  }
  return out;
}

function checkRules(v: unknown): Required<AccessRule>[] {
  if (!Array.isArray(v))
    throw invalid('option rules must be an array of { path, deny?, readOnly? }');
  return v.map((r, i) => {
    const o = r as Record<string, unknown>;
    if (typeof o !== 'object' || o === null) throw invalid(`rules[${i}] must be an object`);
    for (const k of Object.keys(o))
      if (!['path', 'deny', 'readOnly'].includes(k))
        throw invalid(`rules[${i}]: unknown key '${k}'`);
    if (typeof o.path !== 'string' || o.path.length === 0 || o.path.includes('\0'))
      throw invalid(`rules[${i}].path must be a non-empty path or glob`);
    for (const k of ['deny', 'readOnly'] as const)
      if (o[k] !== undefined && typeof o[k] !== 'boolean')
        throw invalid(`rules[${i}].${k} must be a boolean`);
    if (!o.deny && !o.readOnly) throw invalid(`rules[${i}] needs deny or readOnly`);
    return { path: o.path, deny: o.deny === true, readOnly: o.readOnly === true };
  });
}

type Spec =
  | { kind: 'boolean'; help: string }
  | { kind: 'enum'; values: readonly string[]; help: string }
  | { kind: 'number'; min: number; max: number; integer: boolean; help: string }
  | { kind: 'string'; pattern?: RegExp; help: string };

/** The tunable options (all but source/mountpoint), shared by validation and the CLI. */
export const OPTION_SPECS: Record<string, Spec> = {
  readOnly: { kind: 'boolean', help: 'mount read-only' },
  passthrough: {
    kind: 'enum',
    values: ['auto', 'on', 'off'],
    help: 'kernel passthrough data path: auto, on or off',
  },
  transport: {
    kind: 'enum',
    values: ['auto', 'io_uring', 'dev'],
    help: 'request transport: auto, io_uring or dev',
  },
  threads: { kind: 'number', min: 1, max: 1024, integer: true, help: 'max /dev/fuse threads' },
  uringQueueDepth: {
    kind: 'number',
    min: 1,
    max: 4096,
    integer: true,
    help: 'io_uring queue depth per CPU',
  },
  entryTimeout: {
    kind: 'number',
    min: 0,
    max: 1e7,
    integer: false,
    help: 'name cache seconds (1; 3600 with --watch)',
  },
  attrTimeout: {
    kind: 'number',
    min: 0,
    max: 1e7,
    integer: false,
    help: 'attribute cache seconds (1; 3600 with --watch)',
  },
  negativeTimeout: {
    kind: 'number',
    min: 0,
    max: 1e7,
    integer: false,
    help: 'negative lookup cache seconds (0; 3600 with --watch)',
  },
  watch: { kind: 'boolean', help: 'keep long caches true: source changes become invalidations' },
  control: { kind: 'boolean', help: 'expose the control socket (default true)' },
  fileHandles: {
    kind: 'enum',
    values: ['auto', 'on', 'off'],
    help: 'keep file handles, not a descriptor per inode',
  },
  maxFds: {
    kind: 'number',
    min: 16,
    max: 1048576,
    integer: true,
    help: 'descriptors cached in file-handle mode',
  },
  allowOther: { kind: 'boolean', help: 'allow access by other users' },
  fsname: { kind: 'string', help: 'filesystem name in /proc/mounts' },
  subtype: {
    kind: 'string',
    pattern: /^[A-Za-z0-9_.-]{1,32}$/,
    help: 'type shows as fuse.<subtype>',
  },
  devices: { kind: 'boolean', help: 'honour and allow device nodes' },
  suid: { kind: 'boolean', help: 'honour setuid/setgid executables' },
  allowNonEmpty: { kind: 'boolean', help: 'allow a non-empty mount point' },
  debug: { kind: 'boolean', help: 'libfuse debug output' },
};

export function checkOption(name: string, value: unknown): void {
  const spec = OPTION_SPECS[name];
  if (!spec) throw invalid(`unknown option '${name}'`);
  switch (spec.kind) {
    case 'boolean':
      if (typeof value !== 'boolean') throw invalid(`option ${name} must be a boolean`);
      return;
    case 'enum':
      if (typeof value !== 'string' || !spec.values.includes(value))
        throw invalid(`option ${name} must be one of ${spec.values.join(', ')}`);
      return;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value))
        throw invalid(`option ${name} must be a finite number`);
      if (spec.integer && !Number.isInteger(value))
        throw invalid(`option ${name} must be an integer`);
      if (value < spec.min || value > spec.max)
        throw invalid(`option ${name} must be between ${spec.min} and ${spec.max}`);
      return;
    case 'string':
      if (typeof value !== 'string' || value.length === 0 || value.includes('\0'))
        throw invalid(`option ${name} must be a non-empty string`);
      if (spec.pattern && !spec.pattern.test(value))
        throw invalid(`option ${name} must match ${spec.pattern}`);
      return;
  }
}

function checkPath(name: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.includes('\0'))
    throw invalid(`option ${name} must be a non-empty path`);
  return path.resolve(value);
}

export interface NormalizedOptions extends NativeConfig {
  allowNonEmpty: boolean;
  control: boolean;
}

function normalizeOverlay(o: unknown): Required<OverlayLayers> {
  if (typeof o !== 'object' || o === null) throw invalid('option overlay must be an object');
  const v = o as Record<string, unknown>;
  for (const k of Object.keys(v)) {
    if (!['lower', 'upper', 'work', 'ociWhiteouts', 'redirectDir', 'volatile'].includes(k))
      throw invalid(`unknown overlay option '${k}'`);
  }
  if (!Array.isArray(v.lower) || v.lower.length === 0)
    throw invalid('overlay.lower must be a non-empty array of directories (top first)');
  const lower = v.lower.map((l, i) => checkPath(`overlay.lower[${i}]`, l));
  const hasUpper = v.upper !== undefined;
  if (hasUpper !== (v.work !== undefined))
    throw invalid('overlay.upper and overlay.work go together (neither: a read-only overlay)');
  for (const k of ['ociWhiteouts', 'redirectDir', 'volatile'] as const) {
    if (v[k] !== undefined && typeof v[k] !== 'boolean')
      throw invalid(`overlay.${k} must be a boolean`);
  }
  return {
    lower,
    upper: hasUpper ? checkPath('overlay.upper', v.upper) : '',
    work: hasUpper ? checkPath('overlay.work', v.work) : '',
    ociWhiteouts: (v.ociWhiteouts as boolean | undefined) ?? false,
    redirectDir: (v.redirectDir as boolean | undefined) ?? true,
    volatile: (v.volatile as boolean | undefined) ?? false,
  };
}

/** Validates options before anything touches the system and fills in the defaults. */
export function normalizeOptions(options: MountOptions): NormalizedOptions {
  if (typeof options !== 'object' || options === null)
    throw invalid('mount() needs an options object');
  for (const [key, value] of Object.entries(options)) {
    if (
      ['source', 'mountpoint', 'overlay', 'idmap', 'rules', 'audit', 'cache'].includes(key) ||
      value === undefined
    )
      continue;
    checkOption(key, value);
  }
  if ((options.source === undefined) === (options.overlay === undefined))
    throw invalid('mount() needs exactly one of source (passthrough) and overlay (layers)');
  const overlay = options.overlay === undefined ? undefined : normalizeOverlay(options.overlay);
  const idmap = options.idmap === undefined ? undefined : checkIdMap(options.idmap);
  const rules = options.rules === undefined ? [] : checkRules(options.rules);
  if (options.audit !== undefined && !['off', 'denied', 'changes'].includes(options.audit))
    throw invalid('option audit must be one of off, denied, changes');
  const audit = options.audit ?? (rules.length > 0 ? 'denied' : 'off');
  const cache = checkCache(options.cache);
  const watchOpt = cache.watch ?? options.watch ?? false;
  const watch = watchOpt === true ? 'auto' : watchOpt === false ? 'off' : watchOpt;
  const longCache = watch !== 'off';
  const timeout = (k: 'entryTimeout' | 'attrTimeout' | 'negativeTimeout', plain: number): number =>
    cache[k] ?? options[k] ?? (longCache ? WATCHED_TIMEOUT : plain);
  const source = overlay ? '' : checkPath('source', options.source);
  const mountpoint = checkPath('mountpoint', options.mountpoint);
  return {
    source,
    ...(overlay ? { overlay } : {}),
    ...(idmap ? { idmap } : {}),
    rules,
    audit,
    mountpoint,
    fsname: options.fsname ?? (overlay ? 'fusekit-overlay' : source),
    subtype: options.subtype ?? 'fusekit',
    readOnly: (options.readOnly ?? false) || (overlay !== undefined && overlay.upper === ''),
    allowOther: options.allowOther ?? false,
    devices: options.devices ?? false,
    suid: options.suid ?? false,
    debug: options.debug ?? false,
    passthrough: options.passthrough ?? 'auto',
    transport: options.transport ?? 'auto',
    threads: options.threads ?? 0,
    uringQueueDepth: options.uringQueueDepth ?? 0,
    entryTimeout: timeout('entryTimeout', 1),
    attrTimeout: timeout('attrTimeout', 1),
    negativeTimeout: timeout('negativeTimeout', 0),
    watch,
    fileHandles: options.fileHandles ?? 'auto',
    maxFds: options.maxFds ?? 0,
    allowNonEmpty: options.allowNonEmpty ?? false,
    control: options.control ?? true,
  };
}
