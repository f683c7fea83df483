#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <set>
#include <vector>

#include "creds.h"
#include "sys.h"

namespace fusekit {

namespace {

// ---- libfuse's log: kept for error messages instead of going to the host's stderr.

std::mutex& log_mutex() {
  static auto* m = new std::mutex;  // leaked: usable during process exit
  return *m;
}
std::deque<std::string>& log_lines() {
  static auto* d = new std::deque<std::string>;
  return *d;
}

void log_func(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n && buf[n - 1] == '\n') buf[--n] = 0;
  static const bool echo = getenv("FUSEKIT_DEBUG") != nullptr;
  if (echo) fprintf(stderr, "libfuse[%d]: %s\n", static_cast<int>(level), buf);
  std::lock_guard<std::mutex> g(log_mutex());
  auto& d = log_lines();
  d.emplace_back(buf);
  while (d.size() > 32) d.pop_front();
}

void install_log() {
  static std::once_flag once;
  std::call_once(once, [] { fuse_set_log_func(log_func); });
}

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// libfuse cancels its io_uring queue threads at unmount (pthread_cancel, deferred) without
// waiting for the request they may be serving: the cancellation would strike at the handler's
// next close() or openat(), unwind through our frames and leave the request half done. Requests
// are served with cancellation off: the thread finishes the request, then leaves libfuse's loop,
// which sees the session's end.
struct NoCancel {
  int old = PTHREAD_CANCEL_ENABLE;
  NoCancel() { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old); }
  ~NoCancel() { pthread_setcancelstate(old, nullptr); }
  NoCancel(const NoCancel&) = delete;
  NoCancel& operator=(const NoCancel&) = delete;
};

// One request on its way through: who asked, when, what it names, and the reply helpers that
// record statistics and events. Names and paths an event needs are captured before the reply:
// afterwards the request's buffer (an io_uring ring entry) may already hold the next request.
struct Dispatch {
  NoCancel no_cancel;  // first: in force before anything else the request does, until the end
  Session* s;
  fuse_req_t req;
  Op op;
  uint64_t t0;
  Request r;
  bool denied = false;
  bool change = false;   // a change is_change(op) cannot tell (an open for writing)
  bool capture = false;  // events are on: keep the paths
  std::string path, path2;

  Dispatch(fuse_req_t q, Op o)
      : s(static_cast<Session*>(fuse_req_userdata(q))), req(q), op(o), t0(now_ns()) {
    const fuse_ctx* c = fuse_req_ctx(q);
    r = Request{q, c->uid, c->gid, c->pid, c->umask};
    (fuse_req_is_uring(q) ? s->stats().uring_requests : s->stats().dev_requests)
        .fetch_add(1, std::memory_order_relaxed);
    capture = s->events().active();
    if (s->watcher()) s->register_thread();
  }
  Filesystem& fs() { return s->fs(); }

  // What the operation names; only turned into paths when events are on.
  void target(fuse_ino_t ino, const char* name = nullptr) {
    if (capture && path.empty()) path = s->path_for(ino, name);
  }
  void target2(fuse_ino_t ino, const char* name = nullptr) {
    if (capture && path2.empty()) path2 = s->path_for(ino, name);
  }
  // Access rules: 0, or the errno (EACCES/EROFS) the operation must fail with.
  int check(fuse_ino_t ino, const char* name, bool write, bool second = false) {
    if (s->policy().empty()) return 0;
    std::string p = s->path_for(ino, name);
    int e = s->policy().check(p, write);
    if (second)
      path2 = std::move(p);
    else
      path = std::move(p);
    if (e) denied = true;
    return e;
  }
  // A rename moves everything below the name too.
  int check_below(fuse_ino_t ino, const char* name, bool write) {
    if (s->policy().empty()) return 0;
    int e = s->policy().check_below(s->path_for(ino, name), write);
    if (e) denied = true;
    return e;
  }

  void done(int err) {
    uint64_t ns = now_ns() - t0;
    s->stats().record(op, err, ns);
    if (capture) record_event(err, ns);
  }
  void record_event(int err, uint64_t ns) {
    EventBus& b = s->events();
    bool audit = (denied && b.audit() != AuditMode::Off) ||
                 (b.audit() == AuditMode::Changes && (change || is_change(op)));
    if (!audit && !b.wants_trace(op, err)) return;
    Event e;
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e.time_ns = static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + ts.tv_nsec;
    e.latency_ns = ns;
    e.uid = r.uid;
    e.gid = r.gid;
    e.pid = static_cast<uint32_t>(r.pid);
    e.err = err;
    e.op = op;
    e.audit = audit;
    e.denied = denied;
    e.path = std::move(path);
    e.path2 = std::move(path2);
    b.push(std::move(e));
  }
  void reply_err(int err) {
    fuse_reply_err(req, err);
    done(err);
  }
  void reply_entry(int err, fuse_entry_param* e, bool negative_ok) {
    if (err == ENOENT && negative_ok && s->config().negative_timeout > 0) {
      fuse_entry_param ne{};
      ne.entry_timeout = s->config().negative_timeout;
      fuse_reply_entry(req, &ne);
    } else if (err) {
      fuse_reply_err(req, err);
    } else if (fuse_reply_entry(req, e) != 0) {
      fs().forget(e->ino, 1);  // the kernel never saw it
    }
    done(err);
  }
  void reply_open(int err, fuse_ino_t ino, fuse_file_info* fi) {
    if (err) {
      fuse_reply_err(req, err);
    } else if (fuse_reply_open(req, fi) != 0) {
      fs().abandon_open(ino, fi);
    }
    done(err);
  }
  void reply_create(int err, fuse_entry_param* e, fuse_file_info* fi) {
    if (err) {
      fuse_reply_err(req, err);
    } else if (fuse_reply_create(req, e, fi) != 0) {
      fs().abandon_open(e->ino, fi);
      fs().forget(e->ino, 1);
    }
    done(err);
  }
};

