#!/usr/bin/env node
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import { FusekitError } from './errors';
import { type MountOptions, OPTION_SPECS, checkOption } from './options';
import { mount, unmountPath } from './mount';
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
      spec.kind === 'boolean' ? '' : spec.kind === 'enum' ? ` <${spec.values.join('|')}>` : ' <value>';
    return `  --${kebab(name)}${arg}`.padEnd(42) + spec.help;
  });
  return [
    'Usage:',
    '  fusekit mount SOURCE MOUNTPOINT [options]   mirror SOURCE at MOUNTPOINT',
    '  fusekit umount MOUNTPOINT [--lazy|--force]  unmount (also a mount of another process)',
    '  fusekit --version | --help',
    '',
    'mount runs in the foreground until unmounted or interrupted; --background returns once the',
    'mount is live and leaves a daemon serving it.',
    '',
    'Mount options:',
    '  --background'.padEnd(42) + 'return once mounted, serve from a daemon',
    ...flags,
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
}

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
    else {
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

async function runMount(p: Parsed): Promise<number> {
  if (p.positional.length !== 2) throw new UsageError('mount needs SOURCE and MOUNTPOINT');
  const [source, mountpoint] = p.positional as [string, string];
  if (p.background && !p.daemonChild) return spawnDaemon(process.argv.slice(2));
  const m = await mount({ ...(p.options as Partial<MountOptions>), source, mountpoint });
  const stop = (): void => {
    m.unmount().catch(() => m.unmount({ lazy: true }).catch(() => undefined));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  if (p.daemonChild && process.send) {
    process.send({ ok: true, transport: m.transport, passthrough: m.passthrough });
    process.disconnect();
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
        process.stderr.write(`fusekit: the mount daemon exited (${code}) before the mount was live\n`);
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
