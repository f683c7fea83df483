// A child process that mounts with the options in argv[2] (JSON) and reports on stdout as JSON
// lines. Modes:
//   report: try to mount, print the outcome (the error's code/message, or transport/passthrough),
//           unmount, exit 0.
//   hold:   mount, print {ok:true, controlSocket, ...}, then obey stdin lines: "exit"
//           (process.exit), "throw" (an uncaught exception), "unmount", "stats" (print {stats}),
//           "open NAME" (open a file of the mount and keep it).
//           Signals take their default fusekit handling.
//   unref:  mount, unref the mount and let the event loop run dry.
import { openSync, readFileSync } from 'node:fs';
import * as path from 'node:path';

import { FusekitError, type MountOptions, mount } from '../../lib';

interface Spec {
  options: MountOptions;
  mode: 'report' | 'hold' | 'unref';
}

function print(o: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

// Read in this process's own mount namespace (it may be a private one).
function mounted(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as Spec;
  let m;
  try {
    m = await mount(spec.options);
  } catch (e) {
    const err = e as Error & { code?: string };
    print({
      ok: false,
      isFusekitError: e instanceof FusekitError,
      name: err.name,
      code: err.code,
      message: err.message,
      mounted: mounted(spec.options.mountpoint),
    });
    return;
  }
  print({
    ok: true,
    pid: process.pid,
    transport: m.transport,
    passthrough: m.passthrough,
    mounted: mounted(spec.options.mountpoint),
    controlSocket: m.controlSocket ?? null,
    controlError: m.controlError?.message ?? null,
  });
  if (spec.mode === 'report') {
    await m.unmount();
    print({ unmounted: true, mounted: mounted(spec.options.mountpoint) });
    return;
  }
  if (spec.mode === 'unref') {
    m.unref();
    return;
  }
  let buf = '';
  process.stdin.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const cmd = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (cmd === 'exit') process.exit(0);
      if (cmd === 'stats') print({ stats: m.stats() });
      if (cmd === 'throw') throw new Error('deliberate uncaught exception');
      if (cmd.startsWith('open ')) {
        // A file of its own mount, left open: the exit paths must not wait for its close.
        const fd = openSync(path.join(spec.options.mountpoint, cmd.slice(5)), 'r');
        print({ opened: fd });
      }
      if (cmd === 'unmount') {
        m.unmount().then(
          () => {
            print({ unmounted: true });
            process.exit(0);
          },
          (err: Error & { code?: string }) =>
            print({ unmountError: err.code, message: err.message }),
        );
      }
    }
  });
}

void main();