// Builds a readdir reply; in plus mode remembers the lookup references it hands out so they can be
// dropped if the reply never reaches the kernel.
class DirBuf : public DirFiller {
 public:
  DirBuf(fuse_req_t req, size_t size) : req_(req), buf_(size) {}
  bool add(const char* name, const struct stat& st, off_t next_off) override {
    size_t need = fuse_add_direntry(req_, nullptr, 0, name, nullptr, 0);
    if (used_ + need > buf_.size()) return false;
    fuse_add_direntry(req_, buf_.data() + used_, buf_.size() - used_, name, &st, next_off);
    used_ += need;
    return true;
  }
  bool add_plus(const char* name, const fuse_entry_param& e, off_t next_off) override {
    size_t need = fuse_add_direntry_plus(req_, nullptr, 0, name, nullptr, 0);
    if (used_ + need > buf_.size()) return false;
    fuse_add_direntry_plus(req_, buf_.data() + used_, buf_.size() - used_, name, &e, next_off);
    used_ += need;
    if (e.ino) refs_.push_back(e.ino);
    return true;
  }
  const char* data() const { return buf_.data(); }
  size_t used() const { return used_; }
  const std::vector<fuse_ino_t>& refs() const { return refs_; }

 private:
  fuse_req_t req_;
  std::vector<char> buf_;
  size_t used_ = 0;
  std::vector<fuse_ino_t> refs_;
};

// ---- libfuse low-level trampolines

void ll_init(void* userdata, fuse_conn_info* conn) {
  static_cast<Session*>(userdata)->on_init(conn);
}
void ll_destroy(void* userdata) { static_cast<Session*>(userdata)->on_destroy(); }

void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Dispatch d(req, Op::Lookup);
  d.target(parent, name);
  if (int err = d.check(parent, name, false)) return d.reply_err(err);
  fuse_entry_param e{};
  int err = d.fs().lookup(d.r, parent, name, &e);
  d.reply_entry(err, &e, true);
}

// With the io_uring transport every request but FORGET and INTERRUPT comes over the ring, and one
// libfuse worker reads those two from /dev/fuse. Woken for each forget alone, that worker costs a
// context switch per unlinked or evicted inode, on the CPU the caller needs (about 30 us here).
// Waiting a moment before its next read lets the kernel queue the following forgets and hand them
// over as one BATCH_FORGET. Forgets only free memory and libfuse does not count a worker busy
// with one, so nothing waits on this but an interrupt, by at most the pause.
constexpr timespec kForgetPause = {0, 1000000};

void pace_forgets(Session* s, bool over_ring) {
  if (!over_ring && s->stats().uring_requests.load(std::memory_order_relaxed))
    nanosleep(&kForgetPause, nullptr);
}

void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Dispatch d(req, Op::Forget);
  const bool over_ring = fuse_req_is_uring(req);
  d.fs().forget(ino, nlookup);
  fuse_reply_none(req);
  d.done(0);
  pace_forgets(d.s, over_ring);
}

void ll_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Dispatch d(req, Op::Forget);
  const bool over_ring = fuse_req_is_uring(req);
  for (size_t i = 0; i < count; i++) d.fs().forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
  d.done(0);
  pace_forgets(d.s, over_ring);
}

void ll_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Getattr);
  d.target(ino);
  struct stat st;
  double timeout = 0;
  int err = d.fs().getattr(d.r, ino, fi, &st, &timeout);
  if (err) return d.reply_err(err);
  fuse_reply_attr(req, &st, timeout);
  d.done(0);
}

void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  Dispatch d(req, Op::Setattr);
  d.target(ino);
  if (int err = d.check(ino, nullptr, true)) return d.reply_err(err);
  struct stat st;
  double timeout = 0;
  int err = d.fs().setattr(d.r, ino, attr, to_set, fi, &st, &timeout);
  if (err) return d.reply_err(err);
  fuse_reply_attr(req, &st, timeout);
  d.done(0);
}

void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
  Dispatch d(req, Op::Readlink);
  d.target(ino);
  std::string target;
  int err = d.fs().readlink(d.r, ino, &target);
  if (err) return d.reply_err(err);
  fuse_reply_readlink(req, target.c_str());
  d.done(0);
}

void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Dispatch d(req, Op::Mknod);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_entry(d.fs().mknod(d.r, parent, name, mode, rdev, &e), &e, false);
}

void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Dispatch d(req, Op::Mkdir);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_entry(d.fs().mkdir(d.r, parent, name, mode, &e), &e, false);
}

void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Dispatch d(req, Op::Unlink);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  d.reply_err(d.fs().unlink(d.r, parent, name));
}

void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Dispatch d(req, Op::Rmdir);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  d.reply_err(d.fs().rmdir(d.r, parent, name));
}

void ll_symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Dispatch d(req, Op::Symlink);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_entry(d.fs().symlink(d.r, link, parent, name, &e), &e, false);
}

void ll_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned flags) {
  Dispatch d(req, Op::Rename);
  d.target(parent, name);
  d.target2(newparent, newname);
  // Moving out of or into a protected place is a change of both.
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  if (int err = d.check(newparent, newname, true, true)) return d.reply_err(err);
  if (int err = d.check_below(parent, name, true)) return d.reply_err(err);
  if (int err = d.check_below(newparent, newname, true)) return d.reply_err(err);
  d.reply_err(d.fs().rename(d.r, parent, name, newparent, newname, flags));
}

