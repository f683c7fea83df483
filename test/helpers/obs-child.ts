// A child process that holds a mount (options: JSON in argv[2]) for the observability tests, so
// the control socket and the CLI are exercised across processes. Prints JSON lines on stdout:
// {ok, pid, controlSocket, controlError} once mounted, then obeys stdin lines:
//   "stats"    print {stats}
//   "unmount"  unmount, print {unmounted: true} and exit
//   "exit"     exit without unmounting (the exit hooks detach the mount)
import { type MountOptions, mount } from '../../lib';

function print(o: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(o) + '\n');
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
  const mounted = m;
  print({
    ok: true,
    pid: process.pid,
    controlSocket: mounted.controlSocket ?? null,
    controlError: mounted.controlError?.message ?? null,
  });
  let buf = '';
  process.stdin.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const cmd = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (cmd === 'stats') print({ stats: mounted.stats() });
      if (cmd === 'exit') process.exit(0);
      if (cmd === 'unmount') {
        mounted.unmount().then(
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
