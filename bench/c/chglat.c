// Change latency: how long after a change made directly on the backing directory (the source of
// a passthrough mount, the lower layer of an overlay) a stat through the mount shows it.
//
// For each file chg/c0000.. in turn: stat it through the mount until that agrees with the backing
// file (so the mount has its attributes cached), wait 2 ms, change the backing file (even changes
// toggle the mode 0644 <-> 0600, odd ones append a byte), then stat it through the mount in a tight
// loop until the new mode or size shows. Stops after COUNT changes or BUDGET seconds; a change not
// shown within TIMEOUT seconds is counted as unseen. Prints {"latencies":[...],"unseen":N} in
// seconds.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

static void die(const char* what, const char* name) {
  fprintf(stderr, "chglat: %s %s: %s\n", what, name, strerror(errno));
  exit(1);
}

static int open_dir(const char* dir) {
  char p[4096];
  snprintf(p, sizeof p, "%s/chg", dir);
  int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) die("open", p);
  return fd;
}

static int same(const struct stat* a, const struct stat* b) {
  return (a->st_mode & 07777) == (b->st_mode & 07777) && a->st_size == b->st_size;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: chglat BACKING MOUNT COUNT BUDGET_S TIMEOUT_S\n");
    return 2;
  }
  int count = atoi(argv[3]);
  double budget = atof(argv[4]), timeout = atof(argv[5]);
  int bfd = open_dir(argv[1]), mfd = open_dir(argv[2]);
  double* lat = calloc(count > 0 ? count : 1, sizeof *lat);
  if (!lat) die("calloc", "");
  int n = 0, unseen = 0;
  double start = now();
  const struct timespec settle = {0, 2000000};
  for (int i = 0; i < count && now() - start < budget; i++) {
    char name[16];
    snprintf(name, sizeof name, "c%04d", i);
    struct stat b, m;
    if (fstatat(bfd, name, &b, AT_SYMLINK_NOFOLLOW) != 0) die("stat", name);
    double t = now();
    for (;;) {
      if (fstatat(mfd, name, &m, AT_SYMLINK_NOFOLLOW) != 0) die("stat through the mount", name);
      if (same(&m, &b)) break;
      if (now() - t > timeout) {
        errno = 0;
        die("the mount never showed the backing state of", name);
      }
    }
    nanosleep(&settle, NULL);

    struct stat want = b;
    double t0 = now();
    if (i % 2 == 0) {
      want.st_mode = (b.st_mode & ~07777) | ((b.st_mode & 07777) == 0644 ? 0600 : 0644);
      if (fchmodat(bfd, name, want.st_mode & 07777, 0) != 0) die("chmod", name);
    } else {
      int fd = openat(bfd, name, O_WRONLY | O_APPEND | O_CLOEXEC);
      if (fd < 0 || write(fd, "x", 1) != 1) die("append to", name);
      close(fd);
      want.st_size = b.st_size + 1;
    }
    for (;;) {
      if (fstatat(mfd, name, &m, AT_SYMLINK_NOFOLLOW) != 0) die("stat through the mount", name);
      double dt = now() - t0;
      if (same(&m, &want)) {
        lat[n++] = dt;
        break;
      }
      if (dt > timeout) {
        unseen++;
        break;
      }
    }
  }
  printf("{\"latencies\":[");
  for (int i = 0; i < n; i++) printf("%s%.9f", i ? "," : "", lat[i]);
  printf("],\"unseen\":%d}\n", unseen);
  return 0;
}
