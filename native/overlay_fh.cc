// Overlay file-handle mode: only a bounded cache of descriptors stays open, and the merged
// objects it evicts keep kernel file handles of their real objects instead, so a tree of millions
// of files needs no descriptor per known inode.
//
// A RealState is immutable once published, and readers use its descriptors for as long as they
// hold it. The cache closes a state's descriptors only while its inode is the state's sole holder
// (use_count 1 under the inode's state_m, which every reader takes to get the state), and
// OvInode::state() reopens them, under the same lock, before handing the state out. So a reader
// never sees a descriptor closed or changed under it, and copy-up and rename publish new states
// as before (the old one's descriptors stay open until its last reader lets it go).
//
// Handles are stable: a lower object reopened from its handle is the same object, an upper one
// that was renamed is found where it is now, and one that was deleted gives ESTALE (the object is
// gone: its operations fail with ESTALE and the next lookup of its name finds what is there now).
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>

#include "overlay.h"

namespace fusekit {

namespace {

constexpr unsigned kMaxHandle = 128;

struct HandleBuf {
  struct file_handle fh;
  unsigned char bytes[kMaxHandle];
};

}  // namespace

OvFdCache::OvFdCache(std::vector<Mount> mounts, size_t capacity) : mounts_(std::move(mounts)) {
  capacity_.set(capacity < 16 ? 16 : capacity);
  ring_.reserve(capacity_.get());
  sys::add_reclaimer(this);
}

OvFdCache::~OvFdCache() { sys::remove_reclaimer(this); }

bool OvFdCache::take(int layer, int fd, std::string* out) const {
  if (fd < 0 || layer < 0 || static_cast<size_t>(layer) >= mounts_.size()) return false;
  HandleBuf h;
  h.fh.handle_bytes = kMaxHandle;
  int mount_id;
  if (name_to_handle_at(fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) != 0) return false;
  // Only on the layer's own mount can the layer's mount descriptor open it again (a mount inside
  // the upper dir keeps its descriptors).
  if (mount_id != mounts_[static_cast<size_t>(layer)].mount_id) return false;
  out->assign(reinterpret_cast<const char*>(&h.fh), sizeof(struct file_handle) + h.fh.handle_bytes);
  return true;
}

void OvFdCache::prepare(RealState& s) const {
  s.handled = false;
  if (s.pinned || !take(s.layer, s.fd, &s.handle)) return;
  for (auto& d : s.lowers)
    if (!take(d.layer, d.fd, &d.handle)) return;
  s.handled = true;
}

int OvFdCache::open_handle(int layer, const std::string& h) const {
  HandleBuf b;
  if (h.size() < sizeof(struct file_handle) || h.size() > sizeof b) {
    errno = ESTALE;
    return -1;
  }
  memcpy(&b, h.data(), h.size());
  return open_by_handle_at(mounts_[static_cast<size_t>(layer)].fd, &b.fh, O_PATH | O_CLOEXEC);
}

bool OvFdCache::reopen(RealState& s) {
  int fd = open_handle(s.layer, s.handle);
  if (fd < 0) return false;
  std::vector<int> lfds;
  lfds.reserve(s.lowers.size());
  for (auto& d : s.lowers) {
    int l = open_handle(d.layer, d.handle);
    if (l < 0) {
      int e = errno;
      close(fd);
      for (int x : lfds) close(x);
      errno = e;
      return false;
    }
    lfds.push_back(l);
  }
  s.fd = fd;
  for (size_t i = 0; i < lfds.size(); i++) s.lowers[i].fd = lfds[i];
  reopens_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void OvFdCache::unlink_at(size_t pos) {
  OvInode* v = ring_[pos];
  ring_[pos] = ring_.back();
  ring_[pos]->ring_pos = static_cast<int64_t>(pos);
  ring_.pop_back();
  v->ring_pos = -1;  // after the move: v may have been the last entry
}

void OvFdCache::drop_at(size_t pos) {
  OvInode* v = ring_[pos];
  open_.fetch_sub(v->cached_fds, std::memory_order_relaxed);
  v->cached_fds = 0;
  unlink_at(pos);
}

void OvFdCache::insert(OvInode* in) {
  std::lock_guard<std::mutex> g(m_);
  sweep_locked(capacity_.for_insert(open_.load(std::memory_order_relaxed)), in);
  if (in->ring_pos >= 0) return;
  in->ring_pos = static_cast<int64_t>(ring_.size());
  ring_.push_back(in);
}

void OvFdCache::sweep_locked(size_t limit, const OvInode* keep) {
  // Clock sweep: close the descriptors of states nobody holds now and nobody used since the hand
  // last passed.
  size_t tries = ring_.size() * 2;
  while (open_.load(std::memory_order_relaxed) > limit && !ring_.empty() && tries-- > 0) {
    if (hand_ >= ring_.size()) hand_ = 0;
    OvInode* v = ring_[hand_];
    if (v == keep) {
      hand_++;
      continue;
    }
    std::lock_guard<std::mutex> vg(v->state_m);
    const RealState* s = v->state_.get();
    if (!s || s->pinned || s->fd < 0 || v->cached_fds == 0) {
      drop_at(hand_);  // nothing of it to close (a pinned state replaced the cached one)
      continue;
    }
    // Sole holder: every other holder got it from state() under state_m, which we hold, so no
    // new holder can appear, and the count of one is the truth. An inode unlinked while the
    // kernel knows it keeps its descriptors (its object may have no name to come back by).
    if (v->referenced || v->state_.use_count() != 1 || v->removed.load()) {
      v->referenced = false;
      hand_++;
      continue;
    }
    std::atomic_thread_fence(std::memory_order_acquire);  // past readers' uses happen before
    auto* w = const_cast<RealState*>(s);
    // Handles are taken only now (a syscall per descriptor, under the cache's lock like the
    // closes): while a descriptor is open its object cannot be freed nor its inode number reused,
    // so inodes never evicted never need one. Sole holder under state_m: nobody reads the state
    // while it changes. Without a handle for every descriptor (another mount inside a layer) the
    // state keeps them all.
    if (!w->handled) prepare(*w);
    if (!w->handled) {
      drop_at(hand_);
      continue;
    }
    close(w->fd);
    w->fd = -1;
    for (auto& d : w->lowers) {
      if (d.fd >= 0) close(d.fd);
      d.fd = -1;
    }
    drop_at(hand_);
  }
}

bool OvFdCache::reclaim_fds() {
  std::lock_guard<std::mutex> g(m_);
  const size_t n = open_.load(std::memory_order_relaxed);
  if (n <= 16) return false;
  // An eighth at a time, as the passthrough's cache; the capacity stays that low for a while.
  const size_t target = sys::reclaim_target(n);
  capacity_.lower(target);
  sweep_locked(target, nullptr);
  return open_.load(std::memory_order_relaxed) < n;
}

void OvFdCache::remove(OvInode* in) {
  std::lock_guard<std::mutex> g(m_);
  if (in->ring_pos >= 0) unlink_at(static_cast<size_t>(in->ring_pos));
  open_.fetch_sub(in->cached_fds, std::memory_order_relaxed);
  in->cached_fds = 0;
}

OvInode::~OvInode() {
  if (cache) cache->remove(this);
}

void OvInode::set_state(std::shared_ptr<const RealState> s) {
  std::shared_ptr<const RealState> old;
  bool counted = false;
  {
    std::lock_guard<std::mutex> g(state_m);
    old = std::move(state_);
    state_ = std::move(s);
    if (cache) {
      size_t n = state_ && !state_->pinned && state_->fd >= 0 ? state_->nfds() : 0;
      cache->add(static_cast<int64_t>(n) - static_cast<int64_t>(cached_fds));
      cached_fds = n;
      counted = n > 0;
      referenced = true;
    }
  }
  if (counted) cache->insert(this);
  // old goes here, outside the lock (closing descriptors can be slow)
}

std::shared_ptr<const RealState> OvInode::reopen_state(std::unique_lock<std::mutex>& g) {
  // Evicted: the cache closed the descriptors while the inode was the only holder, and no one can
  // have got the state since (state() is the only way out, and it reopens first).
  auto* s = const_cast<RealState*>(state_.get());
  bool ok = cache->reopen(*s);
  while (!ok && (errno == EMFILE || errno == ENFILE)) {
    // Out of descriptors: the caches give some back, not under state_m (a sweep takes it), and
    // again while they have any when other threads took them first. The state may have been
    // replaced or reopened meanwhile.
    g.unlock();
    const bool freed = sys::reclaim_fds();
    g.lock();
    if (!state_ || state_->fd >= 0 || !state_->handled) return state_;
    s = const_cast<RealState*>(state_.get());
    if (!freed) {
      errno = EMFILE;
      break;
    }
    ok = cache->reopen(*s);
  }
  if (!ok) {
    // ESTALE: the object is gone (deleted behind the mount). Give this caller a state without
    // descriptors, and let the next lookup find what the name holds now. Any other failure (out
    // of descriptors or memory) says nothing about the object: the next state() tries again.
    if (errno == ESTALE || errno == ENOENT) stale = true;
    auto dead = std::make_shared<RealState>();
    dead->layer = s->layer;
    dead->real = s->real;
    dead->in_upper = s->in_upper;
    dead->lower_path = s->lower_path;
    return dead;
  }
  cached_fds = s->nfds();
  cache->add(static_cast<int64_t>(cached_fds));
  auto out = state_;
  g.unlock();
  cache->insert(this);
  return out;
}

bool OverlayFs::enable_handles(Error* err) {
  if (cfg_.file_handles == 2) return true;
  // Every layer's filesystem must export handles, and this process must be allowed to open them
  // (CAP_DAC_READ_SEARCH): probe each layer's root.
  std::vector<OvFdCache::Mount> mounts;
  int e = 0;
  std::string which;
  for (auto& l : layers_) {
    int mfd = openat(l.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    HandleBuf h;
    h.fh.handle_bytes = kMaxHandle;
    int mount_id = -1, probe = -1;
    if (mfd >= 0 && name_to_handle_at(l.fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) == 0)
      probe = open_by_handle_at(mfd, &h.fh, O_PATH | O_CLOEXEC);
    if (probe < 0) {
      e = errno ? errno : EOPNOTSUPP;
      which = l.path;
      if (mfd >= 0) close(mfd);
      break;
    }
    close(probe);
    l.mount_fd = mfd;
    l.mount_id = mount_id;
    mounts.push_back({mfd, mount_id});
  }
  if (e) {
    for (auto& l : layers_) {
      if (l.mount_fd >= 0) close(l.mount_fd);
      l.mount_fd = -1;
    }
    if (cfg_.file_handles == 1) {
      *err = {e, "file-handle mode is not available for layer " + which + ": " + strerror(e)};
      return false;
    }
    return true;
  }
  fh_cache_ = std::make_unique<OvFdCache>(
      std::move(mounts), cfg_.max_fds ? cfg_.max_fds : sys::default_fd_cache_capacity());
  return true;
}

}  // namespace fusekit
