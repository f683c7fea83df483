#include "locks.h"

#include <errno.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <thread>

#include "filesystem.h"
#include "sys.h"

namespace fusekit {

namespace {

int wake_signal() {
  static const int sig = SIGRTMIN + 6;
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};  // only interrupts the blocking call (no SA_RESTART)
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  });
  return sig;
}

}  // namespace

struct FileLocks::Waiter {
  fuse_req_t req = nullptr;
  int fd = -1;
  bool is_flock = false;
  int flock_op = 0;
  struct flock fl {};
  std::mutex mu;
  pthread_t tid{};
  bool has_tid = false;
  bool interrupted = false;
  bool done = false;
};

FileLocks::FileLocks() { wake_signal(); }

FileLocks::~FileLocks() { shutdown(); }

int FileLocks::owner_fd(Inode* in, int path_fd, uint64_t owner, int* err) {
  std::lock_guard<std::mutex> g(in->m);
  if (!in->locks) in->locks = std::make_unique<LockOwners>();
  auto it = in->locks->fds.find(owner);
  int fd = -1;
  if (it == in->locks->fds.end()) {
    // Whichever access the caller's open allows; out of descriptors, the caches give some back.
    for (int mode : {O_RDWR, O_RDONLY, O_WRONLY}) {
      fd = sys::retry_fds([&] { return sys::reopen(path_fd, mode); });
      if (fd >= 0 || errno == EMFILE || errno == ENFILE) break;
    }
    if (fd < 0) {
      *err = errno;
      return -1;
    }
    in->locks->fds.emplace(owner, fd);
  } else {
    fd = it->second;
  }
  // A duplicate, so a concurrent FLUSH closing the owner's descriptor cannot pull it away.
  int d = sys::retry_fds([&] { return fcntl(fd, F_DUPFD_CLOEXEC, 0); });
  if (d < 0) *err = errno;
  return d;
}

int FileLocks::getlk(Inode* in, int path_fd, uint64_t owner, struct flock* lock) {
  int err = 0;
  int fd = owner_fd(in, path_fd, owner, &err);
  if (fd < 0) return err;
  struct flock fl = *lock;
  fl.l_pid = 0;
  int r = fcntl(fd, F_OFD_GETLK, &fl);
  err = r < 0 ? errno : 0;
  close(fd);
  if (err) return err;
  *lock = fl;
  if (lock->l_pid < 0) lock->l_pid = 0;  // OFD locks have no pid
  return 0;
}

int FileLocks::setlk(fuse_req_t req, Inode* in, int path_fd, uint64_t owner, struct flock* lock,
                     bool sleep) {
  int err = 0;
  int fd = owner_fd(in, path_fd, owner, &err);
  if (fd < 0) return err;
  struct flock fl = *lock;
  fl.l_pid = 0;
  if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
    close(fd);
    return 0;
  }
  err = errno;
  if ((err != EAGAIN && err != EACCES) || !sleep || fl.l_type == F_UNLCK) {
    close(fd);
    return err == EACCES ? EAGAIN : err;
  }
  return wait_async(req, fd, false, 0, fl);
}

void FileLocks::release_owner(Inode* in, uint64_t owner) {
  std::lock_guard<std::mutex> g(in->m);
  if (!in->locks) return;
  auto it = in->locks->fds.find(owner);
  if (it == in->locks->fds.end()) return;
  // Unlock explicitly: a waiter's duplicate keeps the description alive past close().
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fcntl(it->second, F_OFD_SETLK, &fl);
  close(it->second);
  in->locks->fds.erase(it);
}

void FileLocks::release_all_locked(Inode* in) {
  if (!in->locks) return;
  for (auto& [owner, fd] : in->locks->fds) close(fd);
  in->locks.reset();
}

int FileLocks::flock(fuse_req_t req, int fd, int op) {
  if (::flock(fd, op | LOCK_NB) == 0) return 0;
  int err = errno;
  if (err != EWOULDBLOCK || (op & LOCK_NB) || (op & LOCK_UN)) return err;
  int d = sys::retry_fds([&] { return fcntl(fd, F_DUPFD_CLOEXEC, 0); });
  if (d < 0) return errno;
  return wait_async(req, d, true, op & ~LOCK_NB, {});
}

