// A child process that measures its own descriptors around a mount's life: argv[2] is JSON
// { options, files, force }. A first mount/unmount cycle warms up everything that stays open for
// the process's life (thread pool, addon), then the second cycle looks up `files` files, keeps one
// open through the unmount, and reports the descriptor counts (without any garbage collection).
import { closeSync, openSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

import { type MountOptions, mount } from '../../lib';

interface Spec {
  options: MountOptions;
  files: number;
  force: boolean;
}

/** This process's descriptors and what they are. */
function fds(): Map<string, string> {
  const out = new Map<string, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const what = readlinkSync(`/proc/self/fd/${fd}`);
      if (what !== `/proc/${process.pid}/fd`) out.set(fd, what); // the listing's own descriptor
    } catch {
      // closed since the listing
    }
  }
  return out;
}
async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as Spec;
  const mnt = spec.options.mountpoint;
  const warm = await mount(spec.options);
  statSync(path.join(mnt, '.'));
  await warm.unmount();
  const baseline = fds();

  const m = await mount(spec.options);
  for (let i = 0; i < spec.files; i++) writeFileSync(path.join(mnt, `f${i}`), `file ${i}\n`);
  for (const name of readdirSync(mnt)) statSync(path.join(mnt, name));
  const during = fds();
  const held = openSync(path.join(mnt, 'f0'), 'r+');
  await m.unmount(spec.force ? { force: true } : undefined).catch(async (e: Error) => {
    // Without force an open file makes the mount busy: close it and unmount again.
    if (spec.force) throw e;
    closeSync(held);
    await m.unmount();
  });
  try {
    closeSync(held);
  } catch {
    // already closed above
  }
  const after = fds();
  process.stdout.write(
    JSON.stringify({
      baseline: baseline.size,
      during: during.size,
      after: after.size,
      // Descriptors opened since the baseline and still open: what was not released.
      left: [...after]
        .filter(([fd, what]) => baseline.get(fd) !== what)
        .map(([fd, what]) => `${fd} ${what}`),
      inodes: m.stats().inodes,
    }) + '\n',
  );
}

void main();
