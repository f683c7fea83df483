import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { mountFixture } from './helpers/fixture';

test('a file written through the mount lands in the source byte for byte', async (t) => {
  const { src, mnt, m } = await mountFixture(t);
  const data = Buffer.alloc(1 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
  await fsp.writeFile(path.join(mnt, 'f.bin'), data);
  t.deepEqual(await fsp.readFile(path.join(src, 'f.bin')), data);
  t.deepEqual(await fsp.readFile(path.join(mnt, 'f.bin')), data);
  const s = m.stats();
  t.true(s.ops.create!.count >= 1);
});
