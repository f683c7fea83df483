// Typed wrapper of build/Release/fsops (test/helpers/fsops.c): the system calls Node's fs lacks.
import type { ExecutionContext } from 'ava';
import {
  type ChildProcessWithoutNullStreams,
  execFileSync,
  spawn,
  spawnSync,
} from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

import { packageRoot } from '../../lib/native';

/** One JSON line printed by fsops: a result, or {errno, op} when the call failed. */
export type Reply = Record<string, unknown> & { errno?: string; op?: string };

/** A failed system call inside fsops; `code` is the errno name, like Node's fs errors. */
export class FsopsError extends Error {
  readonly code: string;
  constructor(code: string, op: string, args: readonly string[]) {
    super(`fsops ${args.join(' ')}: ${op} failed with ${code}`);
    this.code = code;
  }
}

let binary: string | undefined;

/** Path of the helper, built on demand (under the build lock others use too). */
export function fsopsPath(): string {
  if (binary) return binary;
  const root = packageRoot();
  const p = path.join(root, 'build', 'Release', 'fsops');
  if (!existsSync(p)) {
    execFileSync(
      'flock',
      ['/tmp/fusekit-build.lock', process.execPath, 'scripts/build-native.js'],
      {
        cwd: root,
        stdio: 'ignore',
      },
    );
  }
  if (!existsSync(p)) throw new Error(`fsops helper missing after build: ${p}`);
  binary = p;
  return p;
}

export interface RunOptions {
  uid?: number;
  gid?: number;
  /** umask of the fsops process. */
  umask?: number;
}

function parse(line: string, args: readonly string[]): Reply {
  try {
    return JSON.parse(line) as Reply;
  } catch {
    throw new Error(`fsops ${args.join(' ')}: unparsable output ${JSON.stringify(line)}`);
  }
}

/** Runs one command; returns its reply, errors included (`reply.errno`). */
export function runRaw(args: readonly string[], options: RunOptions = {}): Reply {
  const argv = options.umask !== undefined ? ['-u', options.umask.toString(8), ...args] : [...args];
  const r = spawnSync(fsopsPath(), argv, {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    ...(options.uid !== undefined ? { uid: options.uid } : {}),
    ...(options.gid !== undefined ? { gid: options.gid } : {}),
  });
  if (r.error) throw r.error;
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (!line) throw new Error(`fsops ${args.join(' ')}: no output (status ${r.status}) ${r.stderr}`);
  return parse(line, args);
}

/** Runs one command (as options.uid/gid when given); its errno name, or 'OK'. */
export function errnoAs(options: RunOptions, ...args: (string | number)[]): string {
  return runRaw(args.map(String), options).errno ?? 'OK';
}

/** Runs one command; throws FsopsError when the system call failed. */
export function run(args: readonly string[], options: RunOptions = {}): Reply {
  const reply = runRaw(args, options);
  if (reply.errno) throw new FsopsError(reply.errno, reply.op ?? '?', args);
  return reply;
}

/** The errno name fn fails with (fsops or Node fs), or 'OK' when it succeeds. */
export function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    throw e;
  }
}

/** Same as errnoOf for promises. */
export async function errnoOfAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'OK';
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    throw e;
  }
}

const hex = (b: Buffer | string): string => Buffer.from(b).toString('hex');

// ---- one-shot commands

export type RenameFlag = 'noreplace' | 'exchange' | 'whiteout';

export function rename2(from: string, to: string, flags: RenameFlag[] = []): void {
  run(['rename2', from, to, flags.join(',') || '0']);
}

export interface XattrOptions {
  /** Act on a symlink itself (l* variants). */
  nofollow?: boolean;
  flag?: 'create' | 'replace';
}

export function setxattr(
  p: string,
  name: string,
  value: Buffer | string,
  o: XattrOptions = {},
): void {
  run([o.nofollow ? 'lsetxattr' : 'setxattr', p, name, hex(value), o.flag ?? '0']);
}

export interface XattrValue {
  value: Buffer;
  /** Size reported by the size probe (size 0). */
  size: number;
  /** A buffer one byte short got ERANGE (true for empty values). */
  erangeWhenShort: boolean;
}

export function getxattr(p: string, name: string, o: { nofollow?: boolean } = {}): XattrValue {
  const r = run([o.nofollow ? 'lgetxattr' : 'getxattr', p, name]);
  return {
    value: Buffer.from(r.value as string, 'hex'),
    size: r.size as number,
    erangeWhenShort: r.erangeWhenShort as boolean,
  };
}