void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Dispatch d(req, Op::Link);
  d.target(ino);
  d.target2(newparent, newname);
  // A new name changes the inode too (link count, ctime), and would carry it out of its rule.
  if (int err = d.check(ino, nullptr, true)) return d.reply_err(err);
  if (int err = d.check(newparent, newname, true, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_entry(d.fs().link(d.r, ino, newparent, newname, &e), &e, false);
}

void ll_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Open);
  d.target(ino);
  bool write = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
  d.change = write;
  if (int err = d.check(ino, nullptr, write)) return d.reply_err(err);
  d.reply_open(d.fs().open(d.r, ino, fi), ino, fi);
}

void ll_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  Dispatch d(req, Op::Create);
  d.target(parent, name);
  if (int err = d.check(parent, name, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_create(d.fs().create(d.r, parent, name, mode, fi, &e), &e, fi);
}

void ll_tmpfile(fuse_req_t req, fuse_ino_t parent, mode_t mode, fuse_file_info* fi) {
  Dispatch d(req, Op::Tmpfile);
  d.target(parent);
  if (int err = d.check(parent, nullptr, true)) return d.reply_err(err);
  fuse_entry_param e{};
  d.reply_create(d.fs().tmpfile(d.r, parent, mode, fi, &e), &e, fi);
}

void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Dispatch d(req, Op::Read);
  d.target(ino);
  ReadReply out;
  int err = d.fs().read(d.r, ino, size, off, fi, &out);
  if (err) return d.reply_err(err);
  if (out.fd >= 0) {
    fuse_bufvec buf = FUSE_BUFVEC_INIT(out.size);
    buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
    buf.buf[0].fd = out.fd;
    buf.buf[0].pos = out.pos;
    fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
  } else {
    fuse_reply_buf(req, out.data.data(), out.size);
  }
  d.done(0);
}

void ll_write_buf(fuse_req_t req, fuse_ino_t ino, fuse_bufvec* bufv, off_t off,
                  fuse_file_info* fi) {
  Dispatch d(req, Op::Write);
  d.target(ino);
  size_t written = 0;
  int err = d.fs().write_buf(d.r, ino, bufv, off, fi, &written);
  if (err) return d.reply_err(err);
  fuse_reply_write(req, written);
  d.done(0);
}

void ll_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Flush);
  d.target(ino);
  d.reply_err(d.fs().flush(d.r, ino, fi));
}

void ll_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Release);
  d.target(ino);
  d.reply_err(d.fs().release(d.r, ino, fi));
}

void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Dispatch d(req, Op::Fsync);
  d.target(ino);
  d.reply_err(d.fs().fsync(d.r, ino, datasync, fi));
}

void ll_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Opendir);
  d.target(ino);
  int err = d.fs().opendir(d.r, ino, fi);
  if (err) return d.reply_err(err);
  if (fuse_reply_open(req, fi) != 0) {
    Request r = d.r;
    d.fs().releasedir(r, ino, fi);
  }
  d.done(0);
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                bool plus) {
  Dispatch d(req, plus ? Op::Readdirplus : Op::Readdir);
  d.target(ino);
  DirBuf buf(req, size);
  int err = d.fs().readdir(d.r, ino, size, off, fi, plus, buf);
  // Entries already gathered are worth more than an error about the ones after them.
  if (err && buf.used() == 0) return d.reply_err(err);
  if (fuse_reply_buf(req, buf.data(), buf.used()) != 0) {
    for (fuse_ino_t i : buf.refs()) d.fs().forget(i, 1);
  }
  d.done(0);
}

void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, false);
}

void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, true);
}

void ll_releasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Dispatch d(req, Op::Releasedir);
  d.target(ino);
  d.reply_err(d.fs().releasedir(d.r, ino, fi));
}

void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Dispatch d(req, Op::Fsyncdir);
  d.target(ino);
  d.reply_err(d.fs().fsyncdir(d.r, ino, datasync, fi));
}

void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  Dispatch d(req, Op::Statfs);
  d.target(ino);
  struct statvfs st;
  int err = d.fs().statfs(d.r, ino, &st);
  if (err) return d.reply_err(err);
  fuse_reply_statfs(req, &st);
  d.done(0);
}

void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                 int flags) {
  Dispatch d(req, Op::Setxattr);
  d.target(ino);
  if (int err = d.check(ino, nullptr, true)) return d.reply_err(err);
  d.reply_err(d.fs().setxattr(d.r, ino, name, value, size, flags));
}

void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  Dispatch d(req, Op::Getxattr);
  d.target(ino);
  std::string value;
  size_t len = 0;
  int err = d.fs().getxattr(d.r, ino, name, size, &value, &len);
  if (err) return d.reply_err(err);
  if (size == 0)
    fuse_reply_xattr(req, len);
  else
    fuse_reply_buf(req, value.data(), len);
  d.done(0);
}

void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Dispatch d(req, Op::Listxattr);
  d.target(ino);
  std::string list;
  size_t len = 0;
  int err = d.fs().listxattr(d.r, ino, size, &list, &len);
  if (err) return d.reply_err(err);
  if (size == 0)
    fuse_reply_xattr(req, len);
  else
    fuse_reply_buf(req, list.data(), len);
  d.done(0);
}

void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  Dispatch d(req, Op::Removexattr);
  d.target(ino);
  if (int err = d.check(ino, nullptr, true)) return d.reply_err(err);
  d.reply_err(d.fs().removexattr(d.r, ino, name));
}

void ll_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  Dispatch d(req, Op::Access);
  d.target(ino);
  d.reply_err(d.fs().access(d.r, ino, mask));
}

