// Descriptor-relative system calls the C library of Debian 12 does not wrap yet, with fallbacks.
// Every call here acts on an inode's own descriptor and never follows a symlink.
#pragma once

#include <errno.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace fusekit::sys {

// Opens a detached clone of the mount tree at path (open_tree OPEN_TREE_CLONE|AT_RECURSIVE): the
// daemon's view of its source cannot be changed by mounts made later, and ".." from a directory
// moved out of it fails. -1/errno when not permitted.
int open_tree_clone(const char* path);

// open_tree_clone made private (no mount propagation into it) and nosymfollow, as a second line of
// defence against following symlinks. -1/errno when not permitted.
int open_private_tree(const char* path);

// The filesystem UUID (FS_IOC_GETFSUUID); false when the filesystem has none.
bool fs_uuid(int path_fd, uint8_t out[16]);

// Removes everything below a directory (not the directory itself), never following symlinks.
int remove_contents(int dirfd);

// Reopens an O_PATH descriptor with real access flags through /proc/self/fd.
int reopen(int fd, int flags);

// chmod of the file an O_PATH descriptor refers to (never a symlink target).
int fchmod_path(int fd, mode_t mode, bool is_symlink);

// Extended attributes of the file an O_PATH descriptor refers to, symlinks included.
ssize_t getxattr_fd(int fd, const char* name, void* value, size_t size);
// getxattr of the entry `entry` of dirfd, not following a symlink: one component looked up, for
// reads where the object may be another than a descriptor opened by that name before (callers
// say why that is acceptable). ENOSYS on kernels without getxattrat().
ssize_t getxattr_name(int dirfd, const char* entry, const char* name, void* value, size_t size);
int setxattr_fd(int fd, const char* name, const void* value, size_t size, int flags);
ssize_t listxattr_fd(int fd, char* list, size_t size);
int removexattr_fd(int fd, const char* name);

// truncate() of a regular file known only by an O_PATH descriptor.
int truncate_fd(int fd, off_t size);

// Opens a path below dirfd with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
// RESOLVE_NO_MAGICLINKS): no component may be a symlink or leave dirfd's tree (".." above it,
// absolute paths). For paths the daemon reads from disk (overlay redirects), which a layer's author
// controls. -1/errno (EXDEV/ELOOP on an escape).
int open_beneath(int dirfd, const char* path, int flags);

// Reads a small text file (sysfs/procfs); empty on error.
std::string read_text(const char* path);

// Opens the /proc/self/fd directory that reopen() and the xattr calls on O_PATH descriptors go
// through, once for the process (at mount); false/errno when it cannot.
bool open_proc_fd_dir();

// ---- running out of descriptors

// A cache of descriptors that can give some back when the process runs out (EMFILE/ENFILE).
// Caches register for their lifetime; the limit is the process's, so any mount's shortage may be
// relieved by any mount's cache.
class FdReclaimer {
 public:
  // Closes some of the cached descriptors (and holds fewer from now on); false when it had none
  // to give. Called with no lock of the caller's cache held.
  virtual bool reclaim_fds() = 0;

 protected:
  ~FdReclaimer() = default;
};
void add_reclaimer(FdReclaimer* r);
void remove_reclaimer(FdReclaimer* r);
// Asks every registered cache to give descriptors back; true when any did.
bool reclaim_fds();

// The capacity of a descriptor cache. Lowered when the process runs out of descriptors; grown
// back, one descriptor per insert into a full cache, to the configured size once none ran out
// for kRegrowQuiet: a burst of open files must not shrink the cache for the daemon's life. If the
// shortage comes back, the next reclaim lowers it again. The cache's lock serializes the calls
// but get(), which stats read.
class FdCapacity {
 public:
  static constexpr std::chrono::seconds kRegrowQuiet{5};
  void set(size_t max) {
    max_ = max;
    cur_.store(max, std::memory_order_relaxed);
  }
  size_t get() const { return cur_.load(std::memory_order_relaxed); }
  void lower(size_t target) {
    if (target < get()) cur_.store(target, std::memory_order_relaxed);
    lowered_ = std::chrono::steady_clock::now();
  }
  // The capacity for an insert into a cache that holds `held` descriptors before it.
  size_t for_insert(size_t held) {
    size_t cur = get();
    if (held >= cur && cur < max_ && std::chrono::steady_clock::now() - lowered_ >= kRegrowQuiet)
      cur_.store(++cur, std::memory_order_relaxed);
    return cur;
  }

 private:
  size_t max_ = 0;
  std::atomic<size_t> cur_{0};
  std::chrono::steady_clock::time_point lowered_{};
};

// How many of n cached descriptors (n > 16) a cache keeps when it gives some back: an eighth
// fewer, at least 16 fewer, never fewer than 16. With FUSEKIT_TEST_RECLAIM_ONE=1 in the
// environment (tests) one fewer, so that every open on a request's path meets EMFILE in turn.
size_t reclaim_target(size_t n);

// Default capacity of a descriptor cache under RLIMIT_NOFILE: the limit less a reserve for open
// files, directories and the rest of the process (an eighth of the limit, or 8192 or half of it
// where that is more), at most 65536. The caches give descriptors back when the daemon's own
// opens need more (reclaim_fds).
size_t default_fd_cache_capacity();

// Runs open(), which returns a descriptor or -1/errno, again each time the caches gave
// descriptors back after it failed for want of them: other threads may take what one reclaim
// freed before the retry. Ends when the caches have none left to give. The caller holds no cache
// lock.
template <typename F>
int retry_fds(F open) {
  int fd = open();
  while (fd < 0 && (errno == EMFILE || errno == ENFILE) && reclaim_fds()) fd = open();
  return fd;
}

}  // namespace fusekit::sys
