// A mount held by a child process, so the daemon can run under its own limits (e.g. started by
// `prlimit --nofile=4096:4096`). argv[2]: the mount options (JSON). Prints one JSON line when
// mounted ({ ok, pid, nofile }) or failed ({ ok: false, code, message }); then reads commands on
// stdin: "stats" prints { stats }, "fill" opens /dev/null until the process has no descriptor left
// and prints { filled }, "unfill" closes those and prints { unfilled }, "exit" unmounts and exits.
import { closeSync, openSync, readFileSync } from 'node:fs';
import * as readline from 'node:readline';

import { type MountOptions, mount } from '../../lib';

function print(o: unknown): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

function nofile(): string {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  return line
    ? line
        .split(/\s{2,}/)
        .slice(1, 3)
        .join('/')
    : '?';
}

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2]!) as MountOptions;
  let m;
  try {
    m = await mount(options);
  } catch (e) {
    const err = e as Error & { code?: string };
    print({ ok: false, code: err.code, message: err.message });
    return;
  }
  print({ ok: true, pid: process.pid, nofile: nofile() });
  const fillers: number[] = [];
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (cmd === 'stats') print({ stats: m.stats() });
    if (cmd === 'fill') {
      // Takes every free descriptor number, holes included: the next open anywhere in the
      // process fails with EMFILE, as in a process that really ran out.
      for (;;) {
        try {
          fillers.push(openSync('/dev/null', 'r'));
        } catch (e) {
          print({ filled: fillers.length, code: (e as NodeJS.ErrnoException).code });
          break;
        }
      }
    }
    if (cmd === 'unfill') {
      const n = fillers.length;
      for (const fd of fillers.splice(0)) closeSync(fd);
      print({ unfilled: n });
    }
    if (cmd === 'exit') {
      rl.close();
      m.unmount({ lazy: true }).then(
        () => process.exit(0),
        () => process.exit(1),
      );
    }
  });
  // The test went away without saying "exit": do not keep the mount.
  rl.on('close', () => {
    void m.unmount({ lazy: true }).finally(() => process.exit(0));
  });
}

void main();
