#include "sys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace fusekit::sys {

namespace {

// x86_64/aarch64 share these numbers (the new generic syscall table).
constexpr long kSysOpenTree = 428;
constexpr long kSysFchmodat2 = 452;
constexpr long kSysSetxattrat = 463;
constexpr long kSysGetxattrat = 464;
constexpr long kSysListxattrat = 465;
constexpr long kSysRemovexattrat = 466;
constexpr unsigned kOpenTreeClone = 1;
constexpr unsigned kAtRecursive = 0x8000;

struct XattrArgs {
  uint64_t value;
  uint32_t size;
  uint32_t flags;
};

std::atomic<bool> g_no_xattrat{false};     // no *xattrat() calls (kernels before 6.13)
std::atomic<bool> g_no_empty_path{false};  // *xattrat() refuses O_PATH descriptors with ""
std::atomic<bool> g_no_fchmodat2{false};

// Opened once for the process, by the first mount (open_proc_fd_dir). A failure is not kept:
// kept, every later reopen would fail with EBADF.
int proc_fd_dir() {
  static std::atomic<int> cached{-1};
  int fd = cached.load(std::memory_order_acquire);
  if (fd >= 0) return fd;
  fd = retry_fds([] { return open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC); });
  if (fd < 0) return -1;
  int none = -1;
  if (!cached.compare_exchange_strong(none, fd, std::memory_order_acq_rel)) {
    close(fd);  // another thread's won
    return none;
  }
  return fd;
}

void proc_path(int fd, char* buf, size_t len) { snprintf(buf, len, "/proc/self/fd/%d", fd); }

// Runs an *xattrat() call, given (dirfd, path, at_flags), on the object fd holds; false when the
// kernel lacks those calls, and the caller uses the path calls on /proc/self/fd/N.
template <typename F>
bool on_fd_at(int fd, long* r, F call) {
  if (g_no_xattrat.load(std::memory_order_relaxed)) return false;
  if (!g_no_empty_path.load(std::memory_order_relaxed)) {
    *r = call(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (*r >= 0 || (errno != ENOSYS && errno != EBADF)) return true;
    if (errno == ENOSYS) {
      g_no_xattrat.store(true, std::memory_order_relaxed);
      return false;
    }
    g_no_empty_path.store(true, std::memory_order_relaxed);
  }
  // They refuse O_PATH descriptors with an empty path (EBADF: the kernel's fdget skips them),
  // which inode descriptors are. The descriptor's entry in /proc/self/fd, followed, is exactly
  // the object it holds, even a symlink; taken relative to that directory, only the entry is
  // looked up, not the four components of the path (a third of a lookup's cost in the overlay).
  const int pd = proc_fd_dir();
  if (pd < 0) return false;
  char n[16];
  snprintf(n, sizeof n, "%d", fd);
  *r = call(pd, n, 0);
  return true;
}

}  // namespace

int open_beneath(int dirfd, const char* path, int flags) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(syscall(SYS_openat2, dirfd, path, &how, sizeof how));
}

int open_tree_clone(const char* path) {
  return static_cast<int>(
      syscall(kSysOpenTree, AT_FDCWD, path, kOpenTreeClone | kAtRecursive | O_CLOEXEC));
}

