/**
 * A minimal POSIX pax tar writer for OCI layers: ustar headers, with pax records for long paths,
 * large sizes/ids, sub-second mtimes and xattrs (SCHILY.xattr.*, byte-exact, as containerd and
 * GNU tar read them).
 */

export type TarType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo';

export interface TarEntry {
  /** Relative path; directories without the trailing slash (it is added). */
  path: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  /** Seconds since the epoch, fractional allowed. */
  mtime: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, Buffer>;
}

const TYPEFLAG: Record<TarType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  directory: '5',
  fifo: '6',
};

export const BLOCK = 512;

function octal(buf: Buffer, off: number, width: number, value: number): boolean {
  const s = Math.floor(value).toString(8);
  if (s.length > width - 1) return false;
  buf.write(s.padStart(width - 1, '0') + '\0', off, width, 'ascii');
  return true;
}

function paxRecord(key: string, value: Buffer): Buffer {
  // "<len> key=value\n", where <len> counts every byte of the record including itself.
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body]);
}

function header(
  name: string,
  type: string,
  e: Omit<TarEntry, 'path' | 'type'>,
  size: number,
  linkname: string,
): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  octal(h, 100, 8, e.mode & 0o7777);
  octal(h, 108, 8, e.uid);
  octal(h, 116, 8, e.gid);
  octal(h, 124, 12, size);
  octal(h, 136, 12, e.mtime);
  h.write(type, 156, 1, 'ascii');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  octal(h, 329, 8, e.devmajor ?? 0);
  octal(h, 337, 8, e.devminor ?? 0);
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

/** The header blocks (a pax header first when needed) for one entry. */
export function entryHeader(e: TarEntry): Buffer {
  const name = e.type === 'directory' ? `${e.path.replace(/\/$/, '')}/` : e.path;
  const size = e.type === 'file' ? (e.size ?? 0) : 0;
  const linkname = e.linkname ?? '';
  const pax: Buffer[] = [];
  const ascii = (s: string): boolean => /^[\x20-\x7e]*$/.test(s);
  if (Buffer.byteLength(name) > 100 || !ascii(name)) pax.push(paxRecord('path', Buffer.from(name)));
  if (Buffer.byteLength(linkname) > 100 || !ascii(linkname))
    pax.push(paxRecord('linkpath', Buffer.from(linkname)));
  if (size > 0o77777777777) pax.push(paxRecord('size', Buffer.from(String(size))));
  if (e.uid > 0o7777777) pax.push(paxRecord('uid', Buffer.from(String(e.uid))));
  if (e.gid > 0o7777777) pax.push(paxRecord('gid', Buffer.from(String(e.gid))));
  if (!Number.isInteger(e.mtime)) pax.push(paxRecord('mtime', Buffer.from(e.mtime.toFixed(9))));
  for (const [k, v] of Object.entries(e.xattrs ?? {})) pax.push(paxRecord(`SCHILY.xattr.${k}`, v));
  // Fields longer than the ustar slots are cut there; the pax records carry them whole.
  const main = header(name, TYPEFLAG[e.type], e, size, linkname);
  if (pax.length === 0) return main;
  const body = Buffer.concat(pax);
  const paxName = `PaxHeaders/${name.replace(/\/$/, '').split('/').pop() ?? 'x'}`.slice(0, 99);
  const ph = header(paxName, 'x', { ...e, mode: 0o644 }, body.length, '');
  return Buffer.concat([ph, body, padding(body.length), main]);
}

/** Zero bytes that round size up to a whole block. */
export function padding(size: number): Buffer {
  const r = size % BLOCK;
  return Buffer.alloc(r === 0 ? 0 : BLOCK - r);
}

/** The end-of-archive marker. */
export function trailer(): Buffer {
  return Buffer.alloc(2 * BLOCK);
}
