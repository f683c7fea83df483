#!/usr/bin/env node
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import { statsCommand, topCommand, traceCommand } from './cli-observe';
import { FusekitError } from './errors';
import { parseColonIdMap } from './idmap';
import { metricsContentType, renderMetrics } from './metrics';
import { type Mount, mount, unmountPath } from './mount';
import { type AccessRule, type MountOptions, OPTION_SPECS, checkOption } from './options';
import { packageRoot } from './native';

const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function usage(): string {
  const flags = Object.entries(OPTION_SPECS).map(([name, spec]) => {
    const arg =
      spec.kind === 'boolean'
        ? ''
        : spec.kind === 'enum'
          ? ` <${spec.values.join('|')}>`
          : ' <value>';
    return `  --${kebab(name)}${arg}`.padEnd(42) + spec.help;
  });
  const extra = (flag: string, help: string): string => `  ${flag}`.padEnd(42) + help;
  return [
    'Usage:',
    '  fusekit mount SOURCE MOUNTPOINT [options]   mirror SOURCE at MOUNTPOINT',
    '  fusekit mount --lower L1:L2 [--upper U --work W] MOUNTPOINT [options]   overlay',
    '  fusekit umount MOUNTPOINT [--lazy|--force]  unmount (also a mount of another process)',
    '  fusekit stats MOUNTPOINT [--json|--prometheus]   statistics of a live mount',
    '  fusekit top MOUNTPOINT [--interval S]        operations per second, latency, errors',
    '  fusekit trace MOUNTPOINT [--sample N] [--ops a,b] [--errors] [--json] [--count N]',
    '  fusekit --version | --help',
    '',
    'mount runs in the foreground until unmounted or interrupted; --background returns once the',
    "mount is live and leaves a daemon serving it. stats, top and trace talk to the mount's",
    'control socket, so they work for mounts of any fusekit process.',
    '',
    'Mount options:',
    extra('--background', 'return once mounted, serve from a daemon'),
    ...flags,
    extra('--lower L1:L2', 'overlay lower layers, top first'),
    extra('--upper DIR', 'overlay upper layer (with --work)'),
    extra('--work DIR', "overlay work dir, on the upper's filesystem"),
    extra('--oci-whiteouts', 'read OCI .wh. files as whiteouts'),
    extra('--no-redirect-dir', 'refuse renaming lower directories (EXDEV)'),
    extra('--volatile', 'no fsync on the upper'),
    extra('--uid-map IN:OUT:N[:...]', 'map source uids IN.. to uids OUT.. seen through the mount'),
    extra('--gid-map IN:OUT:N[:...]', 'the same for gids'),
    extra('--squash-uid ID / --squash-gid ID', 'every owner shown as, and new files owned by, ID'),
    extra('--rule deny:PATH | ro:PATH', 'access rule (repeatable; PATH may be a glob)'),
    extra('--audit off|denied|changes', 'audit events (fusekit trace shows them)'),
    extra('--metrics-port PORT', 'serve Prometheus metrics on 127.0.0.1:PORT/metrics'),
  ].join('\n');
}

class UsageError extends Error {}

interface Parsed {
  positional: string[];
  options: Record<string, unknown>;
  background: boolean;
  daemonChild: boolean;
  lazy: boolean;
  force: boolean;
  /** Flags that are not mount options (overlay layers, id maps, rules, command flags). */
  extra: Record<string, string | true>;
  rules: AccessRule[];
}

// Flags outside OPTION_SPECS: true = takes no value.
const EXTRA_FLAGS: Record<string, boolean> = {
  lower: false,
  upper: false,
  work: false,
  'oci-whiteouts': true,
  'no-redirect-dir': true,
  volatile: true,
  'uid-map': false,
  'gid-map': false,
  'squash-uid': false,
  'squash-gid': false,
  audit: false,
  'metrics-port': false,
  json: true,
  prometheus: true,
  interval: false,
  iterations: false,
  sample: false,
  ops: false,
  errors: true,
  count: false,
};

