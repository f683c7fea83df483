// Opens of regular files and the kernel's passthrough rules, shared by every filesystem.
//
// The kernel allows one backing file per FUSE inode, shared by all its passthrough opens, and
// refuses to mix passthrough opens with page-cache opens of the same inode. So the first open of
// an inode decides: it registers a backing file (plain read-only, or read-write when it writes),
// and later opens reuse it. A later open the backing file cannot serve (a writer on a read-only
// backing file, or any open after the inode's real file changed, e.g. by an overlay copy-up)
// still carries the backing id, as the kernel demands, but with FOPEN_DIRECT_IO its reads and
// writes come to the daemon, which serves them from the open's own descriptor.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <mutex>
#include <unordered_set>

#include "inode_store.h"
#include "session.h"

namespace fusekit {

// One FUSE open of a regular file.
struct FileHandle {
  enum Kind : uint8_t { Cached, Passthrough, Direct };
  int fd = -1;
  Kind kind = Cached;
  bool writer = false;
};

// Whether a data change the watcher saw is the mount's own: the file is being written through
// the mount, or its data is still as the last writer through the mount left it (the event is that
// writer's, read late; size and mtime, since a later rename or chmod through the mount changes the
// ctime; data written from outside changes the mtime, and an outside utimes is an attribute
// event, never skipped), or it is gone (no data left to go stale). stat_now gives the real file's
// attributes; it is asked only then.
template <class StatNow>
bool written_through_mount(Inode* in, StatNow stat_now) {
  {
    std::lock_guard<std::mutex> g(in->m);
    if (in->nwriters > 0) return true;
    if (!in->own_write) return false;
  }
  struct stat st;
  const bool have = stat_now(&st);  // outside in->m: it may take the store's descriptor locks
  std::lock_guard<std::mutex> g(in->m);
  if (in->nwriters > 0) return true;
  if (!in->own_write) return false;
  const Inode::WrittenState& w = *in->own_write;
  if (!have) return true;
  if (st.st_size == w.size && st.st_mtim.tv_sec == w.mtime.tv_sec &&
      st.st_mtim.tv_nsec == w.mtime.tv_nsec)
    return true;
  in->own_write.reset();  // changed by someone else since: from now on every event counts
  return false;
}

inline FileHandle* file_handle(fuse_file_info* fi) { return reinterpret_cast<FileHandle*>(fi->fh); }

class OpenFiles {
 public:
  void init(Session* session, bool passthrough, double attr_timeout) {
    session_ = session;
    stats_ = &session->stats();
    passthrough_ = passthrough;
    keep_cache_ = attr_timeout > 0;
  }

  // Takes ownership of fd (the open's own descriptor, opened with flags) and fills fi.
  // real_path_fd/real: the O_PATH descriptor and identity of the file fd refers to.
  // known_mode: the file's mode when the caller has it (a create), else 0 (fstat'ed).
  int attach(Inode* in, int real_path_fd, const InodeKey& real, int fd, int flags,
             fuse_file_info* fi, mode_t known_mode = 0);
  // Closes the handle; the last passthrough open releases the backing file.
  void detach(Inode* in, FileHandle* h);
  // The session is over: closes the opens the kernel never released (a forced or lazy unmount
  // with files still open ends the connection without RELEASE requests).
  void close_all();

 private:
  void track(FileHandle* h, bool add);
  std::mutex live_m_;
  std::unordered_set<FileHandle*> live_;
  Session* session_ = nullptr;
  Stats* stats_ = nullptr;
  bool passthrough_ = false;
  bool keep_cache_ = false;
};

}  // namespace fusekit