void ll_getlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  Dispatch d(req, Op::Getlk);
  d.target(ino);
  int err = d.fs().getlk(d.r, ino, fi, lock);
  if (err) return d.reply_err(err);
  fuse_reply_lock(req, lock);
  d.done(0);
}

void ll_setlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock, int sleep) {
  Dispatch d(req, Op::Setlk);
  d.target(ino);
  int err = d.fs().setlk(d.r, ino, fi, lock, sleep);
  if (err == kAsyncReply) return d.done(0);
  d.reply_err(err);
}

void ll_flock(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int op) {
  Dispatch d(req, Op::Flock);
  d.target(ino);
  int err = d.fs().flock(d.r, ino, fi, op);
  if (err == kAsyncReply) return d.done(0);
  d.reply_err(err);
}

void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                  fuse_file_info* fi) {
  Dispatch d(req, Op::Fallocate);
  d.target(ino);
  d.reply_err(d.fs().fallocate(d.r, ino, mode, offset, length, fi));
}

void ll_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, fuse_file_info* fi_in,
                        fuse_ino_t ino_out, off_t off_out, fuse_file_info* fi_out, size_t len,
                        int flags) {
  Dispatch d(req, Op::CopyFileRange);
  d.target(ino_in);
  d.target2(ino_out);
  size_t copied = 0;
  int err = d.fs().copy_file_range(d.r, ino_in, off_in, fi_in, ino_out, off_out, fi_out, len, flags,
                                   &copied);
  if (err) return d.reply_err(err);
  fuse_reply_write(req, copied);
  d.done(0);
}

void ll_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
  Dispatch d(req, Op::Lseek);
  d.target(ino);
  off_t out = 0;
  int err = d.fs().lseek(d.r, ino, off, whence, fi, &out);
  if (err) return d.reply_err(err);
  fuse_reply_lseek(req, out);
  d.done(0);
}

void ll_statx(fuse_req_t req, fuse_ino_t ino, int flags, int mask, fuse_file_info* fi) {
  Dispatch d(req, Op::Statx);
  d.target(ino);
  struct statx stx;
  double timeout = 0;
  int err = d.fs().statx(d.r, ino, flags, mask, fi, &stx, &timeout);
  if (err) return d.reply_err(err);
  fuse_reply_statx(req, 0, &stx, timeout);
  d.done(0);
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops o{};
  o.init = ll_init;
  o.destroy = ll_destroy;
  o.lookup = ll_lookup;
  o.forget = ll_forget;
  o.forget_multi = ll_forget_multi;
  o.getattr = ll_getattr;
  o.setattr = ll_setattr;
  o.readlink = ll_readlink;
  o.mknod = ll_mknod;
  o.mkdir = ll_mkdir;
  o.unlink = ll_unlink;
  o.rmdir = ll_rmdir;
  o.symlink = ll_symlink;
  o.rename = ll_rename;
  o.link = ll_link;
  o.open = ll_open;
  o.create = ll_create;
  o.tmpfile = ll_tmpfile;
  o.read = ll_read;
  o.write_buf = ll_write_buf;
  o.flush = ll_flush;
  o.release = ll_release;
  o.fsync = ll_fsync;
  o.opendir = ll_opendir;
  o.readdir = ll_readdir;
  o.readdirplus = ll_readdirplus;
  o.releasedir = ll_releasedir;
  o.fsyncdir = ll_fsyncdir;
  o.statfs = ll_statfs;
  o.setxattr = ll_setxattr;
  o.getxattr = ll_getxattr;
  o.listxattr = ll_listxattr;
  o.removexattr = ll_removexattr;
  o.access = ll_access;
  o.getlk = ll_getlk;
  o.setlk = ll_setlk;
  o.flock = ll_flock;
  o.fallocate = ll_fallocate;
  o.copy_file_range = ll_copy_file_range;
  o.lseek = ll_lseek;
  o.statx = ll_statx;
  return o;
}

const fuse_lowlevel_ops kOps = make_ops();

