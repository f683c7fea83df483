// The session adapts libfuse's low-level API to a Filesystem: it owns the fuse_session, the mount,
// the request threads (libfuse's multithreaded /dev/fuse loop, and its per-CPU io_uring queues when
// that transport is on), the unmount, and a watchdog process that removes the mount if this
// process dies without unmounting (SIGKILL), so no dead ENOTCONN mount point is ever left behind.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "config.h"
#include "events.h"
#include "filesystem.h"
#include "policy.h"
#include "stats.h"
#include "watcher.h"

namespace fusekit {

// An error for the user: errno plus a sentence.
struct Error {
  int code = 0;
  std::string message;
};

enum class UnmountMode { Normal, Lazy, Force };

class Session {
 public:
  Session(MountConfig cfg, std::unique_ptr<Filesystem> fs);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Mounts and starts serving; returns once the kernel's INIT is answered and a first request
  // was served, so the transport in use is known. On failure nothing stays mounted.
  bool start(Error* err);
  // Unmounts. Normal refuses a busy mount (EBUSY); Lazy detaches it and lets open files finish;
  // Force aborts the connection. Normal and Force wait until the request threads have stopped.
  bool unmount(UnmountMode mode, Error* err);
  // Blocks until the request loop has ended and the session is torn down.
  void wait_closed();
  bool closed() const { return closed_.load(); }
  // Called once, on the loop thread, when the session has ended for any reason.
  void set_on_closed(std::function<void()> fn);
  // Detaches the mount and aborts its connection without waiting (process exit).
  void detach_now();

  const MountConfig& config() const { return cfg_; }
  Stats& stats() { return stats_; }
  Filesystem& fs() { return *fs_; }
  fuse_session* fuse() const { return se_; }

  // Negotiated at INIT.
  bool passthrough() const { return passthrough_; }
  const char* transport() const;
  bool uring_requested() const { return uring_requested_; }

  // Registers fd as the backing file of a passthrough open; >0 on success.
  int backing_open(int fd);
  void backing_close(int backing_id);

  // Hooks for the low-level trampolines (session.cc).
  void on_init(fuse_conn_info* conn);
  void on_destroy();

  // Recent libfuse log lines (mount errors end up there).
  static std::string recent_log();

  const Policy& policy() const { return policy_; }
  EventBus& events() { return events_; }
  // Starts delivering events (idempotent); stopped when the session ends.
  void start_events(EventBus::Sink sink);

  // Sends cache invalidations to the kernel (from a thread that is not serving a request).
  size_t notify(const Invalidations& inv, WatchClient* client);
  // Mount.invalidate(): one path, or everything when path is empty.
  int invalidate(const std::string& path, size_t* sent);
  Watcher* watcher() { return watcher_.get(); }
  const char* watch_mode() const { return watcher_ ? watcher_->mode() : "off"; }
  // Request threads register once, so the watcher can tell the mount's own changes apart.
  void register_thread();
  // The path an operation names: the inode's path, plus name when given.
  std::string path_for(fuse_ino_t ino, const char* name);

 private:
  void tune_splice_read(fuse_conn_info* conn);  // see session.cc
  void loop();
  void teardown();
  bool wait_closed_for(std::chrono::milliseconds timeout);
  // Aborts the connection through fusectl (works without a mount point); false if unavailable.
  bool abort_connection();
  bool start_watchdog(Error* err);
  void stop_watchdog();

  MountConfig cfg_;
  std::unique_ptr<Filesystem> fs_;
  std::mutex release_m_;  // invalidate() vs the filesystem releasing its inodes at the end
  bool released_ = false;
  Stats stats_;
  Policy policy_;
  EventBus events_;
  std::unique_ptr<Watcher> watcher_;
  fuse_session* se_ = nullptr;
  std::thread thread_;
  bool mounted_ = false;

  std::mutex m_;
  std::mutex notify_m_;
  std::condition_variable cv_;
  bool init_done_ = false;
  bool loop_ended_ = false;
  std::atomic<bool> closed_{false};
  std::function<void()> on_closed_;

  bool passthrough_ = false;
  bool uring_requested_ = false;
  dev_t mount_dev_ = 0;
  int watchdog_fd_ = -1;
  pid_t watchdog_pid_ = -1;
};

}  // namespace fusekit