int FileLocks::wait_async(fuse_req_t req, int fd, bool is_flock, int flock_op,
                          const struct flock& fl) {
  auto w = std::make_shared<Waiter>();
  w->req = req;
  w->fd = fd;
  w->is_flock = is_flock;
  w->flock_op = flock_op;
  w->fl = fl;
  {
    std::lock_guard<std::mutex> g(m_);
    if (shutting_down_) {
      close(fd);
      return EINTR;
    }
    if (!replier_.joinable()) {
      try {
        replier_ = std::thread(&FileLocks::reply_loop, this);
      } catch (...) {
        close(fd);
        return EAGAIN;
      }
    }
    waiters_.emplace(w.get(), w);
  }
  try {
    std::thread(&FileLocks::run, this, w).detach();
  } catch (...) {
    std::lock_guard<std::mutex> g(m_);
    waiters_.erase(w.get());
    close(fd);
    cv_.notify_all();
    return EAGAIN;
  }
  return kAsyncReply;
}

void FileLocks::run(std::shared_ptr<Waiter> w) {
  // Request threads block all signals and this thread inherited that mask.
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, wake_signal());
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
  {
    std::lock_guard<std::mutex> g(w->mu);
    w->tid = pthread_self();
    w->has_tid = true;
  }
  fuse_req_interrupt_func(w->req, &FileLocks::on_interrupt, this);
  int err;
  for (;;) {
    {
      std::lock_guard<std::mutex> g(w->mu);
      if (w->interrupted) {
        err = EINTR;
        break;
      }
    }
    int r = w->is_flock ? ::flock(w->fd, w->flock_op) : fcntl(w->fd, F_OFD_SETLKW, &w->fl);
    if (r == 0) {
      err = 0;
      break;
    }
    if (errno != EINTR) {
      err = errno;
      break;
    }
  }
  {
    std::lock_guard<std::mutex> g(w->mu);
    w->done = true;
  }
  close(w->fd);
  // Leave the registry before the reply is sent: afterwards the request (and its address) is gone.
  std::lock_guard<std::mutex> g(m_);
  waiters_.erase(w.get());
  replies_.emplace_back(w->req, err);
  reply_cv_.notify_one();
  cv_.notify_all();
}

void FileLocks::reply_loop() {
  std::unique_lock<std::mutex> l(m_);
  for (;;) {
    reply_cv_.wait(l, [&] { return !replies_.empty() || stop_replier_; });
    if (replies_.empty()) return;  // stopping, and everything is answered
    auto [req, err] = replies_.front();
    replies_.pop_front();
    l.unlock();
    fuse_reply_err(req, err);
    l.lock();
  }
}

void FileLocks::on_interrupt(fuse_req_t req, void* data) {
  auto* self = static_cast<FileLocks*>(data);
  std::shared_ptr<Waiter> w;
  {
    std::lock_guard<std::mutex> g(self->m_);
    for (auto& [k, v] : self->waiters_) {
      if (v->req == req) {
        w = v;
        break;
      }
    }
  }
  if (w) self->kick(w);
}

void FileLocks::kick(std::shared_ptr<Waiter> w) {
  {
    std::lock_guard<std::mutex> g(w->mu);
    if (w->done) return;
    w->interrupted = true;
  }
  // The signal can land just before the waiter enters its blocking call, so repeat until it has
  // answered. The waiter sets done under mu before exiting, so its thread exists when signalled.
  std::thread([w] {
    for (;;) {
      {
        std::lock_guard<std::mutex> g(w->mu);
        if (w->done) return;
        if (w->has_tid) pthread_kill(w->tid, wake_signal());
      }
      usleep(2000);
    }
  }).detach();
}

void FileLocks::shutdown() {
  std::unique_lock<std::mutex> l(m_);
  shutting_down_ = true;
  for (auto& [k, w] : waiters_) kick(w);
  cv_.wait(l, [&] { return waiters_.empty(); });
  // The replier drains the answers still queued before it stops.
  stop_replier_ = true;
  reply_cv_.notify_one();
  l.unlock();
  if (replier_.joinable()) replier_.join();
}

}  // namespace fusekit
