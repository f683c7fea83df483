// Tree walk: readdir (getdents64) every directory and fstatat every entry without following
// symlinks, like `find -ls` or `du`, by hand so only the system calls are measured. Prints
// entries, wall and CPU time as JSON.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

struct linux_dirent64 {
  unsigned long long d_ino;
  long long d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

static long entries;

static void die(const char* what) {
  fprintf(stderr, "walk: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void walk(int dfd) {
  // Per level, so recursion does not clobber the entries still to visit.
  char* buf = malloc(32768);
  if (!buf) die("malloc");
  for (;;) {
    long n = syscall(SYS_getdents64, dfd, buf, 32768);
    if (n < 0) die("getdents64");
    if (n == 0) break;
    for (long off = 0; off < n;) {
      struct linux_dirent64* d = (struct linux_dirent64*)(buf + off);
      off += d->d_reclen;
      const char* name = d->d_name;
      if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
      struct stat st;
      if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) die(name);
      entries++;
      if (S_ISDIR(st.st_mode)) {
        int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) die(name);
        walk(sub);
        close(sub);
      }
    }
  }
  free(buf);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: walk DIR\n");
    return 2;
  }
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  double c0 = cpu();
  int dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) die(argv[1]);
  walk(dfd);
  close(dfd);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("{\"entries\":%ld,\"seconds\":%.6f,\"cpu\":%.6f}\n", entries,
         (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9, cpu() - c0);
  return 0;
}
