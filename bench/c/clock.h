// Timing shared by the bench helpers (each is compiled on its own; this header is their only
// common part).
#pragma once
#include <sys/resource.h>
#include <time.h>

// CPU time (user + system) of this process so far: the cost of the calls, robust against other
// load on the machine where wall time is not.
static inline double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
