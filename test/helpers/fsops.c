// Test helper: the system calls Node's fs lacks, one per subcommand, each printing one JSON line.
// Failure prints {"errno":"ENAME","op":"..."} and exits 1, so tests can compare errno names with
// what the same call gives on the source directory.
//
//   fsops [-u UMASK] <command> args...    one command, then exit
//   fsops serve                commands read from stdin, one per line, arguments separated by tabs;
//                              descriptors stay open between commands (locks, open-but-unlinked
//                              files). SIGUSR1 interrupts a blocking call (no SA_RESTART), so the
//                              call reports EINTR.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef RENAME_WHITEOUT
#define RENAME_WHITEOUT (1 << 2)
#endif

// ---- output

static char out[1 << 20];
static size_t outlen;

static void put(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out + outlen, sizeof out - outlen, fmt, ap);
  va_end(ap);
  if (n > 0) outlen += (size_t)n < sizeof out - outlen ? (size_t)n : sizeof out - outlen - 1;
}

static void put_hex(const unsigned char* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  put("\"");
  for (size_t i = 0; i < n && outlen + 3 < sizeof out; i++) {
    out[outlen++] = digits[p[i] >> 4];
    out[outlen++] = digits[p[i] & 15];
  }
  out[outlen] = 0;
  put("\"");
}

static void put_str(const char* s) {
  put("\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      put("\\%c", c);
    else if (c < 0x20)
      put("\\u%04x", c);
    else
      put("%c", c);
  }
  put("\"");
}

static void flush_line(void) {
  out[outlen] = 0;
  fputs(out, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  outlen = 0;
}

// Reports errno of the failed call; returns 1 (the exit code).
static int fail(const char* op) {
  int e = errno;
  const char* name = strerrorname_np(e);
  outlen = 0;
  put("{\"errno\":\"%s\",\"op\":", name ? name : "EUNKNOWN");
  put_str(op);
  put("}");
  flush_line();
  return 1;
}

static int ok(void) {
  put("{\"ok\":true}");
  flush_line();
  return 0;
}

// ---- argument parsing

static int usage(const char* what) {
  errno = EINVAL;
  return fail(what);
}

static long long num(const char* s) { return strtoll(s, NULL, 0); }

static size_t unhex(const char* hex, unsigned char** buf) {
  size_t n = strlen(hex) / 2;
  *buf = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    (*buf)[i] = (unsigned char)v;
  }
  return n;
}

static int has_word(const char* list, const char* word) {
  size_t n = strlen(word);
  for (const char* p = list; (p = strstr(p, word)) != NULL; p += n) {
    if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
  }
  return 0;
}

static int open_flags(const char* s) {
  int f = 0;
  if (has_word(s, "rw"))
    f = O_RDWR;
  else if (has_word(s, "w"))
    f = O_WRONLY;
  else
    f = O_RDONLY;
  if (has_word(s, "creat")) f |= O_CREAT;
  if (has_word(s, "excl")) f |= O_EXCL;
  if (has_word(s, "trunc")) f |= O_TRUNC;
  if (has_word(s, "append")) f |= O_APPEND;
  if (has_word(s, "nofollow")) f |= O_NOFOLLOW;
  if (has_word(s, "path")) f |= O_PATH;
  if (has_word(s, "dir")) f |= O_DIRECTORY;
  return f | O_CLOEXEC;
}

static void put_time(const char* name, struct statx_timestamp t) {
  put(",\"%s\":[%lld,%u]", name, (long long)t.tv_sec, t.tv_nsec);
}