// Commas and backslashes separate and escape libfuse's -o values.
std::string escape_opt(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// The watchdog: a forked child that outlives this process. It only runs async-signal-safe calls
// (the parent is multithreaded). If the parent closes the pipe without saying 'D' (it died), the
// mount is detached, but only if it is still this session's mount (its device matches) or dead.
// Whether process pid is exiting; async-signal-safe (runs in the forked watchdog).
bool parent_exiting(pid_t pid) {
  char path[32] = "/proc/";
  char num[12];
  int len = 0;
  for (pid_t v = pid; v > 0 && len < 11; v /= 10) num[len++] = static_cast<char>('0' + v % 10);
  char* p = path + 6;
  while (len) *p++ = num[--len];
  memcpy(p, "/stat", 6);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // gone
  char buf[1024];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  // "pid (comm) state ppid pgrp session tty tpgid flags ...": comm may hold anything, so count
  // fields after its closing parenthesis.
  char* s = nullptr;
  for (char* q = buf; *q; q++)
    if (*q == ')') s = q;
  if (!s) return false;
  int field = 2;
  for (s++; *s && field < 9; s++)
    if (*s == ' ') field++;
  unsigned long flags = 0;
  while (*s >= '0' && *s <= '9') flags = flags * 10 + static_cast<unsigned long>(*s++ - '0');
  return flags & 0x4;  // PF_EXITING
}

[[noreturn]] void watchdog_main(int rfd, const char* mountpoint, dev_t dev, pid_t parent) {
  setsid();  // keep terminal signals aimed at the daemon's process group away
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  for (int s = 1; s < 65; s++) {
    if (s != SIGKILL && s != SIGSTOP) sigaction(s, &sa, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) {
    dup2(nul, 0);
    dup2(nul, 1);
    dup2(nul, 2);
  }
  if (rfd != 3) dup2(rfd, 3);
  close_range(4, ~0U, 0);
  // The system call itself, not libc's prctl: an interposed prctl (sanitizers name the thread in
  // their registry, under a lock another thread of the parent may have held at the fork) could
  // block forever here, and a watchdog stuck before its loop detaches nothing.
  syscall(SYS_prctl, PR_SET_NAME, "fusekit-watch", 0, 0, 0);
  for (;;) {
    // The pipe closes when the daemon's process ends. But a process that dies holding a file of
    // its own mount gets stuck in its exit, waiting on a FLUSH it can no longer answer, and never
    // closes the pipe: so also look at whether it is exiting (PF_EXITING in /proc/PID/stat).
    pollfd p = {3, POLLIN, 0};
    int r = poll(&p, 1, 250);
    if (r > 0) {
      char c = 0;
      ssize_t n = read(3, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n == 1 && c == 'D') _exit(0);
      break;  // EOF: the daemon's process is gone
    }
    if (r < 0 && errno == EINTR) continue;
    if (parent_exiting(parent)) break;
  }
  // AT_STATX_DONT_SYNC answers from the kernel's cache: it never waits for a daemon.
  struct statx stx;
  int r = statx(AT_FDCWD, mountpoint, AT_STATX_DONT_SYNC | AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx);
  bool ours = r == 0 ? makedev(stx.stx_dev_major, stx.stx_dev_minor) == dev : errno == ENOTCONN;
  // MNT_FORCE aborts the connection, which releases a process stuck on it; then detach.
  if (ours) umount2(mountpoint, MNT_FORCE | MNT_DETACH | UMOUNT_NOFOLLOW);
  _exit(0);
}

// Whether a mount of device dev is still attached in this process's mount namespace.
bool attached(dev_t dev) {
  FILE* f = fopen("/proc/self/mountinfo", "re");
  if (!f) return false;
  const std::string want = std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + " ";
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    const char* p = strchr(line, ' ');  // "id parent major:minor ..."
    if (p) p = strchr(p + 1, ' ');
    found = p && strncmp(p + 1, want.c_str(), want.size()) == 0;
  }
  fclose(f);
  return found;
}

}  // namespace

Session::Session(MountConfig cfg, std::unique_ptr<Filesystem> fs)
    : cfg_(std::move(cfg)), fs_(std::move(fs)), policy_(cfg_.rules) {
  events_.set_audit(cfg_.audit == 2   ? AuditMode::Changes
                    : cfg_.audit == 1 ? AuditMode::Denied
                                      : AuditMode::Off);
}

std::string Session::path_for(fuse_ino_t ino, const char* name) {
  std::string p = fs_->path_of(ino);
  if (name && *name) {
    if (p != "/") p += '/';
    p += name;
  }
  return p;
}

Session::~Session() {
  if (thread_.joinable()) {
    if (!closed_) detach_now();
    thread_.join();
  }
}

std::string Session::recent_log() {
  std::lock_guard<std::mutex> g(log_mutex());
  std::string out;
  for (auto& l : log_lines()) {
    if (!out.empty()) out += "; ";
    out += l;
  }
  return out;
}

const char* Session::transport() const {
  return stats_.uring_requests.load(std::memory_order_relaxed) ? "io_uring" : "dev";
}

void Session::set_on_closed(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> g(m_);
    if (!closed_) {
      on_closed_ = std::move(fn);
      return;
    }
  }
  fn();  // ended before anyone listened
}

