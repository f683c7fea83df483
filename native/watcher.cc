#include "watcher.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "session.h"

namespace fusekit {

namespace {

constexpr uint64_t kFanMask = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY |
                              FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_DELETE_SELF | FAN_MOVE_SELF |
                              FAN_ONDIR;
constexpr uint32_t kInMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY |
                             IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF |
                             IN_ONLYDIR;

uint64_t fsid_of(const void* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

bool Watcher::start(WatchMode mode, std::string* why) {
  if (pipe2(stop_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    *why = strerror(errno);
    return false;
  }
  bool ok = false;
  if (mode == WatchMode::Auto || mode == WatchMode::Fanotify) ok = start_fanotify(why);
  if (!ok && (mode == WatchMode::Auto || mode == WatchMode::Inotify)) ok = start_inotify(why);
  if (!ok) return false;
  th_ = std::thread(&Watcher::run, this);
  return true;
}

bool Watcher::start_fanotify(std::string* why) {
  int fd = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME |
                             FAN_REPORT_FID | FAN_REPORT_TID,
                         O_RDONLY | O_LARGEFILE);
  if (fd < 0) {
    *why = std::string("fanotify: ") + strerror(errno) + " (it needs CAP_SYS_ADMIN)";
    return false;
  }
  for (int root : client_->watch_roots()) {
    struct statfs sf;
    struct stat st;
    if (fstatfs(root, &sf) != 0 || fstat(root, &st) != 0) continue;
    uint64_t fsid = fsid_of(&sf.f_fsid);
    bool seen = false;
    for (auto& f : filesystems_) seen |= f.fsid == fsid;
    if (seen) continue;
    // One mark covers the whole filesystem, however large the tree. (fanotify_mark and
    // open_by_handle_at refuse O_PATH descriptors.)
    int mfd = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0 ||
        fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, kFanMask, mfd, nullptr) != 0) {
      *why = std::string("fanotify_mark: ") + strerror(errno);
      if (mfd >= 0) close(mfd);
      close(fd);
      for (auto& f : filesystems_) close(f.mount_fd);
      filesystems_.clear();
      return false;
    }
    // Handle type 1 is FILEID_INO32_GEN ({ino, gen}) on most filesystems, but not on all (tmpfs
    // uses it for {gen, ino, ino >> 32}): trust the layout only where the root's handle shows it.
    struct {
      struct file_handle fh;
      unsigned char bytes[MAX_HANDLE_SZ];
    } rh;
    rh.fh.handle_bytes = MAX_HANDLE_SZ;
    int mnt_id;
    uint32_t first = 0;
    bool ino32 = name_to_handle_at(mfd, "", &rh.fh, &mnt_id, AT_EMPTY_PATH) == 0 &&
                 rh.fh.handle_type == 1 && rh.fh.handle_bytes == 8;
    if (ino32) memcpy(&first, rh.fh.f_handle, 4);
    ino32 = ino32 && first == st.st_ino;
    filesystems_.push_back({fsid, st.st_dev, mfd, ino32});
  }
  fd_ = fd;
  mode_ = WatchMode::Fanotify;
  return true;
}

bool Watcher::start_inotify(std::string* why) {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) {
    *why = std::string("inotify: ") + strerror(errno);
    return false;
  }
  fd_ = fd;
  mode_ = WatchMode::Inotify;
  for (int root : client_->watch_roots()) {
    struct stat st;
    if (fstat(root, &st) == 0) track_dir(root, {static_cast<uint64_t>(st.st_dev), st.st_ino});
  }
  return true;
}

void Watcher::stop() {
  if (th_.joinable()) {
    ssize_t r = write(stop_pipe_[1], "x", 1);
    (void)r;
    th_.join();
  }
  for (int p : stop_pipe_)
    if (p >= 0) close(p);
  stop_pipe_[0] = stop_pipe_[1] = -1;
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  for (auto& f : filesystems_)
    if (f.mount_fd >= 0) close(f.mount_fd);
  filesystems_.clear();
}

void Watcher::track_dir(int fd, const InodeKey& key) {
  if (mode_ != WatchMode::Inotify) return;
  std::lock_guard<std::mutex> g(m_);
  if (!tracked_.insert(key).second) return;
  char p[40];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  int wd = inotify_add_watch(fd_, p, kInMask);
  if (wd >= 0)
    wd_keys_[wd] = key;
  else
    tracked_.erase(key);
}

void Watcher::add_own_thread(pid_t tid) {
  std::lock_guard<std::mutex> g(m_);
  own_threads_.insert(tid);
}

bool Watcher::own(pid_t tid) {
  std::lock_guard<std::mutex> g(m_);
  return own_threads_.count(tid) != 0;
}

void Watcher::overflowed(Invalidations* inv) {
  inv->all = true;
  session_->stats().watch_overflows.fetch_add(1, std::memory_order_relaxed);
}