static void put_statx(const struct statx* s) {
  put("{\"mask\":%u,\"mode\":%u,\"nlink\":%u,\"uid\":%u,\"gid\":%u,\"ino\":\"%" PRIu64
      "\",\"size\":%" PRIu64 ",\"blocks\":%" PRIu64 ",\"blksize\":%u,\"attributes\":\"%" PRIu64
      "\",\"rdev\":[%u,%u],\"dev\":[%u,%u]",
      s->stx_mask, s->stx_mode, s->stx_nlink, s->stx_uid, s->stx_gid, (uint64_t)s->stx_ino,
      (uint64_t)s->stx_size, (uint64_t)s->stx_blocks, s->stx_blksize, (uint64_t)s->stx_attributes,
      s->stx_rdev_major, s->stx_rdev_minor, s->stx_dev_major, s->stx_dev_minor);
  put_time("atime", s->stx_atime);
  put_time("mtime", s->stx_mtime);
  put_time("ctime", s->stx_ctime);
  if (s->stx_mask & STATX_BTIME) put_time("btime", s->stx_btime);
  put("}");
}

static int parse_time(const char* s, struct timespec* ts) {
  if (strcmp(s, "now") == 0) {
    ts->tv_sec = 0;
    ts->tv_nsec = UTIME_NOW;
  } else if (strcmp(s, "omit") == 0) {
    ts->tv_sec = 0;
    ts->tv_nsec = UTIME_OMIT;
  } else {
    // SEC:NSEC
    const char* colon = strchr(s, ':');
    ts->tv_sec = (time_t)strtoll(s, NULL, 10);
    ts->tv_nsec = colon ? strtol(colon + 1, NULL, 10) : 0;
  }
  return 0;
}

// ---- commands. argv[0] is the command name.

static int cmd_rename2(int argc, char** argv) {
  if (argc < 4) return usage("rename2 OLD NEW FLAGS");
  unsigned flags = 0;
  if (has_word(argv[3], "noreplace")) flags |= RENAME_NOREPLACE;
  if (has_word(argv[3], "exchange")) flags |= RENAME_EXCHANGE;
  if (has_word(argv[3], "whiteout")) flags |= RENAME_WHITEOUT;
  if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], flags) != 0)
    return fail("renameat2");
  return ok();
}

static int cmd_setxattr(int argc, char** argv, int nofollow) {
  if (argc < 4) return usage("setxattr PATH NAME HEXVALUE [create|replace]");
  unsigned char* v;
  size_t n = unhex(argv[3], &v);
  int flags = 0;
  if (argc > 4 && strcmp(argv[4], "create") == 0) flags = XATTR_CREATE;
  if (argc > 4 && strcmp(argv[4], "replace") == 0) flags = XATTR_REPLACE;
  int r = nofollow ? lsetxattr(argv[1], argv[2], v, n, flags)
                   : setxattr(argv[1], argv[2], v, n, flags);
  free(v);
  if (r != 0) return fail("setxattr");
  return ok();
}

static int cmd_getxattr(int argc, char** argv, int nofollow) {
  if (argc < 3) return usage("getxattr PATH NAME");
  // Size probe first, as applications do; the value is then read with exactly that size.
  ssize_t size = nofollow ? lgetxattr(argv[1], argv[2], NULL, 0)
                          : getxattr(argv[1], argv[2], NULL, 0);
  if (size < 0) return fail("getxattr(size)");
  unsigned char* v = malloc((size_t)size + 1);
  ssize_t n = nofollow ? lgetxattr(argv[1], argv[2], v, (size_t)size)
                       : getxattr(argv[1], argv[2], v, (size_t)size);
  if (n < 0) {
    free(v);
    return fail("getxattr");
  }
  // A buffer one byte too small must give ERANGE.
  int erange = 0;
  if (n > 0) {
    ssize_t m = nofollow ? lgetxattr(argv[1], argv[2], v, (size_t)n - 1)
                         : getxattr(argv[1], argv[2], v, (size_t)n - 1);
    erange = m < 0 && errno == ERANGE;
    n = nofollow ? lgetxattr(argv[1], argv[2], v, (size_t)size)
                 : getxattr(argv[1], argv[2], v, (size_t)size);
  }
  put("{\"size\":%zd,\"erangeWhenShort\":%s,\"value\":", size,
      (n == 0 || erange) ? "true" : "false");
  put_hex(v, (size_t)n);
  put("}");
  free(v);
  flush_line();
  return 0;
}

