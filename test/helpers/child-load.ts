// Load generators for confinement and concurrency tests, run as child processes with plain
// synchronous Node fs (each child is one sequential stream of syscalls). argv[2] is a JSON spec
// with a `mode`; results are JSON lines on stdout, the last one `{ done: true, ... }`.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { pattern } from './proc-util';

const spec = JSON.parse(process.argv[2]!) as Record<string, unknown> & { mode: string };

// stdout is a pipe that Node may have made non-blocking: a parent slow to drain it (under a
// sanitizer, say) gets EAGAIN, which means wait and write the rest, not fail.
function print(o: Record<string, unknown>): void {
  const buf = Buffer.from(JSON.stringify(o) + '\n');
  for (let off = 0; off < buf.length;) {
    try {
      off += fs.writeSync(1, buf, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

function code(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/** Counts outcomes by name: 'ok' or the errno name. */
class Tally {
  readonly counts: Record<string, number> = {};
  add(what: string, outcome: string): void {
    const k = `${what}:${outcome}`;
    this.counts[k] = (this.counts[k] ?? 0) + 1;
  }
  try(what: string, fn: () => void): boolean {
    try {
      fn();
      this.add(what, 'ok');
      return true;
    } catch (e) {
      this.add(what, code(e));
      return false;
    }
  }
}

// xorshift: reproducible and fast
let rng = ((spec.rngSeed ?? spec.seed ?? process.pid) as number) | 0 || 1;
function rand(n: number): number {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  return (rng >>> 0) % n;
}

function readWhole(p: string): Buffer {
  const fd = fs.openSync(p, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(size + 1);
    let n = 0;
    for (;;) {
      const r = fs.readSync(fd, buf, n, buf.length - n, n);
      if (r === 0) break;
      n += r;
      if (n === buf.length) break;
    }
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

const modes: Record<string, () => void> = {
  // O_CREAT on a name that is (sometimes) a symlink pointing out of the source.
  'creat-race'() {
    const p = spec.path as string;
    const t = new Tally();
    for (let i = 0; i < (spec.iterations as number); i++) {
      t.try('creat', () => {
        const fd = fs.openSync(p, fs.constants.O_CREAT | fs.constants.O_WRONLY);
        fs.writeSync(fd, 'created through the mount');
        fs.closeSync(fd);
      });
      t.try('unlink', () => fs.unlinkSync(p));
    }
    print({ done: true, counts: t.counts });
  },

  // The host side of the race: the name flips between absent, a symlink and absent again.
  'flip-symlink'() {
    const p = spec.path as string;
    const t = new Tally();
    for (let i = 0; i < (spec.iterations as number); i++) {
      t.try('symlink', () => fs.symlinkSync(spec.target as string, p));
      t.try('unlink', () => fs.unlinkSync(p));
    }
    print({ done: true, counts: t.counts });
  },

  // Works in its cwd (inside the mount) until the stop file exists: create a file and a
  // directory, list ".", list "..", stat "..". Each iteration says whether the flag file existed
  // when it started.
  'work-in-cwd'() {
    const flag = spec.flag as string;
    const stop = spec.stop as string;
    for (let i = 0; i < (spec.max as number) && !fs.existsSync(stop); i++) {
      const after = fs.existsSync(flag);
      const r: Record<string, unknown> = { i, after };
      const step = (name: string, fn: () => unknown): void => {
        try {
          r[name] = fn() ?? 'ok';
        } catch (e) {
          r[name] = { error: code(e) };
        }
      };
      step('create', () => fs.writeFileSync(`f${i}`, `file ${i}`, { flag: 'wx' }));
      step('mkdir', () => fs.mkdirSync(`d${i}`));
      step('list', () => fs.readdirSync('.'));
      step('listParent', () => fs.readdirSync('..'));
      step('statParent', () => (fs.statSync('..').isDirectory() ? 'dir' : 'not a dir'));
      // A name that only ever exists outside (made there after the move).
      step('statLate', () => {
        fs.statSync('late');
        return 'found';
      });
      print(r);
    }
    print({ done: true });
  },

  // Copy-up vs open on an overlay: random files of a lower layer read whole (checked), written
  // (their own bytes written back at a random offset: a data copy-up), read through a descriptor
  // opened before a write elsewhere, or chmod-ed (a metadata copy-up), racing other processes
  // doing the same to the same files. File k holds pattern(size, (k + 1) << 24).
  copyup() {
    const dir = spec.dir as string;
    const files = spec.files as number;
    const size = spec.size as number;
    const t = new Tally();
    const cache = new Map<number, Buffer>();
    const expected = (k: number): Buffer => {
      let b = cache.get(k);
      if (!b) cache.set(k, (b = pattern(size, (k + 1) << 24)));
      return b;
    };
    const bad = (): Error => Object.assign(new Error('data mismatch'), { code: 'BADDATA' });
    const chunk = 4096;
    for (let i = 0; i < (spec.iterations as number); i++) {
      const k = rand(files);
      const p = path.join(dir, `f${k}`);
      const want = expected(k);
      switch (rand(4)) {
        case 0:
          t.try('read', () => {
            if (!readWhole(p).equals(want)) throw bad();
          });
          break;
        case 1:
          t.try('write', () => {
            const fd = fs.openSync(p, 'r+');
            try {
              const off = rand(size - chunk);
              if (fs.writeSync(fd, want, off, chunk, off) !== chunk) throw bad();
            } finally {
              fs.closeSync(fd);
            }
          });
          break;
        case 2:
          t.try('held', () => {
            const fd = fs.openSync(p, 'r');
            try {
              const other = path.join(dir, `f${rand(files)}`);
              const wfd = fs.openSync(other, 'r+');
              fs.closeSync(wfd);
              const buf = Buffer.alloc(chunk);
              const off = rand(size - chunk);
              if (fs.readSync(fd, buf, 0, chunk, off) !== chunk) throw bad();
              if (!buf.equals(want.subarray(off, off + chunk))) throw bad();
            } finally {
              fs.closeSync(fd);
            }
          });
          break;
        default:
          t.try('chmod', () => fs.chmodSync(p, 0o644));
      }
    }
    print({ done: true, counts: t.counts });
  },

  // Lookup vs forget: random operations on a small set of names.
  hammer() {
    const dir = spec.dir as string;
    const names = spec.names as number;
    const t = new Tally();
    const name = (): string => path.join(dir, `n${rand(names)}`);
    for (let i = 0; i < (spec.iterations as number); i++) {
      const p = name();
      switch (rand(8)) {
        case 0:
          t.try('stat', () => fs.statSync(p));
          break;
        case 1:
          t.try('create', () => fs.writeFileSync(p, path.basename(p)));
          break;
        case 2:
          t.try('unlink', () => fs.unlinkSync(p));
          break;
        case 3:
          t.try('rename', () => fs.renameSync(p, name()));
          break;
        case 4:
          t.try('mkdir', () => fs.mkdirSync(p));
          break;
        case 5:
          t.try('rmdir', () => fs.rmdirSync(p));
          break;
        case 6:
          t.try('readdir', () => fs.readdirSync(dir, { withFileTypes: true }));
          break;
        case 7:
          t.try('read', () => {
            const got = fs.readFileSync(p, 'utf8');
            // A file only ever holds the name it was created as (renames may change its name), or
            // nothing while a concurrent create truncates and writes it.
            if (got !== '' && !/^n\d+$/.test(got))
              throw Object.assign(new Error('bad content ' + got), { code: 'BADDATA' });
          });
          break;
      }
    }
    print({ done: true, counts: t.counts });
  },

  // Creates and unlinks churn names c0..cN-1 for a while.
  churn() {
    const dir = spec.dir as string;
    const t = new Tally();
    for (let i = 0; i < (spec.iterations as number); i++) {
      const p = path.join(dir, `c${rand(spec.names as number)}`);
      if (rand(2)) t.try('create', () => fs.writeFileSync(p, 'churn'));
      else t.try('unlink', () => fs.unlinkSync(p));
    }
    print({ done: true, counts: t.counts });
  },

  // Lists a directory (readdirplus) while churn runs; checks every listing.
  lister() {
    const dir = spec.dir as string;
    const stable = spec.stable as string[];
    const universe = new Set([
      ...stable,
      ...Array.from({ length: spec.names as number }, (_, i) => `c${i}`),
    ]);
    const t = new Tally();
    const problems: string[] = [];
    for (let i = 0; i < (spec.iterations as number); i++) {
      t.try('list', () => {
        const entries = fs.readdirSync(dir, { withFileTypes: true });
        const names = entries.map((e) => e.name);
        if (new Set(names).size !== names.length) problems.push(`duplicates in ${names.join(',')}`);
        for (const s of stable) if (!names.includes(s)) problems.push(`missing stable ${s}`);
        for (const n of names) if (!universe.has(n)) problems.push(`unexpected name ${n}`);
        for (const e of entries) if (!e.isFile()) problems.push(`${e.name} is not a file`);
      });
    }
    print({
      done: true,
      counts: t.counts,
      problems: problems.slice(0, 20),
      nproblems: problems.length,
    });
  },

  // Opens, reads whole, closes; compares with the pattern.
  reader() {
    const p = spec.path as string;
    const expected = pattern(spec.size as number, spec.seed as number);
    const t = new Tally();
    for (let i = 0; i < (spec.iterations as number); i++) {
      t.try('read', () => {
        const got = readWhole(p);
        if (!got.equals(expected))
          throw Object.assign(new Error('data mismatch'), { code: 'BADDATA' });
      });
    }
    print({ done: true, counts: t.counts });
  },

  // Opens for writing (no truncation) and rewrites ranges with the very bytes they hold.
  writer() {
    const p = spec.path as string;
    const expected = pattern(spec.size as number, spec.seed as number);
    const t = new Tally();
    for (let i = 0; i < (spec.iterations as number); i++) {
      t.try('write', () => {
        const fd = fs.openSync(p, rand(2) ? 'r+' : fs.constants.O_WRONLY);
        try {
          const off = rand(expected.length);
          const len = Math.min(1 + rand(65536), expected.length - off);
          fs.writeSync(fd, expected, off, len, off);
        } finally {
          fs.closeSync(fd);
        }
      });
    }
    print({ done: true, counts: t.counts });
  },

  // Reads in a loop (one long-lived descriptor plus fresh opens) until errors persist; says
  // 'ready' after the first good round.
  'read-until-error'() {
    const p = spec.path as string;
    const expected = pattern(spec.size as number, spec.seed as number);
    const t = new Tally();
    let fd = -1;
    try {
      fd = fs.openSync(p, 'r');
    } catch (e) {
      t.add('open', code(e));
    }
    let failuresInARow = 0;
    let ready = false;
    const buf = Buffer.alloc(4096);
    for (let i = 0; failuresInARow < 200; i++) {
      let ok = true;
      if (fd >= 0) {
        ok =
          t.try('pread', () => {
            const off = rand(expected.length - buf.length);
            const n = fs.readSync(fd, buf, 0, buf.length, off);
            if (n !== buf.length || !buf.equals(expected.subarray(off, off + n)))
              throw Object.assign(new Error('data mismatch'), { code: 'BADDATA' });
          }) && ok;
      }
      ok =
        t.try('reopen', () => {
          const got = readWhole(p);
          if (!got.equals(expected))
            throw Object.assign(new Error('data mismatch'), { code: 'BADDATA' });
        }) && ok;
      failuresInARow = ok ? 0 : failuresInARow + 1;
      if (ok && !ready) {
        ready = true;
        print({ ready: true });
      }
    }
    if (fd >= 0) {
      try {
        fs.closeSync(fd);
      } catch (e) {
        t.add('close', code(e));
      }
    }
    print({ done: true, counts: t.counts });
  },
};

const run = modes[spec.mode];
if (!run) throw new Error(`unknown mode ${spec.mode}`);
run();
