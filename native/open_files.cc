#include "open_files.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <new>

#include "locks.h"
#include "sys.h"

namespace fusekit {

int OpenFiles::attach(Inode* in, int real_path_fd, const InodeKey& real, int fd, int flags,
                      fuse_file_info* fi, mode_t known_mode) {
  auto* h = new FileHandle;
  h->fd = fd;
  track(h, true);
  fi->fh = reinterpret_cast<uint64_t>(h);
  fi->keep_cache = 0;
  fi->direct_io = 0;
  const bool want_write = (flags & O_ACCMODE) != O_RDONLY;
  // Writes to a setuid/setgid file must reach the daemon: with killpriv_v2 the kernel leaves
  // clearing those bits to it (FUSE_WRITE_KILL_SUIDGID), and passthrough writes would bypass it.
  bool privileged = false;
  if (want_write && passthrough_ && S_ISREG(in->type)) {
    struct stat st;
    st.st_mode = known_mode;
    privileged = (known_mode || fstat(fd, &st) == 0) &&
                 ((st.st_mode & S_ISUID) ||
                  (st.st_mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP));
  }
  std::lock_guard<std::mutex> g(in->m);
  if (want_write) {
    in->nwriters++;
    h->writer = true;
  }
  if (passthrough_ && S_ISREG(in->type) && in->ncached == 0) {
    if (!in->backing_id && !privileged) {
      // Always a description of its own, never the open's: flock() locks live on the open's
      // description, and one shared with the backing file would outlive the open's close.
      int bfd = sys::retry_fds(
          [&] { return sys::reopen(real_path_fd, want_write ? O_RDWR : O_RDONLY); });
      if (bfd >= 0) {
        int id = session_->backing_open(bfd);
        close(bfd);  // the kernel keeps its own reference
        if (id > 0) {
          in->backing_id = id;
          in->backing_writable = want_write;
          in->backing_real = real;
        }
      }
    }
    if (in->backing_id) {
      fi->backing_id = in->backing_id;
      if (privileged || !(in->backing_real == real) || (want_write && !in->backing_writable)) {
        fi->direct_io = 1;
        fi->parallel_direct_writes = 1;
        h->kind = FileHandle::Direct;
        stats_->opens_direct.fetch_add(1, std::memory_order_relaxed);
      } else {
        h->kind = FileHandle::Passthrough;
      }
      in->npassthrough++;
      stats_->opens_passthrough.fetch_add(1, std::memory_order_relaxed);
      return 0;
    }
  }
  if (in->npassthrough > 0) {
    // Cannot happen while the counts mirror the kernel's; refuse rather than break the inode.
    if (h->writer) in->nwriters--;
    track(h, false);
    delete h;
    fi->fh = 0;
    return EBUSY;
  }
  in->ncached++;
  h->kind = FileHandle::Cached;
  fi->keep_cache = keep_cache_;  // AUTO_INVAL_DATA drops it when mtime/size change
  stats_->opens_cached.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

void OpenFiles::detach(Inode* in, FileHandle* h) {
  {
    std::lock_guard<std::mutex> g(in->m);
    int backing = 0;
    if (h->writer) {
      in->nwriters--;
      // What this writer left, for telling the watcher's events of our own writes from others'
      // (written_through_mount); without a watcher nobody asks.
      struct stat st;
      if (!session_->watcher()) {
        in->own_write.reset();
      } else if (fstat(h->fd, &st) == 0) {
        if (!in->own_write) in->own_write.reset(new (std::nothrow) Inode::WrittenState);
        if (in->own_write) *in->own_write = {st.st_size, st.st_mtim};
      } else {
        in->own_write.reset();
      }
    }
    if (h->kind == FileHandle::Cached) {
      in->ncached--;
    } else if (--in->npassthrough == 0 && in->backing_id) {
      backing = in->backing_id;
      in->backing_id = 0;
      in->backing_writable = false;
    }
    if (in->ncached == 0 && in->npassthrough == 0) FileLocks::release_all_locked(in);
    // Closed under the lock: a racing open must not register a new backing file first.
    if (backing) session_->backing_close(backing);
  }
  close(h->fd);
  track(h, false);
  delete h;
}

void OpenFiles::track(FileHandle* h, bool add) {
  std::lock_guard<std::mutex> g(live_m_);
  if (add)
    live_.insert(h);
  else
    live_.erase(h);
}

void OpenFiles::close_all() {
  std::lock_guard<std::mutex> g(live_m_);
  for (FileHandle* h : live_) {
    close(h->fd);
    delete h;
  }
  live_.clear();
}

}  // namespace fusekit
