// Test helper for the idmap, hardening, policy, file-handle and lock tests: the few things the
// shell and fsops cannot do. Compiled at test time by idmap-tools.ts.
//
//   idmap-tools idmapped SRC DST UIDMAP [GIDMAP]
//       Attaches a kernel idmapped bind mount of SRC at DST (the reference fusekit's idmap must
//       behave like). Maps are uid_map text: "inside outside count" lines; GIDMAP defaults to
//       UIDMAP. Undo with umount DST.
//   idmap-tools euid
//       Prints {"uid":..,"euid":..,"gid":..,"egid":..} (run setuid from a mount: nosuid check).
//   idmap-tools exchange A B N
//       renameat2(A, B, RENAME_EXCHANGE) N times (swapping a directory and a symlink under the
//       daemon's feet); prints {"swaps":n,"errors":e}.
//   idmap-tools mktree ROOT NDIRS NFILES
//       ROOT/dNNNN/fNNNN: NDIRS directories of NFILES empty files, two processes in parallel.
//   idmap-tools noring CMD [ARG...]
//       Runs CMD under a seccomp filter that fails io_uring_setup with EPERM, as Docker's default
//       profile and kernel.io_uring_disabled do.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int die(const char* what) {
  fprintf(stderr, "idmap-tools: %s: %s\n", what, strerror(errno));
  return 1;
}

static int write_file(const char* path, const char* text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  int e = errno;
  close(fd);
  errno = e;
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int cmd_idmapped(int argc, char** argv) {
  if (argc < 5) return die("usage: idmapped SRC DST UIDMAP [GIDMAP]");
  const char* uidmap = argv[4];
  const char* gidmap = argc > 5 ? argv[5] : argv[4];
  // Two pipes: one child -> parent ("namespace ready"), one parent -> child ("done, exit"). A
  // single shared pipe would let the child read back its own byte.
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) || pipe2(done, O_CLOEXEC)) return die("pipe");
  pid_t pid = fork();
  if (pid < 0) return die("fork");
  if (pid == 0) {
    close(ready[0]);
    close(done[1]);
    char c = unshare(CLONE_NEWUSER) == 0 ? 'x' : 'e';
    if (write(ready[1], &c, 1) != 1) _exit(1);
    (void)read(done[0], &c, 1);  // returns when the parent closes its end
    _exit(0);
  }
  close(ready[1]);
  close(done[0]);
  char c = 0;
  if (read(ready[0], &c, 1) != 1 || c != 'x') {
    errno = EPERM;
    return die("unshare(CLONE_NEWUSER) in the child");
  }
  char path[64];
  int rc = 0;
  snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
  if (write_file(path, uidmap)) rc = die("writing uid_map");
  snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
  if (!rc && write_file(path, gidmap)) rc = die("writing gid_map");
  snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
  int ns = rc ? -1 : open(path, O_RDONLY | O_CLOEXEC);
  if (!rc && ns < 0) rc = die("opening the user namespace");
  close(done[1]);
  waitpid(pid, NULL, 0);
  if (rc) return rc;
  int t = (int)syscall(SYS_open_tree, AT_FDCWD, argv[2], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (t < 0) return die("open_tree");
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_set = MOUNT_ATTR_IDMAP;
  a.userns_fd = (unsigned long long)ns;
  if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH, &a, sizeof a)) return die("mount_setattr");
  if (syscall(SYS_move_mount, t, "", AT_FDCWD, argv[3], MOVE_MOUNT_F_EMPTY_PATH))
    return die("move_mount");
  printf("{\"ok\":true}\n");
  return 0;
}

static int cmd_euid(void) {
  printf("{\"uid\":%u,\"euid\":%u,\"gid\":%u,\"egid\":%u}\n", getuid(), geteuid(), getgid(),
         getegid());
  return 0;
}

static int cmd_exchange(int argc, char** argv) {
  if (argc < 5) return die("usage: exchange A B N");
  long n = strtol(argv[4], NULL, 10), swaps = 0, errors = 0;
  for (long i = 0; i < n; i++) {
    if (syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], RENAME_EXCHANGE) == 0)
      swaps++;
    else
      errors++;
  }
  printf("{\"swaps\":%ld,\"errors\":%ld}\n", swaps, errors);
  return 0;
}

static int mktree_part(const char* root, long d0, long d1, long nfiles) {
  char p[4096];
  for (long d = d0; d < d1; d++) {
    snprintf(p, sizeof p, "%s/d%04ld", root, d);
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return die("mkdir");
    int dfd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return die("open dir");
    for (long f = 0; f < nfiles; f++) {
      char name[32];
      snprintf(name, sizeof name, "f%04ld", f);
      int fd = openat(dfd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0) return die("create");
      close(fd);
    }
    close(dfd);
  }
  return 0;
}

static int cmd_mktree(int argc, char** argv) {
  if (argc < 5) return die("usage: mktree ROOT NDIRS NFILES");
  long ndirs = strtol(argv[3], NULL, 10), nfiles = strtol(argv[4], NULL, 10);
  long half = ndirs / 2;
  pid_t pid = fork();
  if (pid < 0) return die("fork");
  if (pid == 0) _exit(mktree_part(argv[2], 0, half, nfiles));
  int rc = mktree_part(argv[2], half, ndirs, nfiles);
  int st = 0;
  waitpid(pid, &st, 0);
  if (rc || !WIFEXITED(st) || WEXITSTATUS(st)) return 1;
  printf("{\"files\":%ld}\n", ndirs * nfiles);
  return 0;
}

static int cmd_noring(int argc, char** argv) {
  if (argc < 3) return die("usage: noring CMD [ARG...]");
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof f / sizeof f[0], f};
  // Without no_new_privs, which root (CAP_SYS_ADMIN) does not need: it would change nothing here.
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return die("seccomp");
  execvp(argv[2], argv + 2);
  return die(argv[2]);
}

int main(int argc, char** argv) {
  if (argc < 2) return die("usage: idmap-tools idmapped|euid|exchange|mktree|noring ...");
  if (!strcmp(argv[1], "idmapped")) return cmd_idmapped(argc, argv);
  if (!strcmp(argv[1], "euid")) return cmd_euid();
  if (!strcmp(argv[1], "exchange")) return cmd_exchange(argc, argv);
  if (!strcmp(argv[1], "mktree")) return cmd_mktree(argc, argv);
  if (!strcmp(argv[1], "noring")) return cmd_noring(argc, argv);
  errno = EINVAL;
  return die(argv[1]);
}