static int cmd_listxattr(int argc, char** argv, int nofollow) {
  if (argc < 2) return usage("listxattr PATH");
  ssize_t size = nofollow ? llistxattr(argv[1], NULL, 0) : listxattr(argv[1], NULL, 0);
  if (size < 0) return fail("listxattr(size)");
  char* list = malloc((size_t)size + 1);
  ssize_t n = nofollow ? llistxattr(argv[1], list, (size_t)size)
                       : listxattr(argv[1], list, (size_t)size);
  if (n < 0) {
    free(list);
    return fail("listxattr");
  }
  put("{\"size\":%zd,\"names\":[", size);
  for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
    if (i) put(",");
    put_str(list + i);
  }
  put("]}");
  free(list);
  flush_line();
  return 0;
}

static int cmd_removexattr(int argc, char** argv, int nofollow) {
  if (argc < 3) return usage("removexattr PATH NAME");
  int r = nofollow ? lremovexattr(argv[1], argv[2]) : removexattr(argv[1], argv[2]);
  if (r != 0) return fail("removexattr");
  return ok();
}

// O_TMPFILE in DIR, DATA written, then (optionally) given the name LINK via /proc/self/fd.
static int cmd_tmpfile(int argc, char** argv) {
  if (argc < 4) return usage("tmpfile DIR MODE HEXDATA [LINK]");
  int fd = open(argv[1], O_TMPFILE | O_RDWR | O_CLOEXEC, (mode_t)strtol(argv[2], NULL, 8));
  if (fd < 0) return fail("open(O_TMPFILE)");
  unsigned char* data;
  size_t n = unhex(argv[3], &data);
  if (n && pwrite(fd, data, n, 0) != (ssize_t)n) return fail("pwrite");
  free(data);
  struct stat before, after;
  if (fstat(fd, &before) != 0) return fail("fstat");
  int linked = 0;
  if (argc > 4) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, argv[4], AT_SYMLINK_FOLLOW) != 0) return fail("linkat");
    linked = 1;
  }
  if (fstat(fd, &after) != 0) return fail("fstat");
  put("{\"nlink\":%lu,\"mode\":%u,\"uid\":%u,\"gid\":%u,\"size\":%lld,\"ino\":\"%" PRIu64
      "\",\"linked\":%s,\"nlinkAfter\":%lu}",
      (unsigned long)before.st_nlink, before.st_mode, before.st_uid, before.st_gid,
      (long long)before.st_size, (uint64_t)before.st_ino, linked ? "true" : "false",
      (unsigned long)after.st_nlink);
  close(fd);
  flush_line();
  return 0;
}

static int cmd_seek(int argc, char** argv) {
  if (argc < 4) return usage("seek PATH data|hole OFFSET");
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("open");
  int whence = strcmp(argv[2], "hole") == 0 ? SEEK_HOLE : SEEK_DATA;
  off_t r = lseek(fd, (off_t)num(argv[3]), whence);
  if (r < 0) return fail("lseek");
  put("{\"offset\":%lld}", (long long)r);
  close(fd);
  flush_line();
  return 0;
}

// Data extents as SEEK_DATA/SEEK_HOLE report them, plus the size.
static int cmd_seekmap(int argc, char** argv) {
  if (argc < 2) return usage("seekmap PATH");
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("open");
  struct stat st;
  if (fstat(fd, &st) != 0) return fail("fstat");
  put("{\"size\":%lld,\"data\":[", (long long)st.st_size);
  off_t off = 0;
  int first = 1;
  for (;;) {
    off_t d = lseek(fd, off, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break;
      return fail("lseek(SEEK_DATA)");
    }
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) return fail("lseek(SEEK_HOLE)");
    put("%s[%lld,%lld]", first ? "" : ",", (long long)d, (long long)h);
    first = 0;
    off = h;
  }
  put("]}");
  close(fd);
  flush_line();
  return 0;
}

