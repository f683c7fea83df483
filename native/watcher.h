// Keeps the kernel's caches true when the source (or any overlay layer) changes behind the mount.
// Changes are watched with fanotify on whole filesystems (one mark per filesystem, file-handle
// reporting, needs CAP_SYS_ADMIN), or else with inotify on every directory the kernel has looked
// up. Each change becomes a FUSE invalidation (entry, inode) sent from this thread, never from a
// request handler (that can deadlock). A queue overflow invalidates everything. Changes made
// through the mount itself come from the session's request threads; fanotify reports the thread, so
// they are skipped (the kernel's cache already knows them).
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "inode_store.h"

namespace fusekit {

struct Invalidations {
  std::vector<std::pair<fuse_ino_t, std::string>> entries;  // (parent, name)
  std::vector<fuse_ino_t> inodes;
  bool all = false;
};

// What a filesystem tells the watcher.
class WatchClient {
 public:
  virtual ~WatchClient() = default;
  // O_PATH descriptors of the source / every layer root (borrowed).
  virtual std::vector<int> watch_roots() = 0;
  // Entry `name` of real directory `dir` changed, and/or real object `obj` changed (either may be
  // null): add what the kernel must forget. data_only: only file data changed (a write), which
  // the kernel already knows when the file is being written through the mount.
  virtual void changed(const InodeKey* dir, const char* name, const InodeKey* obj, bool data_only,
                       Invalidations* out) = 0;
  // Everything the kernel may cache (queue overflow, invalidate()).
  virtual void everything(Invalidations* out) = 0;
  // What the kernel must forget about a path of the mount ("/a/b"); ENOENT if there is none.
  virtual int invalidations_for(const std::string& path, Invalidations* out) = 0;
};

enum class WatchMode { Off, Auto, Fanotify, Inotify };

class Session;

class Watcher {
 public:
  Watcher(Session* session, WatchClient* client) : session_(session), client_(client) {}
  ~Watcher() { stop(); }

  // Starts watching; false (errno set, message in *why) when the mode cannot be had.
  bool start(WatchMode mode, std::string* why);
  void stop();
  const char* mode() const { return mode_ == WatchMode::Fanotify ? "fanotify" : "inotify"; }

  // inotify: a directory the kernel now knows (O_PATH fd, its identity).
  void track_dir(int fd, const InodeKey& key);

  // Threads whose changes are the mount's own.
  void add_own_thread(pid_t tid);

 private:
  bool start_fanotify(std::string* why);
  bool start_inotify(std::string* why);
  void run();
  void read_fanotify(Invalidations* inv);
  void read_inotify(Invalidations* inv);
  bool own(pid_t tid);
  // The kernel lost events: forget everything, and count it.
  void overflowed(Invalidations* inv);
  bool key_of_handle(const void* fsid, const struct file_handle* fh, InodeKey* key);

  Session* session_;
  WatchClient* client_;
  WatchMode mode_ = WatchMode::Off;
  int fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::thread th_;

  struct Fs {
    uint64_t fsid;  // statfs f_fsid
    dev_t dev;
    int mount_fd;  // O_RDONLY root, for open_by_handle_at
    bool ino32;    // its handles of type 1 are FILEID_INO32_GEN: the inode number comes first
  };
  std::vector<Fs> filesystems_;

  std::mutex m_;
  std::unordered_set<pid_t> own_threads_;
  std::unordered_map<int, InodeKey> wd_keys_;           // inotify watch -> directory
  std::unordered_set<InodeKey, InodeKeyHash> tracked_;  // directories already watched
};

}  // namespace fusekit
