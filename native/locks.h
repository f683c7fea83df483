// File locks forwarded to the backing file, so they conflict with locks taken on the source by
// other processes and behave as they do there.
//
// POSIX record locks belong to a lock owner (a process), not to a descriptor; the daemon is one
// process, so each FUSE lock owner gets its own open file description on the backing file and
// its locks are OFD locks on it. FLUSH (any close by the owner) releases them, as POSIX requires.
// flock() locks belong to an open file description, which each FUSE open already has.
//
// A blocking request (F_SETLKW, flock without LOCK_NB) waits on its own thread and is answered from
// there, so request threads (and io_uring queues, one per CPU) never block on another process.
// FUSE_INTERRUPT wakes the waiter with a signal and it answers EINTR. The answer itself goes out
// from one long-lived thread: over io_uring, replying also queues the ring entry's next fetch on
// behalf of the replying thread, and the kernel cancels a thread's pending io_uring commands when
// the thread exits, which would fail the next request on that entry with ECANCELED.
#pragma once

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "inode_store.h"

namespace fusekit {

class FileLocks {
 public:
  FileLocks();
  ~FileLocks();

  // POSIX locks. path_fd is the inode's O_PATH descriptor (reopened for the owner's OFD).
  int getlk(Inode* in, int path_fd, uint64_t owner, struct flock* lock);
  // Returns kAsyncReply when the request waits and will be answered later.
  int setlk(fuse_req_t req, Inode* in, int path_fd, uint64_t owner, struct flock* lock, bool sleep);
  // Releases every POSIX lock of owner on the inode (FLUSH).
  void release_owner(Inode* in, uint64_t owner);
  // Releases all owners (last close of the inode). Caller holds in->m.
  static void release_all_locked(Inode* in);

  // flock() on a handle's own descriptor.
  int flock(fuse_req_t req, int fd, int op);

  // Wakes every waiter (they answer EINTR) and waits until all have answered.
  void shutdown();

 private:
  struct Waiter;
  int owner_fd(Inode* in, int path_fd, uint64_t owner, int* err);
  int wait_async(fuse_req_t req, int fd, bool is_flock, int flock_op, const struct flock& fl);
  static void on_interrupt(fuse_req_t req, void* data);
  void run(std::shared_ptr<Waiter> w);
  void kick(std::shared_ptr<Waiter> w);
  void reply_loop();

  std::mutex m_;
  std::condition_variable cv_;
  std::unordered_map<Waiter*, std::shared_ptr<Waiter>> waiters_;
  bool shutting_down_ = false;
  // Answers of finished waiters, sent by replier_ (started with the first wait).
  std::condition_variable reply_cv_;
  std::deque<std::pair<fuse_req_t, int>> replies_;
  std::thread replier_;
  bool stop_replier_ = false;
};

}  // namespace fusekit