static int cmd_mknod(int argc, char** argv) {
  if (argc < 4) return usage("mknod PATH fifo|sock|chr|blk MODE [MAJOR MINOR]");
  mode_t type = strcmp(argv[2], "fifo") == 0   ? S_IFIFO
                : strcmp(argv[2], "sock") == 0 ? S_IFSOCK
                : strcmp(argv[2], "chr") == 0  ? S_IFCHR
                : strcmp(argv[2], "blk") == 0  ? S_IFBLK
                                               : S_IFREG;
  dev_t dev = argc > 5 ? makedev((unsigned)num(argv[4]), (unsigned)num(argv[5])) : 0;
  if (mknod(argv[1], type | (mode_t)strtol(argv[3], NULL, 8), dev) != 0) return fail("mknod");
  return ok();
}

static int cmd_fallocate(int argc, char** argv) {
  if (argc < 5) return usage("fallocate PATH MODES OFFSET LEN");
  int mode = 0;
  if (has_word(argv[2], "keep_size")) mode |= FALLOC_FL_KEEP_SIZE;
  if (has_word(argv[2], "punch_hole")) mode |= FALLOC_FL_PUNCH_HOLE;
  if (has_word(argv[2], "zero_range")) mode |= FALLOC_FL_ZERO_RANGE;
  if (has_word(argv[2], "collapse_range")) mode |= FALLOC_FL_COLLAPSE_RANGE;
  if (has_word(argv[2], "insert_range")) mode |= FALLOC_FL_INSERT_RANGE;
  int fd = open(argv[1], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return fail("open");
  if (fallocate(fd, mode, (off_t)num(argv[3]), (off_t)num(argv[4])) != 0) return fail("fallocate");
  close(fd);
  return ok();
}

static int cmd_copy_file_range(int argc, char** argv) {
  if (argc < 6) return usage("copy_file_range IN OFF_IN OUT OFF_OUT LEN");
  int in = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (in < 0) return fail("open(in)");
  int outfd = open(argv[3], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (outfd < 0) return fail("open(out)");
  loff_t off_in = num(argv[2]), off_out = num(argv[4]);
  size_t left = (size_t)num(argv[5]);
  size_t copied = 0;
  while (left > 0) {
    ssize_t n = copy_file_range(in, &off_in, outfd, &off_out, left, 0);
    if (n < 0) return fail("copy_file_range");
    if (n == 0) break;
    copied += (size_t)n;
    left -= (size_t)n;
  }
  close(in);
  close(outfd);
  put("{\"copied\":%zu}", copied);
  flush_line();
  return 0;
}

static int cmd_statx(int argc, char** argv) {
  if (argc < 2) return usage("statx PATH [nofollow]");
  int flags = (argc > 2 && strcmp(argv[2], "nofollow") == 0) ? AT_SYMLINK_NOFOLLOW : 0;
  struct statx s;
  if (statx(AT_FDCWD, argv[1], flags | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS | STATX_BTIME, &s) !=
      0)
    return fail("statx");
  put_statx(&s);
  flush_line();
  return 0;
}

// utimens PATH ATIME MTIME [nofollow|fd]; a time is now, omit or SEC:NSEC.
static int cmd_utimens(int argc, char** argv) {
  if (argc < 4) return usage("utimens PATH ATIME MTIME [nofollow|fd]");
  struct timespec ts[2];
  parse_time(argv[2], &ts[0]);
  parse_time(argv[3], &ts[1]);
  const char* how = argc > 4 ? argv[4] : "";
  if (strcmp(how, "fd") == 0) {
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail("open");
    if (futimens(fd, ts) != 0) return fail("futimens");
    close(fd);
  } else {
    int flags = strcmp(how, "nofollow") == 0 ? AT_SYMLINK_NOFOLLOW : 0;
    if (utimensat(AT_FDCWD, argv[1], ts, flags) != 0) return fail("utimensat");
  }
  return ok();
}

// name_to_handle_at, then open_by_handle_at relative to MOUNTDIR; reports the inode reached.
static int cmd_handle(int argc, char** argv) {
  if (argc < 3) return usage("handle PATH MOUNTDIR");
  struct file_handle* h = malloc(sizeof *h + MAX_HANDLE_SZ);
  h->handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  if (name_to_handle_at(AT_FDCWD, argv[1], h, &mount_id, 0) != 0) return fail("name_to_handle_at");
  int mfd = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (mfd < 0) return fail("open(mountdir)");
  int fd = open_by_handle_at(mfd, h, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("open_by_handle_at");
  struct stat st;
  if (fstat(fd, &st) != 0) return fail("fstat");
  put("{\"handleBytes\":%u,\"ino\":\"%" PRIu64 "\"}", h->handle_bytes, (uint64_t)st.st_ino);
  free(h);
  close(fd);
  close(mfd);
  flush_line();
  return 0;
}

// Maps the file and reports bytes [OFF, OFF+LEN) as seen through the mapping; with HEX, first
// writes HEX at OFF through a shared mapping and msyncs it.
static int cmd_mmap(int argc, char** argv) {
  if (argc < 4) return usage("mmap PATH OFF LEN [HEXWRITE]");
  int writing = argc > 4;
  int fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return fail("open");
  struct stat st;
  if (fstat(fd, &st) != 0) return fail("fstat");
  if (st.st_size == 0) {
    errno = EINVAL;
    return fail("mmap(empty)");
  }
  unsigned char* p = mmap(NULL, (size_t)st.st_size, PROT_READ | (writing ? PROT_WRITE : 0),
                          MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail("mmap");
  size_t off = (size_t)num(argv[2]), len = (size_t)num(argv[3]);
  if (off + len > (size_t)st.st_size) {
    errno = EINVAL;
    return fail("range");
  }
  if (writing) {
    unsigned char* data;
    size_t n = unhex(argv[4], &data);
    if (off + n > (size_t)st.st_size) {
      errno = EINVAL;
      return fail("range");
    }
    memcpy(p + off, data, n);
    free(data);
    if (msync(p, (size_t)st.st_size, MS_SYNC) != 0) return fail("msync");
  }
  // FNV-1a over the whole mapping, so large files can be compared without printing them.
  uint32_t h = 2166136261u;
  for (off_t i = 0; i < st.st_size; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  put("{\"size\":%lld,\"fnv1a\":%u,\"data\":", (long long)st.st_size, h);
  put_hex(p + off, len);
  put("}");
  munmap(p, (size_t)st.st_size);
  close(fd);
  flush_line();
  return 0;
}

// Directory entries as readdir(3) returns them: name, d_ino and d_type, "." and ".." included.
static int cmd_readdir(int argc, char** argv) {
  if (argc < 2) return usage("readdir PATH");
  DIR* d = opendir(argv[1]);
  if (!d) return fail("opendir");
  put("{\"entries\":[");
  int first = 1;
  errno = 0;
  for (struct dirent* e; (e = readdir(d)) != NULL; errno = 0) {
    put("%s[", first ? "" : ",");
    put_str(e->d_name);
    put(",\"%" PRIu64 "\",%u]", (uint64_t)e->d_ino, (unsigned)e->d_type);
    first = 0;
  }
  if (errno) return fail("readdir");
  put("]}");
  closedir(d);
  flush_line();
  return 0;
}

// Puts up to max names read from d as a JSON array; -1 (errno) when readdir fails.
static int put_names(DIR* d, long max) {
  put("[");
  errno = 0;
  long i = 0;
  for (struct dirent* e; i < max && (e = readdir(d)) != NULL; i++, errno = 0) {
    put("%s", i ? "," : "");
    put_str(e->d_name);
  }
  put("]");
  return errno ? -1 : 0;
}

// Reads N names from one stream, then the rest from a second stream of the same directory
// positioned with seekdir() at the first one's telldir(): the kernel's readdir cache does the
// same when it loses its pages mid-listing and goes on from the daemon with the open it has.
static int cmd_readdirseek(int argc, char** argv) {
  if (argc < 3) return usage("readdirseek PATH N");
  DIR* a = opendir(argv[1]);
  DIR* b = opendir(argv[1]);
  if (!a || !b) return fail("opendir");
  put("{\"first\":");
  if (put_names(a, strtol(argv[2], NULL, 10)) != 0) return fail("readdir");
  seekdir(b, telldir(a));
  put(",\"rest\":");
  if (put_names(b, LONG_MAX) != 0) return fail("readdir");
  put("}");
  closedir(a);
  closedir(b);
  flush_line();
  return 0;
}

static int cmd_statvfs(int argc, char** argv) {
  if (argc < 2) return usage("statvfs PATH");
  struct statvfs s;
  if (statvfs(argv[1], &s) != 0) return fail("statvfs");
  put("{\"bsize\":%lu,\"frsize\":%lu,\"blocks\":%llu,\"bfree\":%llu,\"bavail\":%llu,"
      "\"files\":%llu,\"ffree\":%llu,\"favail\":%llu,\"flag\":%lu,\"namemax\":%lu}",
      s.f_bsize, s.f_frsize, (unsigned long long)s.f_blocks, (unsigned long long)s.f_bfree,
      (unsigned long long)s.f_bavail, (unsigned long long)s.f_files, (unsigned long long)s.f_ffree,
      (unsigned long long)s.f_favail, s.f_flag, s.f_namemax);
  flush_line();
  return 0;
}

// ---- plain path operations, for running them as another user with an exact errno

static int cmd_simple(int argc, char** argv) {
  const char* c = argv[0];
  int r;
  if (!strcmp(c, "mkdir") && argc >= 3)
    r = mkdir(argv[1], (mode_t)strtol(argv[2], NULL, 8));
  else if (!strcmp(c, "unlink") && argc >= 2)
    r = unlink(argv[1]);
  else if (!strcmp(c, "rmdir") && argc >= 2)
    r = rmdir(argv[1]);
  else if (!strcmp(c, "rename") && argc >= 3)
    r = rename(argv[1], argv[2]);
  else if (!strcmp(c, "link") && argc >= 3)
    r = link(argv[1], argv[2]);
  else if (!strcmp(c, "symlink") && argc >= 3)
    r = symlink(argv[1], argv[2]);
  else if (!strcmp(c, "chmod") && argc >= 3)
    r = chmod(argv[1], (mode_t)strtol(argv[2], NULL, 8));
  else if (!strcmp(c, "chown") && argc >= 4)
    r = lchown(argv[1], (uid_t)num(argv[2]), (gid_t)num(argv[3]));
  else
    return usage(c);
  if (r != 0) return fail(c);
  return ok();
}

// create PATH MODE [HEX]: O_CREAT|O_EXCL|O_WRONLY, then the data.
static int cmd_create(int argc, char** argv) {
  if (argc < 3) return usage("create PATH MODE [HEX]");
  int fd = open(argv[1], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, (mode_t)strtol(argv[2], NULL, 8));
  if (fd < 0) return fail("open");
  if (argc > 3) {
    unsigned char* data;
    size_t n = unhex(argv[3], &data);
    if (n && write(fd, data, n) != (ssize_t)n) return fail("write");
    free(data);
  }
  if (close(fd) != 0) return fail("close");
  return ok();
}

// ---- descriptor commands (useful in serve mode, where descriptors outlive the command)

static int cmd_open(int argc, char** argv) {
  if (argc < 3) return usage("open PATH FLAGS [MODE]");
  int fd = open(argv[1], open_flags(argv[2]), argc > 3 ? (mode_t)strtol(argv[3], NULL, 8) : 0644);
  if (fd < 0) return fail("open");
  put("{\"fd\":%d}", fd);
  flush_line();
  return 0;
}

static int cmd_close(int argc, char** argv) {
  if (argc < 2) return usage("close FD");
  if (close((int)num(argv[1])) != 0) return fail("close");
  return ok();
}

static int cmd_flock(int argc, char** argv) {
  if (argc < 3) return usage("flock FD ex|sh|un [nb]");
  int op = strcmp(argv[2], "ex") == 0 ? LOCK_EX : strcmp(argv[2], "sh") == 0 ? LOCK_SH : LOCK_UN;
  if (argc > 3 && strcmp(argv[3], "nb") == 0) op |= LOCK_NB;
  if (flock((int)num(argv[1]), op) != 0) return fail("flock");
  return ok();
}

static short lock_type(const char* s) {
  return strcmp(s, "rd") == 0 ? F_RDLCK : strcmp(s, "wr") == 0 ? F_WRLCK : F_UNLCK;
}

// setlk FD rd|wr|un START LEN [wait]: a classic POSIX record lock (owned by this process).
static int cmd_setlk(int argc, char** argv) {
  if (argc < 5) return usage("setlk FD rd|wr|un START LEN [wait]");
  struct flock fl = {0};
  fl.l_type = lock_type(argv[2]);
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)num(argv[3]);
  fl.l_len = (off_t)num(argv[4]);
  int wait = argc > 5 && strcmp(argv[5], "wait") == 0;
  if (fcntl((int)num(argv[1]), wait ? F_SETLKW : F_SETLK, &fl) != 0) return fail("fcntl(setlk)");
  return ok();
}

static int cmd_getlk(int argc, char** argv) {
  if (argc < 5) return usage("getlk FD rd|wr START LEN");
  struct flock fl = {0};
  fl.l_type = lock_type(argv[2]);
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)num(argv[3]);
  fl.l_len = (off_t)num(argv[4]);
  if (fcntl((int)num(argv[1]), F_GETLK, &fl) != 0) return fail("fcntl(getlk)");
  const char* t = fl.l_type == F_RDLCK ? "rd" : fl.l_type == F_WRLCK ? "wr" : "un";
  put("{\"type\":\"%s\",\"start\":%lld,\"len\":%lld,\"pid\":%d}", t, (long long)fl.l_start,
      (long long)fl.l_len, (int)fl.l_pid);
  flush_line();
  return 0;
}

static int cmd_pread(int argc, char** argv) {
  if (argc < 4) return usage("pread FD OFF LEN");
  size_t len = (size_t)num(argv[3]);
  unsigned char* buf = malloc(len ? len : 1);
  ssize_t n = pread((int)num(argv[1]), buf, len, (off_t)num(argv[2]));
  if (n < 0) return fail("pread");
  put("{\"data\":");
  put_hex(buf, (size_t)n);
  put("}");
  free(buf);
  flush_line();
  return 0;
}

static int cmd_pwrite(int argc, char** argv) {
  if (argc < 4) return usage("pwrite FD OFF HEX");
  unsigned char* buf;
  size_t n = unhex(argv[3], &buf);
  ssize_t w = pwrite((int)num(argv[1]), buf, n, (off_t)num(argv[2]));
  free(buf);
  if (w < 0) return fail("pwrite");
  put("{\"written\":%zd}", w);
  flush_line();
  return 0;
}

static int cmd_fstat(int argc, char** argv) {
  if (argc < 2) return usage("fstat FD");
  struct statx s;
  if (statx((int)num(argv[1]), "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &s) != 0)
    return fail("statx(fd)");
  put_statx(&s);
  flush_line();
  return 0;
}

// System call numbers, so a test can see in /proc/PID/syscall that a child is blocked in one.
static int cmd_sysnr(int argc, char** argv) {
  (void)argc;
  (void)argv;
  put("{\"flock\":%d,\"fcntl\":%d}", (int)SYS_flock, (int)SYS_fcntl);
  flush_line();
  return 0;
}

static int cmd_pid(int argc, char** argv) {
  (void)argc;
  (void)argv;
  put("{\"pid\":%d}", (int)getpid());
  flush_line();
  return 0;
}

static int cmd_umask(int argc, char** argv) {
  if (argc < 2) return usage("umask MASK");
  mode_t old = umask((mode_t)strtol(argv[1], NULL, 8));
  put("{\"old\":%u}", old);
  flush_line();
  return 0;
}

static int dispatch(int argc, char** argv) {
  const char* c = argv[0];
  if (!strcmp(c, "rename2")) return cmd_rename2(argc, argv);
  if (!strcmp(c, "setxattr")) return cmd_setxattr(argc, argv, 0);
  if (!strcmp(c, "lsetxattr")) return cmd_setxattr(argc, argv, 1);
  if (!strcmp(c, "getxattr")) return cmd_getxattr(argc, argv, 0);
  if (!strcmp(c, "lgetxattr")) return cmd_getxattr(argc, argv, 1);
  if (!strcmp(c, "listxattr")) return cmd_listxattr(argc, argv, 0);
  if (!strcmp(c, "llistxattr")) return cmd_listxattr(argc, argv, 1);
  if (!strcmp(c, "removexattr")) return cmd_removexattr(argc, argv, 0);
  if (!strcmp(c, "lremovexattr")) return cmd_removexattr(argc, argv, 1);
  if (!strcmp(c, "tmpfile")) return cmd_tmpfile(argc, argv);
  if (!strcmp(c, "seek")) return cmd_seek(argc, argv);
  if (!strcmp(c, "seekmap")) return cmd_seekmap(argc, argv);
  if (!strcmp(c, "mknod")) return cmd_mknod(argc, argv);
  if (!strcmp(c, "fallocate")) return cmd_fallocate(argc, argv);
  if (!strcmp(c, "copy_file_range")) return cmd_copy_file_range(argc, argv);
  if (!strcmp(c, "statx")) return cmd_statx(argc, argv);
  if (!strcmp(c, "utimens")) return cmd_utimens(argc, argv);
  if (!strcmp(c, "handle")) return cmd_handle(argc, argv);
  if (!strcmp(c, "mmap")) return cmd_mmap(argc, argv);
  if (!strcmp(c, "readdir")) return cmd_readdir(argc, argv);
  if (!strcmp(c, "readdirseek")) return cmd_readdirseek(argc, argv);
  if (!strcmp(c, "create")) return cmd_create(argc, argv);
  if (!strcmp(c, "mkdir") || !strcmp(c, "unlink") || !strcmp(c, "rmdir") || !strcmp(c, "rename") ||
      !strcmp(c, "link") || !strcmp(c, "symlink") || !strcmp(c, "chmod") || !strcmp(c, "chown"))
    return cmd_simple(argc, argv);
  if (!strcmp(c, "statvfs")) return cmd_statvfs(argc, argv);
  if (!strcmp(c, "open")) return cmd_open(argc, argv);
  if (!strcmp(c, "close")) return cmd_close(argc, argv);
  if (!strcmp(c, "flock")) return cmd_flock(argc, argv);
  if (!strcmp(c, "setlk")) return cmd_setlk(argc, argv);
  if (!strcmp(c, "getlk")) return cmd_getlk(argc, argv);
  if (!strcmp(c, "pread")) return cmd_pread(argc, argv);
  if (!strcmp(c, "pwrite")) return cmd_pwrite(argc, argv);
  if (!strcmp(c, "fstat")) return cmd_fstat(argc, argv);
  if (!strcmp(c, "sysnr")) return cmd_sysnr(argc, argv);
  if (!strcmp(c, "pid")) return cmd_pid(argc, argv);
  if (!strcmp(c, "umask")) return cmd_umask(argc, argv);
  errno = ENOSYS;
  return fail(c);
}

static void on_sigusr1(int sig) { (void)sig; }

static int serve(void) {
  // No SA_RESTART: a blocking lock wait returns EINTR, which is what the tests look for.
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigusr1;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);
  static char line[1 << 20];
  while (fgets(line, sizeof line, stdin)) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (n == 0) continue;
    char* args[16];
    int argc = 0;
    for (char* p = line; p && argc < 16;) {
      args[argc++] = p;
      p = strchr(p, '\t');
      if (p) *p++ = 0;
    }
    if (!strcmp(args[0], "exit")) break;
    dispatch(argc, args);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: fsops <command> args... | fsops serve\n");
    return 2;
  }
  // -u MASK: run with that umask (the caller's umask is what creation through the mount honours).
  if (argc > 3 && !strcmp(argv[1], "-u")) {
    umask((mode_t)strtol(argv[2], NULL, 8));
    argc -= 2;
    argv += 2;
  }
  if (!strcmp(argv[1], "serve")) return serve();
  return dispatch(argc - 1, argv + 1);
}