/** Turns `--read-only --passthrough off --threads 4` into mount options, checked by the specs. */
export function parseArgs(argv: string[]): Parsed {
  const byFlag = new Map(Object.keys(OPTION_SPECS).map((k) => [kebab(k), k]));
  const out: Parsed = {
    positional: [],
    options: {},
    background: false,
    daemonChild: false,
    lazy: false,
    force: false,
    extra: {},
    rules: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) {
      out.positional.push(a);
      continue;
    }
    let flag = a.slice(2);
    let inline: string | undefined;
    const eq = flag.indexOf('=');
    if (eq >= 0) {
      inline = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (flag === 'background') out.background = true;
    else if (flag === 'daemon-child') out.daemonChild = true;
    else if (flag === 'lazy') out.lazy = true;
    else if (flag === 'force') out.force = true;
    else if (flag === 'rule') {
      const raw = inline ?? argv[++i];
      const m = raw === undefined ? null : /^(deny|ro|read-only):(.+)$/.exec(raw);
      if (!m) throw new UsageError('--rule takes deny:PATH or ro:PATH');
      out.rules.push(
        m[1] === 'deny' ? { path: m[2]!, deny: true } : { path: m[2]!, readOnly: true },
      );
    } else if (flag in EXTRA_FLAGS) {
      if (EXTRA_FLAGS[flag]) {
        out.extra[flag] = true;
      } else {
        const raw = inline ?? argv[++i];
        if (raw === undefined || raw === '') throw new UsageError(`--${flag} needs a value`);
        out.extra[flag] = raw;
      }
    } else {
      const name = byFlag.get(flag);
      const spec = name ? OPTION_SPECS[name] : undefined;
      if (!name || !spec) throw new UsageError(`unknown option --${flag}`);
      let value: unknown;
      if (spec.kind === 'boolean') {
        if (inline !== undefined && inline !== 'true' && inline !== 'false')
          throw new UsageError(`--${flag} takes no value, or =true / =false`);
        value = inline !== 'false';
      } else {
        const raw = inline ?? argv[++i];
        if (raw === undefined) throw new UsageError(`--${flag} needs a value`);
        value = spec.kind === 'number' && raw.trim() !== '' ? Number(raw) : raw;
      }
      try {
        checkOption(name, value);
      } catch (e) {
        // A bad value is a usage error like a bad flag.
        throw new UsageError(`invalid --${flag}: ${(e as Error).message}`);
      }
      out.options[name] = value;
    }
  }
  return out;
}

