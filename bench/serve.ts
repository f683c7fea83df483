// A fusekit daemon in its own process, so the orchestrator's work never competes with the
// mount's request threads: `serve.ts '<MountOptions JSON>'` mounts, prints one line
// `ready <json info>` on stdout, answers a `stats` line on stdin with `stats <json>` (per-op
// counts and latencies, for the analysis), and unmounts when stdin closes or on SIGTERM/SIGINT.
import * as readline from 'node:readline';

import { type Mount, mount, type MountOptions } from '../lib';

async function main(): Promise<void> {
  const arg = process.argv[2];
  if (!arg) throw new Error('usage: serve.ts <MountOptions as JSON>');
  const options = JSON.parse(arg) as MountOptions;
  const m: Mount = await mount(options);
  process.stdout.write(
    `ready ${JSON.stringify({ transport: m.transport, passthrough: m.passthrough, pid: process.pid })}\n`,
  );

  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    // The orchestrator stops us only after its workloads ended, so a busy mount means a leak on
    // its side: say so, and still remove the mount instead of leaving it behind.
    try {
      await m.unmount();
    } catch (e) {
      process.stderr.write(
        `serve: ${e instanceof Error ? e.message : String(e)}; detaching lazily\n`,
      );
      await m.unmount({ lazy: true });
    }
    process.exit(0);
  };
  // Our own handlers replace fusekit's default signal behaviour (detach and re-raise) so that a
  // busy mount gets reported.
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() === 'stats' && !stopping)
      process.stdout.write(`stats ${JSON.stringify(m.stats())}\n`);
  });
  rl.on('close', () => void stop());
  process.stdin.on('error', () => void stop());
  void m.closed.then(() => {
    if (!stopping) {
      process.stderr.write('serve: mount ended from outside\n');
      process.exit(1);
    }
  });
}

main().catch((e: unknown) => {
  process.stderr.write(`serve: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
