// cpuwrap CMD ARGS...: runs CMD and, once it has exited, prints "@cpu <µs>" (user + system time
// of CMD and every descendant it waited for) as the last line on stderr. Node cannot get a
// child's rusage, and the workload's own CPU time is robust where wall time is disturbed by other
// load on the machine.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cpuwrap CMD ARGS...\n");
    return 2;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("cpuwrap: fork");
    return 2;
  }
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    fprintf(stderr, "cpuwrap: %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  int status;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0)
    if (errno != EINTR) {
      perror("cpuwrap: wait4");
      return 2;
    }
  long long us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                 (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
  fprintf(stderr, "@cpu %lld\n", us);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}
