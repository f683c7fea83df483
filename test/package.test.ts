// The npm package end to end (scripts/check-pack.sh, on a copy of the work tree): the prebuild has
// libfuse inside, the tarball carries it, and an install with no compiler on PATH loads it and
// mounts. Builds the addon once more and installs from the npm registry (or npm's cache).
import test from 'ava';

import { repoRoot, run } from './helpers/proc-util';

test('npm pack ships a prebuild with libfuse inside that installs and mounts without a compiler', async (t) => {
  const limit = 15 * 60_000;
  t.timeout(limit + 10_000);
  const r = await run('bash', ['scripts/check-pack.sh'], { cwd: repoRoot, timeoutMs: limit });
  const steps = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('check-pack: ') || l.startsWith('{'));
  t.log(steps.join('\n'));
  t.is(r.code, 0, `check-pack.sh failed:\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  t.regex(r.stdout, /^check-pack: \[\d+s\] ok$/m);
  t.regex(r.stdout, /"loaded":"node_modules\/fusekit\/prebuilds\/linux-x64\/[^"]+\.node"/);
});