bool Watcher::key_of_handle(const void* fsid, const struct file_handle* fh, InodeKey* key) {
  uint64_t id = fsid_of(fsid);
  for (auto& f : filesystems_) {
    if (f.fsid != id) continue;
    // FILEID_INO32_GEN carries the inode number: no syscall for events about other files.
    if (f.ino32 && fh->handle_type == 1 && fh->handle_bytes == 8) {
      uint32_t ino;
      memcpy(&ino, fh->f_handle, 4);
      *key = {static_cast<uint64_t>(f.dev), ino};
      return true;
    }
    int fd = open_by_handle_at(f.mount_fd, const_cast<struct file_handle*>(fh), O_PATH | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    bool ok = fstat(fd, &st) == 0;
    close(fd);
    if (ok) *key = {static_cast<uint64_t>(st.st_dev), st.st_ino};
    return ok;
  }
  return false;
}

void Watcher::read_fanotify(Invalidations* inv) {
  alignas(fanotify_event_metadata) char buf[65536];
  for (;;) {
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return;
    // Events are packed at 4-byte boundaries (the kernel pads info records to 4, not 8), so the
    // metadata of any event after one with a name is usually misaligned for its 64-bit mask:
    // read it through an aligned copy (FAN_EVENT_OK's checks, on offsets).
    for (ssize_t off = 0; n - off >= static_cast<ssize_t>(FAN_EVENT_METADATA_LEN);) {
      fanotify_event_metadata meta;
      memcpy(&meta, buf + off, sizeof meta);
      if (meta.event_len < FAN_EVENT_METADATA_LEN || meta.event_len > n - off) break;
      const char* ev = buf + off;
      off += meta.event_len;
      if (meta.mask & FAN_Q_OVERFLOW) {
        overflowed(inv);
        continue;
      }
      if (own(meta.pid)) continue;  // made through the mount: the kernel already knows
      InodeKey dir{}, obj{};
      bool has_dir = false, has_obj = false;
      std::string name;
      const char* p = ev + sizeof meta;
      const char* end = ev + meta.event_len;
      while (p + sizeof(fanotify_event_info_header) <= end) {
        auto* hdr = reinterpret_cast<const fanotify_event_info_header*>(p);
        if (hdr->len == 0) break;
        if (hdr->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME ||
            hdr->info_type == FAN_EVENT_INFO_TYPE_DFID ||
            hdr->info_type == FAN_EVENT_INFO_TYPE_FID) {
          auto* fid = reinterpret_cast<const fanotify_event_info_fid*>(p);
          auto* fh = reinterpret_cast<const struct file_handle*>(fid->handle);
          bool is_dir = hdr->info_type != FAN_EVENT_INFO_TYPE_FID;
          if (hdr->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME)
            name = reinterpret_cast<const char*>(fh->f_handle + fh->handle_bytes);
          if (is_dir)
            has_dir = key_of_handle(&fid->fsid, fh, &dir);
          else
            has_obj = key_of_handle(&fid->fsid, fh, &obj);
        }
        p += hdr->len;
      }
      if (name == ".") name.clear();
      const bool data_only = !(meta.mask & ~(FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ONDIR));
      if (has_dir || has_obj)
        client_->changed(has_dir ? &dir : nullptr, name.empty() ? nullptr : name.c_str(),
                         has_obj ? &obj : nullptr, data_only, inv);
    }
  }
}

void Watcher::read_inotify(Invalidations* inv) {
  alignas(inotify_event) char buf[65536];
  for (;;) {
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        overflowed(inv);
        continue;
      }
      InodeKey key;
      {
        std::lock_guard<std::mutex> g(m_);
        auto it = wd_keys_.find(ev->wd);
        if (it == wd_keys_.end()) continue;
        key = it->second;
        if (ev->mask & IN_IGNORED) {
          tracked_.erase(key);
          wd_keys_.erase(it);
          continue;
        }
      }
      const bool data_only = !(ev->mask & ~(IN_MODIFY | IN_CLOSE_WRITE | IN_ISDIR));
      if (ev->len)
        client_->changed(&key, ev->name, nullptr, data_only, inv);
      else
        client_->changed(nullptr, nullptr, &key, data_only, inv);
    }
  }
}

void Watcher::run() {
  pollfd p[2] = {{fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
  for (;;) {
    if (poll(p, 2, -1) < 0 && errno != EINTR) return;
    if (p[1].revents) return;
    Invalidations inv;
    for (int round = 0; round < 2; round++) {
      if (mode_ == WatchMode::Fanotify)
        read_fanotify(&inv);
      else
        read_inotify(&inv);
      // Changes come in bursts (a write, then a close, then attributes): gather them briefly so
      // one invalidation covers the burst.
      if (round == 0) usleep(1000);
    }
    session_->notify(inv, client_);
  }
}

}  // namespace fusekit
