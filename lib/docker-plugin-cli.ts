#!/usr/bin/env node
/**
 * fusekit-docker-plugin: serves the fusekit Docker volume plugin (see docker-plugin.ts) until
 * SIGTERM or SIGINT, then unmounts every volume and removes its socket.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import {
  DEFAULT_SOCKET,
  DEFAULT_STATE_DIR,
  VOLUME_OPTIONS,
  errText,
  startPlugin,
} from './docker-plugin';
import { packageRoot } from './native';

function usage(): string {
  return [
    'usage: fusekit-docker-plugin [--socket PATH] [--state-dir DIR]',
    '',
    'Serves a Docker volume plugin; dockerd finds it by its socket (driver name = socket name).',
    '',
    `  --socket PATH     Unix socket to serve (default ${DEFAULT_SOCKET})`,
    `  --state-dir DIR   volumes.json and the volumes' directories (default ${DEFAULT_STATE_DIR})`,
    '  -h, --help        this text',
    '  -V, --version     the fusekit version',
    '',
    'Volumes: docker volume create -d fusekit -o source=/srv/data NAME',
    '         docker volume create -d fusekit -o lower=/layers/top:/layers/base NAME',
    `Options: ${VOLUME_OPTIONS.join(', ')}`,
    '',
  ].join('\n');
}

function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

class UsageError extends Error {}

export function parseCliArgs(argv: string[]): { socket?: string; stateDir?: string } {
  const out: { socket?: string; stateDir?: string } = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq >= 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      const v = a.startsWith('--') && eq >= 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '') throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === '--socket') out.socket = value();
    else if (flag === '--state-dir') out.stateDir = value();
    else throw new UsageError(`unknown argument ${a}`);
  }
  return out;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage());
    return 0;
  }
  if (argv.includes('--version') || argv.includes('-V')) {
    process.stdout.write(`fusekit-docker-plugin ${version()}\n`);
    return 0;
  }
  const args = parseCliArgs(argv);
  const log = (line: string): void => {
    process.stderr.write(`fusekit-docker-plugin: ${line}\n`);
  };
  const plugin = await startPlugin({ ...args, log });
  // The plugin may run from a directory it would otherwise keep busy.
  process.chdir('/');
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (sig: NodeJS.Signals): void => {
      if (stopping) {
        // A second signal: leave now; the exit hook aborts whatever is still mounted.
        log(`${sig} again, exiting without waiting`);
        process.exit(1);
      }
      stopping = true;
      log(`${sig}: unmounting volumes`);
      plugin.close().then(
        () => resolve(0),
        (e: unknown) => {
          log(`shutdown failed: ${errText(e)}`);
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      // Explicitly: an idle keep-alive connection from dockerd must not hold the process.
      process.exit(code);
    },
    (err: unknown) => {
      const msg = err instanceof UsageError ? err.message : errText(err);
      process.stderr.write(`fusekit-docker-plugin: ${msg}\n`);
      if (err instanceof UsageError) process.stderr.write(`\n${usage()}`);
      process.exit(err instanceof UsageError ? 2 : 1);
    },
  );
}
