// Overlay suite workloads: what only an overlay makes expensive. Each runs on a merged directory
// whose lower layer holds rootfs/, data.bin, files/ and work/ (fixture.ts, lowerFixture), or on
// that directory itself (native); the overlays start every sample from an empty upper layer.
import * as path from 'node:path';

import { BUILD, dropCaches, formatSize } from './util';
import { count, exec, timed, timedCommand, type Workload } from './workloads';

/** chmod of every small lower file: on an overlay each is a copy-up (metadata, and data too
 * unless the overlay copies up metadata only). */
export const chmodLower = (files: number): Workload => ({
  name: 'chmod',
  metrics: [
    {
      key: 'chmod',
      label: `chmod ${count(files)} lower files`,
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
  ],
  async run(dir, ctx) {
    await dropCaches();
    const r = await timed(ctx, 'chmod', async () => {
      const out = await exec(ctx, path.join(BUILD, 'metaops'), [
        path.join(dir, 'files'),
        String(files),
        'chmod',
      ]);
      return JSON.parse(out.stdout) as { seconds: number; cpu: number };
    });
    return { chmod: r.seconds };
  },
});

/** rm -rf of the whole lower rootfs: a whiteout for every top entry, lookups for all of them. */
export const rmLower: Workload = {
  name: 'rmrf',
  metrics: [
    {
      key: 'rmrf',
      label: 'rm -rf lower rootfs',
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
  ],
  async run(dir, ctx) {
    await dropCaches();
    const r = await timedCommand(ctx, 'rmrf', 'rm', ['-rf', path.join(dir, 'rootfs')]);
    return { rmrf: r.seconds };
  },
};

/**
 * Copy-up of the large lower file: opening it for appending copies all of it to the upper layer
 * before the one byte is written. Cold (after drop_caches); what the application waits for, so
 * whatever each overlay syncs at copy-up is included, and nothing after.
 */
export const copyUp = (size: number): Workload => ({
  name: 'copyup',
  metrics: [
    {
      key: 'copyup',
      label: `copy-up ${formatSize(size)} (append)`,
      unit: 'ms',
      kind: 'time',
      group: 'data',
      scale: 1e3,
    },
  ],
  async run(dir, ctx) {
    await dropCaches();
    const r = await timedCommand(ctx, 'copyup', 'sh', [
      '-c',
      'printf x >> "$1"',
      'sh',
      path.join(dir, 'data.bin'),
    ]);
    return { copyup: r.seconds };
  },
});