export function listxattr(p: string, o: { nofollow?: boolean } = {}): string[] {
  return run([o.nofollow ? 'llistxattr' : 'listxattr', p]).names as string[];
}

export function removexattr(p: string, name: string, o: { nofollow?: boolean } = {}): void {
  run([o.nofollow ? 'lremovexattr' : 'removexattr', p, name]);
}

export interface TmpfileResult {
  nlink: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  ino: string;
  linked: boolean;
  nlinkAfter: number;
}

/** O_TMPFILE in dir with data written, then linked as `link` (through /proc/self/fd) if given. */
export function tmpfile(
  dir: string,
  mode: number,
  data: Buffer | string,
  link?: string,
): TmpfileResult {
  const args = ['tmpfile', dir, mode.toString(8), hex(data)];
  if (link !== undefined) args.push(link);
  return run(args) as unknown as TmpfileResult;
}

export function seek(p: string, whence: 'data' | 'hole', offset: number): number {
  return run(['seek', p, whence, String(offset)]).offset as number;
}

/** Data extents [start, end) as SEEK_DATA/SEEK_HOLE report them. */
export function seekmap(p: string): { size: number; data: [number, number][] } {
  const r = run(['seekmap', p]);
  return { size: r.size as number, data: r.data as [number, number][] };
}

export function mknod(
  p: string,
  type: 'fifo' | 'sock' | 'chr' | 'blk',
  mode: number,
  dev?: [number, number],
  options: RunOptions = {},
): void {
  const args = ['mknod', p, type, mode.toString(8)];
  if (dev) args.push(String(dev[0]), String(dev[1]));
  run(args, options);
}

export type FallocMode =
  'keep_size' | 'punch_hole' | 'zero_range' | 'collapse_range' | 'insert_range';

export function fallocate(p: string, modes: FallocMode[], offset: number, len: number): void {
  run(['fallocate', p, modes.join(',') || '0', String(offset), String(len)]);
}

/** copy_file_range until len bytes are copied or the source ends; returns bytes copied. */
export function copyFileRange(
  src: string,
  offIn: number,
  dst: string,
  offOut: number,
  len: number,
): number {
  return run(['copy_file_range', src, String(offIn), dst, String(offOut), String(len)])
    .copied as number;
}

export type Timestamp = [number, number];

export interface Statx {
  mask: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  ino: string;
  size: number;
  blocks: number;
  blksize: number;
  attributes: string;
  rdev: [number, number];
  dev: [number, number];
  atime: Timestamp;
  mtime: Timestamp;
  ctime: Timestamp;
  btime?: Timestamp;
}

export const STATX_BTIME = 0x800;

export function statx(p: string, o: { nofollow?: boolean } = {}): Statx {
  return run(o.nofollow ? ['statx', p, 'nofollow'] : ['statx', p]) as unknown as Statx;
}

export type TimeArg = 'now' | 'omit' | Timestamp;

/** utimensat (by path, or on the symlink itself) or futimens on a descriptor opened read-only. */
export function utimens(
  p: string,
  atime: TimeArg,
  mtime: TimeArg,
  how: 'path' | 'nofollow' | 'fd' = 'path',
): void {
  const t = (x: TimeArg): string => (typeof x === 'string' ? x : `${x[0]}:${x[1]}`);
  run(['utimens', p, t(atime), t(mtime), how]);
}

/** name_to_handle_at + open_by_handle_at; the inode number the handle opens. */
export function handle(p: string, mountdir: string): { ino: string; handleBytes: number } {
  const r = run(['handle', p, mountdir]);
  return { ino: r.ino as string, handleBytes: r.handleBytes as number };
}

/** Reads [off, off+len) through a shared mapping (after writing `write` at off through it). */
export function mmap(
  p: string,
  off: number,
  len: number,
  write?: Buffer,
): { size: number; fnv1a: number; data: Buffer } {
  const args = ['mmap', p, String(off), String(len)];
  if (write) args.push(hex(write));
  const r = run(args);
  return {
    size: r.size as number,
    fnv1a: r.fnv1a as number,
    data: Buffer.from(r.data as string, 'hex'),
  };
}

/** readdir(3): [name, d_ino, d_type] for every entry, "." and ".." included. */
export function readdir(p: string): [string, string, number][] {
  return run(['readdir', p]).entries as [string, string, number][];
}

