// `git status` without git: the calls git makes to compare a work tree with its index. LIST holds
// every tracked file (a path relative to ROOT), then every directory with a trailing slash (the
// untimed part reads it). Timed: lstat of every file by its path from ROOT (git's index refresh),
// then opendir/readdir of ROOT and of every directory (git's scan for untracked files). Prints wall
// and CPU time as JSON.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

static void die(const char* what, const char* name) {
  fprintf(stderr, "gitstat: %s %s: %s\n", what, name, strerror(errno));
  exit(1);
}

static void scan(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) die("opendir", dir);
  while (readdir(d)) {
  }
  closedir(d);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: gitstat ROOT LIST\n");
    return 2;
  }
  FILE* f = fopen(argv[2], "r");
  if (!f) die("open", argv[2]);
  size_t n = 0, cap = 1024;
  char** paths = malloc(cap * sizeof *paths);
  char* line = NULL;
  size_t len = 0;
  ssize_t r;
  while ((r = getline(&line, &len, f)) > 0) {
    if (line[r - 1] == '\n') line[--r] = 0;
    if (r == 0) continue;
    if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
    if (!paths) die("realloc", "");
    paths[n++] = strdup(line);
  }
  fclose(f);
  if (chdir(argv[1]) != 0) die("chdir", argv[1]);

  double t0 = now(), c0 = cpu();
  struct stat st;
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(paths[i]);
    if (paths[i][l - 1] == '/') continue;
    if (lstat(paths[i], &st) != 0) die("lstat", paths[i]);
  }
  scan(".");
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(paths[i]);
    if (paths[i][l - 1] == '/') scan(paths[i]);
  }
  printf("{\"seconds\":%.6f,\"cpu\":%.6f}\n", now() - t0, cpu() - c0);
  return 0;
}