function intFlag(p: Parsed, flag: string): number | undefined {
  const v = p.extra[flag];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${flag} needs a non-negative integer`);
  return n;
}

/** The mount() options the command line asks for. */
export function mountOptions(p: Parsed): MountOptions {
  const overlay = p.extra.lower !== undefined;
  if (p.positional.length !== (overlay ? 1 : 2))
    throw new UsageError(
      overlay ? 'an overlay mount needs exactly MOUNTPOINT' : 'mount needs SOURCE and MOUNTPOINT',
    );
  for (const f of ['upper', 'work', 'oci-whiteouts', 'no-redirect-dir', 'volatile'])
    if (p.extra[f] !== undefined && !overlay) throw new UsageError(`--${f} needs --lower`);
  const o: MountOptions = {
    ...(p.options as Partial<MountOptions>),
    mountpoint: p.positional[overlay ? 0 : 1]!,
  };
  if (overlay) {
    o.overlay = {
      lower: String(p.extra.lower)
        .split(':')
        .filter((l) => l.length > 0),
      ...(p.extra.upper !== undefined ? { upper: String(p.extra.upper) } : {}),
      ...(p.extra.work !== undefined ? { work: String(p.extra.work) } : {}),
      ociWhiteouts: p.extra['oci-whiteouts'] === true,
      redirectDir: p.extra['no-redirect-dir'] !== true,
      volatile: p.extra.volatile === true,
    };
  } else {
    o.source = p.positional[0]!;
  }
  try {
    const uid =
      p.extra['uid-map'] !== undefined ? parseColonIdMap(String(p.extra['uid-map'])) : undefined;
    const gid =
      p.extra['gid-map'] !== undefined ? parseColonIdMap(String(p.extra['gid-map'])) : undefined;
    const su = intFlag(p, 'squash-uid');
    const sg = intFlag(p, 'squash-gid');
    if (uid || gid || su !== undefined || sg !== undefined) {
      o.idmap = {
        ...(uid ? { uid } : {}),
        ...(gid ? { gid } : {}),
        ...(su !== undefined || sg !== undefined
          ? {
              squash: {
                ...(su !== undefined ? { uid: su } : {}),
                ...(sg !== undefined ? { gid: sg } : {}),
              },
            }
          : {}),
      };
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
  if (p.rules.length) o.rules = p.rules;
  if (p.extra.audit !== undefined) {
    const a = String(p.extra.audit);
    if (a !== 'off' && a !== 'denied' && a !== 'changes')
      throw new UsageError('--audit takes off, denied or changes');
    o.audit = a;
  }
  return o;
}

/**
 * --metrics-port: a Prometheus scrape endpoint on loopback (control plane, not the request path).
 * Resolves once it listens, so the banner (or the --background answer) means it can be scraped.
 */
async function serveMetrics(m: Mount, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    const open = /application\/openmetrics-text/.test(req.headers.accept ?? '');
    res.writeHead(200, { 'content-type': metricsContentType(open) });
    res.end(renderMetrics({ mountpoint: m.mountpoint, stats: m.stats() }, { openMetrics: open }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.unref();
  void m.closed.then(() => server.close());
  return server;
}

async function runMount(p: Parsed): Promise<number> {
  const options = mountOptions(p);
  const metricsPort = intFlag(p, 'metrics-port');
  if (p.background && !p.daemonChild) return spawnDaemon(process.argv.slice(2));
  const m = await mount(options);
  if (metricsPort !== undefined) {
    try {
      await serveMetrics(m, metricsPort);
    } catch (e) {
      // A port already taken is the user's to fix; leave nothing mounted behind the error.
      await m.unmount().catch(() => m.unmount({ lazy: true }));
      throw FusekitError.from(e, `--metrics-port ${metricsPort}: ${(e as Error).message}`);
    }
  }
  const mountpoint = m.mountpoint;
  const source = options.source ?? `overlay of ${options.overlay!.lower.join(':')}`;
  const stop = (): void => {
    m.unmount().catch(() => m.unmount({ lazy: true }).catch(() => undefined));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  if (p.daemonChild && process.send) {
    process.send({ ok: true, transport: m.transport, passthrough: m.passthrough });
    process.disconnect();
    process.chdir('/'); // a daemon does not pin the directory it was started from
  } else {
    process.stderr.write(
      `fusekit: ${source} mounted at ${mountpoint} (transport ${m.transport}, passthrough ` +
        `${m.passthrough ? 'on' : 'off'}); Ctrl-C or fusekit umount ${mountpoint} to stop\n`,
    );
  }
  await m.closed;
  return 0;
}

/** --background: a detached daemon mounts; this process exits 0 once the mount is live. */
function spawnDaemon(args: string[]): Promise<number> {
  return new Promise((resolve) => {
    // execArgv too: the same loader (e.g. tsx) must run the daemon as this process.
    const argv = [...process.execArgv, __filename, ...args, '--daemon-child'];
    const child = spawn(process.execPath, argv, {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    let answered = false;
    child.on('message', (msg: { ok: boolean; code?: string; message?: string }) => {
      answered = true;
      if (msg.ok) {
        child.unref();
        child.disconnect();
        resolve(0);
      } else {
        process.stderr.write(`fusekit: ${msg.message ?? 'mount failed'}\n`);
        resolve(1);
      }
    });
    child.on('exit', (code) => {
      if (!answered) {
        process.stderr.write(
          `fusekit: the mount daemon exited (${code}) before the mount was live\n`,
        );
        resolve(1);
      }
    });
  });
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(usage() + '\n');
    return cmd ? 0 : 2;
  }
  if (cmd === '--version' || cmd === '-V') {
    process.stdout.write(`fusekit ${version()}\n`);
    return 0;
  }
  const p = parseArgs(rest);
  if (cmd === 'mount') return runMount(p);
  if (cmd === 'umount' || cmd === 'unmount') {
    if (p.positional.length !== 1) throw new UsageError('umount needs MOUNTPOINT');
    unmountPath(p.positional[0]!, { lazy: p.lazy, force: p.force });
    return 0;
  }
  if (cmd === 'stats' || cmd === 'top' || cmd === 'trace') {
    if (p.positional.length !== 1) throw new UsageError(`${cmd} needs MOUNTPOINT`);
    const mp = path.resolve(p.positional[0]!);
    if (cmd === 'stats') {
      const format = p.extra.prometheus ? 'prometheus' : p.extra.json ? 'json' : 'text';
      process.stdout.write(await statsCommand(mp, format));
    } else if (cmd === 'top') {
      const interval = Number(p.extra.interval ?? 1);
      if (!(interval > 0)) throw new UsageError('--interval needs a positive number of seconds');
      await topCommand(mp, interval, intFlag(p, 'iterations') ?? 0);
    } else {
      const sample = intFlag(p, 'sample');
      const count = intFlag(p, 'count');
      await traceCommand(mp, {
        ...(sample ? { sample } : {}),
        ...(p.extra.ops !== undefined ? { ops: String(p.extra.ops).split(',') } : {}),
        errorsOnly: p.extra.errors === true,
        json: p.extra.json === true,
        ...(count ? { count } : {}),
      });
    }
    return 0;
  }
  throw new UsageError(`unknown command ${cmd}`);
}

if (require.main === module) {
  const daemonChild = process.argv.includes('--daemon-child');
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      const msg = err instanceof Error ? err.message : String(err);
      if (daemonChild && process.send) {
        const code = err instanceof FusekitError ? err.code : 'EIO';
        process.send({ ok: false, code, message: msg }, () => process.exit(1));
        return;
      }
      process.stderr.write(`fusekit: ${msg}\n`);
      if (err instanceof UsageError) process.stderr.write(`\n${usage()}\n`);
      process.exitCode = err instanceof UsageError ? 2 : 1;
    },
  );
}