int open_private_tree(const char* path) {
  int fd = open_tree_clone(path);
  if (fd < 0) return -1;
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_NOSYMFOLLOW;
  attr.propagation = MS_PRIVATE;
  if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

bool fs_uuid(int path_fd, uint8_t out[16]) {
  struct fsuuid2 {
    uint8_t len;
    uint8_t uuid[16];
  } u{};
  int fd = openat(path_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  int r = ioctl(fd, _IOR(0x15, 0, struct fsuuid2), &u);
  close(fd);
  if (r != 0 || u.len != 16) return false;
  memcpy(out, u.uuid, 16);
  for (int i = 0; i < 16; i++)
    if (out[i]) return true;
  return false;
}

int remove_contents(int dirfd) {
  int fd = retry_fds([&] { return openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  if (fd < 0) return -1;
  DIR* d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -1;
  }
  int result = 0;
  while (struct dirent* e = readdir(d)) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (unlinkat(fd, e->d_name, 0) == 0) continue;
    if (errno != EISDIR && errno != EPERM) {
      result = -1;
      continue;
    }
    int sub = retry_fds(
        [&] { return openat(fd, e->d_name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); });
    if (sub < 0 || remove_contents(sub) != 0) result = -1;
    if (sub >= 0) close(sub);
    if (unlinkat(fd, e->d_name, AT_REMOVEDIR) != 0) result = -1;
  }
  closedir(d);
  return result;
}

bool open_proc_fd_dir() { return proc_fd_dir() >= 0; }

int reopen(int fd, int flags) {
  char name[16];
  snprintf(name, sizeof name, "%d", fd);
  const int pd = proc_fd_dir();
  if (pd < 0) return -1;
  return openat(pd, name, (flags & ~O_NOFOLLOW) | O_CLOEXEC);
}

int fchmod_path(int fd, mode_t mode, bool is_symlink) {
  if (!g_no_fchmodat2.load(std::memory_order_relaxed)) {
    long r = syscall(kSysFchmodat2, fd, "", mode, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (r == 0 || errno != ENOSYS) return static_cast<int>(r);
    g_no_fchmodat2.store(true, std::memory_order_relaxed);
  }
  // Linux has no modes on symlinks; a path-based chmod would follow one.
  if (is_symlink) {
    errno = EOPNOTSUPP;
    return -1;
  }
  char p[40];
  proc_path(fd, p, sizeof p);
  return chmod(p, mode);
}

ssize_t getxattr_fd(int fd, const char* name, void* value, size_t size) {
  XattrArgs a{reinterpret_cast<uint64_t>(value), static_cast<uint32_t>(size), 0};
  long r;
  if (on_fd_at(fd, &r, [&](int d, const char* p, int fl) {
        return syscall(kSysGetxattrat, d, p, fl, name, &a, sizeof a);
      }))
    return r;
  char p[40];
  proc_path(fd, p, sizeof p);
  return getxattr(p, name, value, size);
}

ssize_t getxattr_name(int dirfd, const char* entry, const char* name, void* value, size_t size) {
  if (g_no_xattrat.load(std::memory_order_relaxed)) {
    errno = ENOSYS;
    return -1;
  }
  XattrArgs a{reinterpret_cast<uint64_t>(value), static_cast<uint32_t>(size), 0};
  return syscall(kSysGetxattrat, dirfd, entry, AT_SYMLINK_NOFOLLOW, name, &a, sizeof a);
}

int setxattr_fd(int fd, const char* name, const void* value, size_t size, int flags) {
  XattrArgs a{reinterpret_cast<uint64_t>(value), static_cast<uint32_t>(size),
              static_cast<uint32_t>(flags)};
  long r;
  if (on_fd_at(fd, &r, [&](int d, const char* p, int fl) {
        return syscall(kSysSetxattrat, d, p, fl, name, &a, sizeof a);
      }))
    return static_cast<int>(r);
  char p[40];
  proc_path(fd, p, sizeof p);
  return setxattr(p, name, value, size, flags);
}

ssize_t listxattr_fd(int fd, char* list, size_t size) {
  long r;
  if (on_fd_at(fd, &r, [&](int d, const char* p, int fl) {
        return syscall(kSysListxattrat, d, p, fl, list, size);
      }))
    return r;
  char p[40];
  proc_path(fd, p, sizeof p);
  return listxattr(p, list, size);
}

int removexattr_fd(int fd, const char* name) {
  long r;
  if (on_fd_at(fd, &r, [&](int d, const char* p, int fl) {
        return syscall(kSysRemovexattrat, d, p, fl, name);
      }))
    return static_cast<int>(r);
  char p[40];
  proc_path(fd, p, sizeof p);
  return removexattr(p, name);
}

int truncate_fd(int fd, off_t size) {
  int wfd = reopen(fd, O_WRONLY);
  if (wfd < 0) return -1;
  int r = ftruncate(wfd, size);
  int e = errno;
  close(wfd);
  errno = e;
  return r;
}

std::string read_text(const char* path) {
  std::string out;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[256];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

namespace {
struct Reclaimers {
  std::mutex m;
  std::vector<FdReclaimer*> list;
};
// Never destroyed: session threads may still be tearing a mount down while the process exits.
Reclaimers& reclaimers() {
  static auto* r = new Reclaimers;
  return *r;
}
}  // namespace

void add_reclaimer(FdReclaimer* r) {
  Reclaimers& g = reclaimers();
  std::lock_guard<std::mutex> lock(g.m);
  g.list.push_back(r);
}

void remove_reclaimer(FdReclaimer* r) {
  Reclaimers& g = reclaimers();
  std::lock_guard<std::mutex> lock(g.m);
  g.list.erase(std::remove(g.list.begin(), g.list.end(), r), g.list.end());
}

bool reclaim_fds() {
  const int saved = errno;
  bool any = false;
  {
    // Held throughout: a cache cannot go away while it gives descriptors back.
    Reclaimers& g = reclaimers();
    std::lock_guard<std::mutex> lock(g.m);
    for (FdReclaimer* r : g.list) any |= r->reclaim_fds();
  }
  errno = saved;
  return any;
}

size_t reclaim_target(size_t n) {
  static const bool one = [] {
    const char* v = getenv("FUSEKIT_TEST_RECLAIM_ONE");
    return v && strcmp(v, "1") == 0;
  }();
  if (one) return n - 1;
  return std::max<size_t>(16, n - std::max<size_t>(16, n / 8));
}

size_t default_fd_cache_capacity() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  const size_t lim = rl.rlim_cur == RLIM_INFINITY ? size_t{1} << 20 : rl.rlim_cur;
  // The process's other users of descriptors (open files, a Node service's own files) cannot
  // give theirs back: a generous share stays free for them.
  const size_t reserve = std::max(lim / 8, std::min<size_t>(8192, lim / 2));
  return std::clamp<size_t>(lim - reserve, 64, 65536);
}

}  // namespace fusekit::sys
