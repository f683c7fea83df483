import type { ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { type Mount, type MountOptions, mount } from '../../lib';

/** A fresh directory removed when the test ends, pass or fail. */
export async function tmpdir(t: ExecutionContext, prefix = 'fusekit-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Unmounts in teardown whatever happened in the test; a busy mount is forced off. */
export function unmountInTeardown(t: ExecutionContext, m: Mount): void {
  t.teardown(async () => {
    if (m.isClosed) return;
    try {
      await m.unmount();
    } catch {
      await m.unmount({ force: true }).catch(() => undefined);
    }
  });
}

export interface Mounted {
  root: string;
  src: string;
  mnt: string;
  m: Mount;
}

/** source + mount point in a fresh directory, mounted; unmounted in teardown (registered first,
 * so it runs before the directories are removed). */
export async function mountFixture(
  t: ExecutionContext,
  options: Partial<MountOptions> = {},
  prepare?: (src: string) => Promise<void>,
): Promise<Mounted> {
  const root = await tmpdir(t);
  const src = path.join(root, 'src');
  const mnt = path.join(root, 'mnt');
  await fsp.mkdir(src);
  await fsp.mkdir(mnt);
  if (prepare) await prepare(src);
  const m = await mount({ source: src, mountpoint: mnt, ...options });
  unmountInTeardown(t, m);
  return { root, src, mnt, m };
}