namespace {

// 0 if this process may create an io_uring, else the errno that refuses it.
int io_uring_refused() {
  io_uring_params p{};
  int fd = static_cast<int>(syscall(__NR_io_uring_setup, 1, &p));
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

}  // namespace

bool Session::start(Error* err) {
  install_log();
  const std::string uring = sys::read_text("/sys/module/fuse/parameters/enable_uring");
  const bool uring_on = uring == "Y" || uring == "1";
  if (cfg_.transport == Transport::IoUring && !uring_on) {
    *err = {EOPNOTSUPP,
            "transport 'io_uring' needs FUSE-over-io_uring enabled in the kernel: "
            "/sys/module/fuse/parameters/enable_uring is not Y (as root: echo Y > that file)"};
    return false;
  }
  // io_uring itself may be refused to this process (kernel.io_uring_disabled, or a seccomp filter
  // such as Docker's default profile). libfuse would find out only after INIT and fall back
  // silently; knowing it now, 'auto' takes /dev/fuse with everything that goes with it.
  int ring_err = uring_on && cfg_.transport != Transport::Dev ? io_uring_refused() : 0;
  if (cfg_.transport == Transport::IoUring && ring_err) {
    *err = {ring_err,
            std::string("transport 'io_uring': this process may not create an io_uring (") +
                strerror(ring_err) + "; kernel.io_uring_disabled or a seccomp filter refuses it)"};
    return false;
  }
  uring_requested_ = cfg_.transport != Transport::Dev && uring_on && !ring_err;
  if (cfg_.passthrough == PassthroughMode::On && !has_cap_sys_admin()) {
    *err = {EPERM,
            "passthrough 'on' needs CAP_SYS_ADMIN in the initial user namespace (run as root), "
            "or use passthrough 'auto'"};
    return false;
  }

  std::string opts = "default_permissions,fsname=" + escape_opt(cfg_.fsname) +
                     ",subtype=" + escape_opt(cfg_.subtype);
  if (cfg_.allow_other) opts += ",allow_other";
  if (cfg_.read_only) opts += ",ro";
  opts += cfg_.devices ? ",dev" : ",nodev";
  opts += cfg_.suid ? ",suid" : ",nosuid";
  std::vector<std::string> args = {"fusekit", "-o", opts};
  if (uring_requested_) {
    args.push_back("-o");
    args.push_back("io_uring");
    args.push_back("-o");
    args.push_back("io_uring_q_depth=" +
                   std::to_string(cfg_.uring_queue_depth ? cfg_.uring_queue_depth : 16));
  }
  if (cfg_.debug) args.push_back("-d");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  fuse_args fargs = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  se_ = fuse_session_new(&fargs, &kOps, sizeof(kOps), this);
  fuse_opt_free_args(&fargs);
  if (!se_) {
    *err = {EINVAL, "libfuse refused the session options: " + recent_log()};
    return false;
  }
  errno = 0;
  if (fuse_session_mount(se_, cfg_.mountpoint.c_str()) != 0) {
    int e = errno ? errno : EIO;
    // Without CAP_SYS_ADMIN libfuse hands the mount to fusermount3, and errno is whatever its
    // search for the helper left behind: say what is missing instead.
    if (!has_cap_sys_admin() && (e == ENOENT || e == EIO)) e = EPERM;
    std::string why = recent_log();
    if (why.empty())
      why = std::string(strerror(e)) +
            (e == EPERM ? " (mounting needs CAP_SYS_ADMIN, or a fusermount3 that may mount here)"
                        : "");
    *err = {e, "mounting " + cfg_.mountpoint + " failed: " + why};
    fuse_session_destroy(se_);
    se_ = nullptr;
    return false;
  }
  mounted_ = true;
  thread_ = std::thread(&Session::loop, this);

  auto fail = [&](Error e) {
    *err = std::move(e);
    umount2(cfg_.mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
    wait_closed();
    return false;
  };
  {
    std::unique_lock<std::mutex> l(m_);
    cv_.wait_for(l, std::chrono::seconds(15), [&] { return init_done_ || loop_ended_; });
    if (!init_done_) {
      l.unlock();
      return fail({EIO, "the kernel did not complete FUSE INIT: " + recent_log()});
    }
  }
  // A first request through the mount: proves it is live, gives its device number, and shows
  // whether requests really travel over io_uring (libfuse falls back silently).
  for (int i = 0;; i++) {
    struct statx stx;
    if (statx(AT_FDCWD, cfg_.mountpoint.c_str(), AT_STATX_FORCE_SYNC | AT_SYMLINK_NOFOLLOW,
              STATX_BASIC_STATS, &stx) != 0) {
      int e = errno;
      return fail({e, "the new mount does not answer: " + std::string(strerror(e))});
    }
    mount_dev_ = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    if (!uring_requested_ || stats_.uring_requests.load() || i >= 200) break;
    usleep(5000);
  }
  if (cfg_.transport == Transport::IoUring && !stats_.uring_requests.load()) {
    return fail({EOPNOTSUPP, "FUSE-over-io_uring did not start: " + recent_log()});
  }
  if (cfg_.passthrough == PassthroughMode::On && !passthrough_) {
    return fail({EOPNOTSUPP,
                 "the kernel did not offer FUSE passthrough (needs Linux >= 6.9 with "
                 "CONFIG_FUSE_PASSTHROUGH)"});
  }
  if (!start_watchdog(err)) return fail(*err);
  if (cfg_.watch && fs_->watch_client()) {
    watcher_ = std::make_unique<Watcher>(this, fs_->watch_client());
    std::string why;
    WatchMode mode = cfg_.watch == 2   ? WatchMode::Fanotify
                     : cfg_.watch == 3 ? WatchMode::Inotify
                                       : WatchMode::Auto;
    if (!watcher_->start(mode, &why)) {
      watcher_.reset();
      return fail({EOPNOTSUPP, "cannot watch the source for changes: " + why});
    }
  }
  return true;
}

void Session::register_thread() {
  thread_local Session* registered = nullptr;
  if (registered == this) return;
  registered = this;
  if (watcher_) watcher_->add_own_thread(static_cast<pid_t>(gettid()));
}

size_t Session::notify(const Invalidations& in, WatchClient* client) {
  std::lock_guard<std::mutex> g(notify_m_);  // teardown destroys the session under this lock
  fuse_session* se = se_;
  if (!se || closed_) return 0;
  Invalidations all;
  const Invalidations* inv = &in;
  if (in.all) {
    client->everything(&all);
    // Every cached name becomes stale at once (kernel >= 6.16); attributes and data of the
    // inodes are dropped one by one below.
    fuse_lowlevel_notify_increment_epoch(se);
    inv = &all;
  }
  std::set<std::pair<fuse_ino_t, std::string>> entries(inv->entries.begin(), inv->entries.end());
  std::set<fuse_ino_t> inodes(inv->inodes.begin(), inv->inodes.end());
  size_t sent = 0;
  for (auto& [parent, name] : entries)
    if (fuse_lowlevel_notify_inval_entry(se, parent, name.c_str(), name.size()) == 0) sent++;
  for (fuse_ino_t ino : inodes)
    if (fuse_lowlevel_notify_inval_inode(se, ino, 0, 0) == 0) sent++;
  stats_.invalidations.fetch_add(sent, std::memory_order_relaxed);
  return sent;
}

int Session::invalidate(const std::string& path, size_t* sent) {
  std::lock_guard<std::mutex> released(release_m_);
  if (released_) {
    *sent = 0;  // nothing is cached by a connection that is gone
    return 0;
  }
  WatchClient* client = fs_->watch_client();
  if (!client) return EOPNOTSUPP;
  Invalidations inv;
  if (path.empty() || path == "/") {
    inv.all = true;
  } else if (int err = client->invalidations_for(path, &inv)) {
    return err;
  }
  *sent = notify(inv, client);
  return 0;
}

void Session::on_init(fuse_conn_info* conn) {
  if (!uring_requested_) fuse_unset_feature_flag(conn, FUSE_CAP_OVER_IO_URING);
  passthrough_ = cfg_.passthrough != PassthroughMode::Off && has_cap_sys_admin() &&
                 fuse_set_feature_flag(conn, FUSE_CAP_PASSTHROUGH);
  if (!passthrough_) fuse_unset_feature_flag(conn, FUSE_CAP_PASSTHROUGH);
  fs_->init(this, conn);
  // Requests that come over io_uring cannot be interrupted: libfuse 3.18 never lists them where
  // FUSE_INTERRUPT is matched, so every interrupt the kernel sends for one (a signal to a caller
  // waiting on the mount) is parked in the session until a later /dev/fuse request (a FORGET)
  // bounces it, and whatever is parked at unmount leaks. With the ring,
  // interrupts are turned off: the first is answered ENOSYS and the kernel sends no more. (Should
  // the ring still fail to start after INIT, lock waits over /dev/fuse stay uninterruptible.)
  if (uring_requested_ && (conn->capable_ext & FUSE_CAP_OVER_IO_URING) &&
      fuse_get_feature_flag(conn, FUSE_CAP_OVER_IO_URING))
    conn->no_interrupt = 1;
  tune_splice_read(conn);  // after the filesystem chose its max_write
  std::lock_guard<std::mutex> g(m_);
  init_done_ = true;
  cv_.notify_all();
}

// How requests are read from /dev/fuse (the /dev/fuse transport, and io_uring's forgets).
// libfuse splices each one through a pipe of its buffer's size (max_write plus a page) and then
// reads it from the pipe: a system call more than read() for the sake of WRITE payloads, which with
// passthrough never reach the daemon, so with passthrough requests are simply read. Without it the
// splice stays, but a pipe larger than /proc/sys/fs/pipe-max-size (1 MiB, where libfuse's default
// buffer is 1 MiB and a page) needs CAP_SYS_RESOURCE, which containers and sandboxes often drop;
// libfuse 3.18 then throws the pipe away and builds a new one for every request (pipe2, fcntl,
// reading pipe-max-size, three closes). There the buffer is kept within the limit. Together: a
// cold stat over /dev/fuse pinned to one CPU 0.73 -> 0.49 s for 10k files, unlink 1.3 -> 0.7 s.
void Session::tune_splice_read(fuse_conn_info* conn) {
  if (passthrough_) {
    fuse_unset_feature_flag(conn, FUSE_CAP_SPLICE_READ);
    return;
  }
  if (has_cap(CAP_SYS_RESOURCE)) return;
  const long page = sysconf(_SC_PAGESIZE);
  const long max = atol(sys::read_text("/proc/sys/fs/pipe-max-size").c_str());
  if (max - page >= 128 * 1024) {
    conn->max_write = std::min<unsigned>(conn->max_write, static_cast<unsigned>(max - page));
  } else {
    // A pipe too small for useful writes: read requests into memory instead.
    fuse_unset_feature_flag(conn, FUSE_CAP_SPLICE_READ);
  }
}

void Session::on_destroy() { fs_->destroy(); }

// The kernel's passthrough ioctls (include/uapi/linux/fuse.h); libfuse's wrappers need a request,
// and a backing file can also have to be closed when no request is at hand.
struct fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

int Session::backing_open(int fd) {
  fuse_backing_map map{fd, 0, 0};
  int id = ioctl(fuse_session_fd(se_), FUSE_DEV_IOC_BACKING_OPEN, &map);
  if (id > 0) {
    stats_.backing_registered.fetch_add(1, std::memory_order_relaxed);
    stats_.backing_active.fetch_add(1, std::memory_order_relaxed);
  } else {
    stats_.passthrough_failures.fetch_add(1, std::memory_order_relaxed);
  }
  return id;
}

void Session::backing_close(int backing_id) {
  uint32_t id = static_cast<uint32_t>(backing_id);
  ioctl(fuse_session_fd(se_), FUSE_DEV_IOC_BACKING_CLOSE, &id);
  stats_.backing_active.fetch_sub(1, std::memory_order_relaxed);
}

void Session::loop() {
  fuse_loop_config* lc = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(lc, 1);
  if (cfg_.threads) {
    fuse_loop_cfg_set_max_threads(lc, cfg_.threads);
    fuse_loop_cfg_set_idle_threads(lc, cfg_.threads);
  }
  fuse_session_loop_mt(se_, lc);
  fuse_loop_cfg_destroy(lc);
  teardown();
}

void Session::start_events(EventBus::Sink sink) {
  std::lock_guard<std::mutex> g(m_);
  if (closed_) return;
  events_.start(std::move(sink));
}

void Session::teardown() {
  {
    std::lock_guard<std::mutex> g(m_);
    loop_ended_ = true;
    cv_.notify_all();
  }
  events_.stop();  // the last batch is delivered before anyone hears that the session ended
  if (watcher_) watcher_->stop();
  // Detaches the mount if it is still there (libfuse first checks that the connection is alive).
  if (mounted_) fuse_session_unmount(se_);
  mounted_ = false;
  stop_watchdog();
  {
    std::lock_guard<std::mutex> g(notify_m_);
    fuse_session_destroy(se_);
    se_ = nullptr;
  }
  {
    std::lock_guard<std::mutex> g(release_m_);
    fs_->release();
    released_ = true;
  }
  std::function<void()> cb;
  {
    std::lock_guard<std::mutex> g(m_);
    closed_ = true;
    cv_.notify_all();
    cb = std::move(on_closed_);
  }
  if (cb) cb();
}

void Session::wait_closed() {
  std::unique_lock<std::mutex> l(m_);
  cv_.wait(l, [&] { return closed_.load(); });
}

bool Session::unmount(UnmountMode mode, Error* err) {
  if (closed_) return true;
  int flags = UMOUNT_NOFOLLOW;
  if (mode == UnmountMode::Lazy) flags |= MNT_DETACH;
  if (mode == UnmountMode::Force) flags |= MNT_FORCE | MNT_DETACH;
  // umount2 acts on the topmost mount at the path: had another filesystem been mounted over this
  // one, it would be removed instead, and this call would wait for a loop that never ends.
  struct statx stx;
  if (statx(AT_FDCWD, cfg_.mountpoint.c_str(), AT_STATX_DONT_SYNC | AT_SYMLINK_NOFOLLOW, STATX_TYPE,
            &stx) == 0 &&
      makedev(stx.stx_dev_major, stx.stx_dev_minor) != mount_dev_ && attached(mount_dev_)) {
    *err = {EBUSY, "another filesystem is mounted over " + cfg_.mountpoint + "; unmount it first"};
    return false;
  }
  if (umount2(cfg_.mountpoint.c_str(), flags) != 0) {
    int e = errno;
    if (e == EINVAL || e == ENOENT) {
      // Not mounted here any more. Unmounted from outside, the loop ends by itself at once; but a
      // mount detached lazily stays alive while files are open on it (or while a copy of it lives
      // in another mount namespace), and waiting for that would never end.
      if (wait_closed_for(std::chrono::seconds(2)) || mode == UnmountMode::Lazy) return true;
      if (mode == UnmountMode::Force) {
        if (abort_connection()) {
          wait_closed();
          return true;
        }
        *err = {EBUSY, "the mount of " + cfg_.mountpoint +
                           " is detached but still in use, and aborting it needs fusectl (mount -t "
                           "fusectl none /sys/fs/fuse/connections)"};
        return false;
      }
      *err = {EBUSY, "the mount of " + cfg_.mountpoint +
                         " is detached but still in use (open files, or a copy in another mount "
                         "namespace); close them, or unmount with { force: true }"};
      return false;
    }
    if (e == EBUSY) {
      *err = {EBUSY, "the mount point " + cfg_.mountpoint +
                         " is busy (open files or a working directory inside it); close them, or "
                         "unmount with { lazy: true } or { force: true }"};
    } else {
      *err = {e, "unmounting " + cfg_.mountpoint + " failed: " + strerror(e)};
    }
    return false;
  }
  if (mode != UnmountMode::Lazy) wait_closed();
  return true;
}

void Session::detach_now() {
  if (closed_) return;
  // This process is going away and cannot answer any more: abort the connection, not only detach
  // it. A file the process still has open on its own mount would otherwise make its exit wait
  // forever for the answer to the final flush, keeping the watchdog's pipe open too.
  struct statx stx;
  const char* mp = cfg_.mountpoint.c_str();
  if (statx(AT_FDCWD, mp, AT_STATX_DONT_SYNC | AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx) == 0 &&
      makedev(stx.stx_dev_major, stx.stx_dev_minor) == mount_dev_) {
    umount2(mp, MNT_FORCE | MNT_DETACH | UMOUNT_NOFOLLOW);
    return;
  }
  abort_connection();  // already detached (lazily) but alive
}

bool Session::abort_connection() {
  // Only fusectl, when mounted, reaches a connection that has no mount point any more. Its
  // directories are named after the kernel's encoding of the device number.
  char path[64];
  snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort",
           (major(mount_dev_) << 20) | minor(mount_dev_));
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "1", 1) == 1;
  close(fd);
  return ok;
}