/** The first n names from one directory stream, then the rest from a second one positioned with
 * seekdir() at the first's telldir(). */
export function readdirSeek(p: string, n: number): { first: string[]; rest: string[] } {
  const r = run(['readdirseek', p, String(n)]);
  return { first: r.first as string[], rest: r.rest as string[] };
}

export interface Statvfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  flag: number;
  namemax: number;
}

export function statvfs(p: string): Statvfs {
  return run(['statvfs', p]) as unknown as Statvfs;
}

/** FNV-1a 32 of data, as fsops mmap reports it. */
export function fnv1a(data: Buffer): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) {
    h ^= data[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

let sysnrs: { flock: number; fcntl: number } | undefined;

/** System call numbers of flock and fcntl on this machine. */
export function syscallNumbers(): { flock: number; fcntl: number } {
  sysnrs ??= run(['sysnr']) as unknown as { flock: number; fcntl: number };
  return sysnrs;
}

/** The system call a process is blocked in (from /proc/PID/syscall), or -1 when running/absent. */
export function blockedSyscall(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/syscall`, 'utf8').trim();
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state !== 'S' && state !== 'D') return -1;
    const nr = Number(s.split(' ')[0]);
    return Number.isInteger(nr) ? nr : -1;
  } catch {
    return -1;
  }
}

// ---- a long-lived child: descriptors and locks outlive single commands

/**
 * `fsops serve`: a child process that runs commands sent to it one at a time (each answered in
 * order), so a test can hold descriptors and locks in another process, block it in a lock wait,
 * signal it (SIGUSR1 interrupts a blocking call with EINTR) or kill it.
 */
export class Server {
  readonly child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<number | null>;
  #pending: { resolve: (r: Reply) => void; reject: (e: Error) => void; args: string[] }[] = [];
  #stderr = '';

  constructor(options: RunOptions = {}) {
    const argv =
      options.umask !== undefined ? ['-u', options.umask.toString(8), 'serve'] : ['serve'];
    this.child = spawn(fsopsPath(), argv, {
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(options.uid !== undefined ? { uid: options.uid } : {}),
      ...(options.gid !== undefined ? { gid: options.gid } : {}),
    });
    this.child.stderr.on('data', (d: Buffer) => (this.#stderr += d.toString()));
    this.child.stdin.on('error', () => undefined); // writes after the child died are reported below
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const p = this.#pending.shift();
      if (p) p.resolve(parse(line, p.args));
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code) => {
        for (const p of this.#pending.splice(0))
          p.reject(
            new Error(
              `fsops serve exited (${code}) before answering ${p.args.join(' ')} ${this.#stderr}`,
            ),
          );
        resolve(code);
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Sends a command; resolves with its reply (errors included) once the child answers. */
  call(...args: (string | number)[]): Promise<Reply> {
    const a = args.map(String);
    if (a.some((s) => s.includes('\t') || s.includes('\n')))
      throw new Error('fsops serve: tab or newline in an argument');
    return new Promise((resolve, reject) => {
      this.#pending.push({ resolve, reject, args: a });
      this.child.stdin.write(a.join('\t') + '\n');
    });
  }

  /** Like call, but rejects with FsopsError on failure. */
  async ok(...args: (string | number)[]): Promise<Reply> {
    const r = await this.call(...args);
    if (r.errno) throw new FsopsError(r.errno, r.op ?? '?', args.map(String));
    return r;
  }

  /** Errno name of a command's failure, 'OK' on success. */
  async errno(...args: (string | number)[]): Promise<string> {
    const r = await this.call(...args);
    return r.errno ?? 'OK';
  }

  async open(p: string, flags: string, mode?: number): Promise<number> {
    const r = await this.ok('open', p, flags, ...(mode !== undefined ? [mode.toString(8)] : []));
    return r.fd as number;
  }

  /** Ends the child and waits for it to exit. */
  async close(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin.end('exit\n');
    }
    await this.exited;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** A Server killed in teardown whatever the test did (teardowns run last-registered first, so
 * create it after the mount: the child is gone before the mount is unmounted). */
export function server(t: ExecutionContext, options: RunOptions = {}): Server {
  const s = new Server(options);
  t.teardown(async () => {
    await s.kill('SIGKILL');
  });
  return s;
}

/** Polls cond (a cheap check of real state, never a fixed delay) until it holds or ~10 s pass. */
export async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for: ${what}`);
}
