import { promises as fsp } from 'node:fs';

import { invalid } from './errors';

/**
 * One range of an ID map: ids `inside` .. `inside + count - 1` as stored in the source/layers (the
 * container's own ids) correspond to `outside` .. as processes use them through the mount (host
 * ids). The same meaning as a line of /proc/<pid>/uid_map and as a kernel idmapped mount.
 */
export interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

export interface IdMapOptions {
  uid?: IdRange[];
  gid?: IdRange[];
  /**
   * Squash: every owner shows as (the mapping of) this inside id, and every new file is owned by
   * it (fuse-overlayfs squash_to_uid/squash_to_gid; squash_to_root is { uid: 0, gid: 0 }).
   */
  squash?: { uid?: number; gid?: number };
}

const MAX = 2 ** 32;

/** Rejects malformed, overlapping and overflowing ranges. */
export function checkRanges(ranges: unknown, what: string): IdRange[] {
  if (!Array.isArray(ranges))
    throw invalid(`${what} must be an array of { inside, outside, count }`);
  const out: IdRange[] = ranges.map((r, i) => {
    const v = r as Record<string, unknown>;
    for (const k of ['inside', 'outside', 'count']) {
      const n = v?.[k];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n >= MAX)
        throw invalid(`${what}[${i}].${k} must be an integer between 0 and 2^32-1`);
    }
    const e = {
      inside: v.inside as number,
      outside: v.outside as number,
      count: v.count as number,
    };
    if (e.count === 0) throw invalid(`${what}[${i}] has count 0`);
    // As the kernel's uid_map: the last id may not be 2^32-1, the invalid id (uid_t)-1.
    if (e.inside + e.count >= MAX || e.outside + e.count >= MAX)
      throw invalid(`${what}[${i}] overflows the 32-bit id space`);
    return e;
  });
  for (let i = 0; i < out.length; i++) {
    for (let j = i + 1; j < out.length; j++) {
      const a = out[i]!;
      const b = out[j]!;
      const overlap = (x: number, y: number): boolean => x < y + b.count && y < x + a.count;
      if (overlap(a.inside, b.inside))
        throw invalid(`${what}[${i}] and [${j}] overlap on the inside ids`);
      if (overlap(a.outside, b.outside))
        throw invalid(`${what}[${i}] and [${j}] overlap on the outside ids`);
    }
  }
  return out;
}

export function checkIdMap(v: unknown): IdMapOptions {
  if (typeof v !== 'object' || v === null) throw invalid('option idmap must be an object');
  const m = v as Record<string, unknown>;
  for (const k of Object.keys(m))
    if (!['uid', 'gid', 'squash'].includes(k)) throw invalid(`unknown idmap option '${k}'`);
  const out: IdMapOptions = {};
  if (m.uid !== undefined) out.uid = checkRanges(m.uid, 'idmap.uid');
  if (m.gid !== undefined) out.gid = checkRanges(m.gid, 'idmap.gid');
  if (m.squash !== undefined) {
    const s = m.squash as Record<string, unknown>;
    if (typeof s !== 'object' || s === null) throw invalid('idmap.squash must be an object');
    out.squash = {};
    for (const k of ['uid', 'gid'] as const) {
      const n = s[k];
      if (n === undefined) continue;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n >= MAX)
        throw invalid(`idmap.squash.${k} must be an id`);
      out.squash[k] = n;
    }
  }
  return out;
}

/** Lines of /proc/<pid>/uid_map or gid_map: "inside outside count". */
export function parseProcIdMap(text: string): IdRange[] {
  const ranges = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .map((l, i) => {
      const f = l.split(/\s+/).map(Number);
      if (f.length !== 3 || f.some((n) => !Number.isInteger(n)))
        throw invalid(`id map line ${i + 1} is not "inside outside count": ${l}`);
      return { inside: f[0]!, outside: f[1]!, count: f[2]! };
    });
  return checkRanges(ranges, 'id map');
}

/** fuse-overlayfs notation: "C:H:N[:C:H:N...]" (container id, host id, count). */
export function parseColonIdMap(spec: string): IdRange[] {
  const f = spec.split(':').map((s) => (s.trim() === '' ? NaN : Number(s)));
  if (f.length === 0 || f.length % 3 !== 0 || f.some((n) => !Number.isInteger(n)))
    throw invalid(`id mapping "${spec}" is not C:H:N[:C:H:N...]`);
  const ranges: IdRange[] = [];
  for (let i = 0; i < f.length; i += 3)
    ranges.push({ inside: f[i]!, outside: f[i + 1]!, count: f[i + 2]! });
  return checkRanges(ranges, 'id mapping');
}

/**
 * The ranges an /etc/subuid (or /etc/subgid) file gives a user ("user:start:count" lines, the user
 * by name or numeric id), as a map whose inside ids start at `insideStart` (default 0) and run on
 * through consecutive entries.
 */
export function parseSubid(text: string, user: string | number, insideStart = 0): IdRange[] {
  let inside = insideStart;
  const ranges: IdRange[] = [];
  for (const line of text.split('\n')) {
    const [name, start, count] = line.trim().split(':');
    if (!name || name !== String(user) || start === undefined || count === undefined) continue;
    const s = Number(start);
    const c = Number(count);
    if (!Number.isInteger(s) || !Number.isInteger(c)) throw invalid(`bad subid line: ${line}`);
    ranges.push({ inside, outside: s, count: c });
    inside += c;
  }
  if (ranges.length === 0) throw invalid(`no subordinate ids for ${user}`);
  return checkRanges(ranges, 'subid ranges');
}

export async function readSubid(
  user: string | number,
  file = '/etc/subuid',
  insideStart = 0,
): Promise<IdRange[]> {
  return parseSubid(await fsp.readFile(file, 'utf8'), user, insideStart);
}
