// Metadata workload: one phase per run over N files f0000000.. in DIR — create (empty, then
// close), stat (fstatat without following), chmod (to 0600: on an overlay, a copy-up of each lower
// file) or unlink — printing the phase's wall and CPU time as JSON.
// Separate runs let the caller drop caches between phases. Names are relative to DIR's
// descriptor, so only the per-file operations are measured.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

static void die(const char* what, const char* name) {
  fprintf(stderr, "metaops: %s %s: %s\n", what, name, strerror(errno));
  exit(1);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: metaops DIR N create|stat|chmod|unlink\n");
    return 2;
  }
  int n = atoi(argv[2]);
  const char* phase = argv[3];
  int dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) die("open", argv[1]);
  char name[32];
  struct stat st;

  double t0 = now(), c0 = cpu();
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "f%07d", i);
    if (!strcmp(phase, "create")) {
      int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) die("create", name);
      close(fd);
    } else if (!strcmp(phase, "stat")) {
      if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) die("stat", name);
    } else if (!strcmp(phase, "chmod")) {
      if (fchmodat(dfd, name, 0600, 0) != 0) die("chmod", name);
    } else if (!strcmp(phase, "unlink")) {
      if (unlinkat(dfd, name, 0) != 0) die("unlink", name);
    } else {
      fprintf(stderr, "metaops: unknown phase %s\n", phase);
      return 2;
    }
  }
  double t1 = now(), c1 = cpu();
  printf("{\"seconds\":%.6f,\"cpu\":%.6f}\n", t1 - t0, c1 - c0);
  return 0;
}