bool Session::wait_closed_for(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(m_);
  return cv_.wait_for(l, timeout, [&] { return closed_.load(); });
}

bool Session::start_watchdog(Error* err) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    *err = {errno, "cannot create the watchdog pipe"};
    return false;
  }
  const char* mp = cfg_.mountpoint.c_str();
  const dev_t dev = mount_dev_;
  const pid_t self = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(p[0]);
    close(p[1]);
    *err = {e, "cannot start the unmount watchdog"};
    return false;
  }
  if (pid == 0) watchdog_main(p[0], mp, dev, self);
  close(p[0]);
  watchdog_fd_ = p[1];
  watchdog_pid_ = pid;
  return true;
}

void Session::stop_watchdog() {
  if (watchdog_fd_ < 0) return;
  ssize_t n;
  do {
    n = write(watchdog_fd_, "D", 1);
  } while (n < 0 && errno == EINTR);
  close(watchdog_fd_);
  watchdog_fd_ = -1;
  if (watchdog_pid_ > 0) {
    // It exits as soon as it reads "D". One that does not within 5 s is stuck (seen: a lock
    // inherited held across fork): kill it rather than hang the unmount; the mount is already
    // detached here, so there is nothing left for it to do.
    pid_t r = 0;
    for (int i = 0; i < 500; i++) {
      r = waitpid(watchdog_pid_, nullptr, WNOHANG);
      if (r != 0 && !(r < 0 && errno == EINTR)) break;
      usleep(10000);
    }
    if (r == 0) {
      kill(watchdog_pid_, SIGKILL);
      while (waitpid(watchdog_pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
  watchdog_pid_ = -1;
}

}  // namespace fusekit
