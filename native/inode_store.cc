#include "inode_store.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <new>

namespace fusekit {

Inode::~Inode() {
  if (cached.load(std::memory_order_relaxed) && store) store->forget_fd(this);
  if (fd >= 0) close(fd);
  if (locks) {
    for (auto& [owner, lfd] : locks->fds) close(lfd);
  }
  if (parent && store) store->unref(parent, 1);
}

NodeTable::NodeTable() : chunks_(new std::atomic<Slot*>[kMaxChunks]) {
  for (uint64_t i = 0; i < kMaxChunks; i++) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

NodeTable::~NodeTable() {
  for (uint64_t i = 0; i < kMaxChunks; i++) delete[] chunks_[i].load(std::memory_order_relaxed);
}

NodeTable::Slot* NodeTable::slot(uint64_t id) {
  uint64_t c = id >> kChunkBits;
  Slot* chunk = chunks_[c].load(std::memory_order_acquire);
  if (!chunk) {
    chunk = new Slot[kChunkSize];
    chunks_[c].store(chunk, std::memory_order_release);
  }
  return &chunk[id & (kChunkSize - 1)];
}

uint64_t NodeTable::alloc(Inode* in, uint64_t* generation) {
  std::lock_guard<std::mutex> g(m_);
  uint64_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    if ((next_ >> kChunkBits) >= kMaxChunks) throw std::bad_alloc();
    id = next_++;
  }
  Slot* s = slot(id);
  *generation = s->generation;
  s->inode.store(in, std::memory_order_release);
  return id;
}

void NodeTable::set(uint64_t id, Inode* in) {
  std::lock_guard<std::mutex> g(m_);
  slot(id)->inode.store(in, std::memory_order_release);
}

bool NodeTable::key_of(uint64_t id, InodeKey* key) {
  std::lock_guard<std::mutex> g(m_);
  Inode* in = get(id);
  if (!in) return false;
  *key = in->key;
  return true;
}

void NodeTable::release(uint64_t id) {
  std::lock_guard<std::mutex> g(m_);
  Slot* s = slot(id);
  s->inode.store(nullptr, std::memory_order_release);
  s->generation++;  // a reused id is a different file to the kernel
  free_.push_back(id);
}

InodeStore::InodeStore() = default;

InodeStore::~InodeStore() {
  clear();
  delete root_;
}

void InodeStore::clear() {
  sys::remove_reclaimer(this);  // before anything goes: a reclaim may be running on another mount
  tearing_down_ = true;
  // Everything but the root goes: no inode may hand its parent reference back into the maps
  // being cleared, and no node id may still resolve to a freed inode.
  for (auto& s : shards_) {
    for (auto& [k, in] : s.map) in->parent = nullptr;
    for (Inode* in : s.retired) in->parent = nullptr;
  }
  for (auto& s : shards_) {
    for (auto& [k, in] : s.map) {
      if (in == root_) continue;
      nodes_.release(in->nodeid);
      delete in;
    }
    s.map.clear();
    for (Inode* in : s.retired) {
      nodes_.release(in->nodeid);
      delete in;
    }
    s.retired.clear();
  }
  if (root_) {
    root_->nlookup = 0;
    if (root_->cached.load(std::memory_order_relaxed) && root_->ring_pos >= 0) root_->ring_pos = -1;
    if (root_->fd >= 0) close(root_->fd);
    root_->fd = -1;
  }
  if (mount_fd_ >= 0) close(mount_fd_);
  mount_fd_ = -1;
  ring_.clear();
  hand_ = 0;
  fds_open_ = 0;
  count_ = 0;
}

void InodeStore::enable_handles(int mount_fd, dev_t dev, size_t capacity) {
  mount_fd_ = mount_fd;
  handles_ = mount_fd >= 0;
  handle_dev_ = dev;
  capacity_.set(capacity < 16 ? 16 : capacity);
  ring_.reserve(capacity_.get());
  if (handles_) sys::add_reclaimer(this);
}

namespace {
constexpr unsigned kMaxHandle = sizeof ObjHandle::bytes;
}

void InodeStore::give_handle(Inode* in) {
  if (mount_fd_ < 0 || static_cast<dev_t>(in->key.dev) != handle_dev_ || in->fd < 0) return;
  in->cached.store(true, std::memory_order_release);
  fds_open_.fetch_add(1, std::memory_order_relaxed);
  cache_insert(in);
}

bool InodeStore::take_handle(Inode* in) {
  std::unique_ptr<unsigned char[]> buf(new unsigned char[sizeof(struct file_handle) + kMaxHandle]);
  auto* fh = reinterpret_cast<struct file_handle*>(buf.get());
  fh->handle_bytes = kMaxHandle;
  int mount_id;
  if (name_to_handle_at(in->fd, "", fh, &mount_id, AT_EMPTY_PATH) != 0) return false;
  in->handle = std::move(buf);
  return true;
}

int InodeStore::acquire(Inode* in) {
  if (!in->cached.load(std::memory_order_acquire)) return in->fd;
  for (;;) {
    {
      std::lock_guard<std::mutex> g(in->fd_m);
      if (in->fd >= 0) {
        in->pins++;
        in->referenced = true;
        return in->fd;
      }
      // Let go by the cache: open it again from its handle (on the source's private mount).
      int fd = open_by_handle_at(mount_fd_, reinterpret_cast<struct file_handle*>(in->handle.get()),
                                 O_PATH | O_CLOEXEC);
      if (fd >= 0) {
        in->fd = fd;
        in->pins = 1;
        in->referenced = true;
        break;
      }
      if (errno != EMFILE && errno != ENFILE) return -1;
    }
    // Out of descriptors: the caches give some back (not under fd_m, which a sweep takes), and
    // again while they have any when other threads took them first.
    if (!sys::reclaim_fds()) {
      errno = EMFILE;
      return -1;
    }
  }
  reopens_.fetch_add(1, std::memory_order_relaxed);
  fds_open_.fetch_add(1, std::memory_order_relaxed);
  cache_insert(in);
  return in->fd;
}

void InodeStore::release(Inode* in) {
  if (!in->cached.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> g(in->fd_m);
  in->pins--;
}

void InodeStore::cache_insert(Inode* in) {
  std::lock_guard<std::mutex> g(cache_m_);
  if (in->ring_pos >= 0) return;
  sweep_locked(capacity_.for_insert(ring_.size()));
  in->ring_pos = static_cast<int64_t>(ring_.size());
  ring_.push_back(in);
}

void InodeStore::sweep_locked(size_t limit) {
  // Clock sweep: close descriptors nobody uses now and nobody used since the last pass.
  size_t tries = ring_.size() * 2;
  while (ring_.size() >= limit && !ring_.empty() && tries-- > 0) {
    if (hand_ >= ring_.size()) hand_ = 0;
    Inode* v = ring_[hand_];
    std::lock_guard<std::mutex> vg(v->fd_m);
    if (v->pins == 0 && !v->referenced && v != root_) {
      if (v->handle || take_handle(v)) {
        close(v->fd);
        v->fd = -1;
      } else {
        // No handle to reopen it by: it keeps its descriptor, outside the cache.
        v->cached.store(false, std::memory_order_release);
      }
      fds_open_.fetch_sub(1, std::memory_order_relaxed);
      ring_remove(v);
    } else {
      v->referenced = false;
      hand_++;
    }
  }
}

bool InodeStore::reclaim_fds() {
  std::lock_guard<std::mutex> g(cache_m_);
  const size_t n = ring_.size();
  if (n <= 16) return false;
  // An eighth at a time: open files that need descriptors get them, and the cache stays useful.
  // The capacity stays lowered until no shortage came for a while (FdCapacity).
  const size_t target = sys::reclaim_target(n);
  capacity_.lower(target);
  sweep_locked(target + 1);
  return ring_.size() < n;
}

void InodeStore::ring_remove(Inode* in) {
  size_t pos = static_cast<size_t>(in->ring_pos);
  ring_[pos] = ring_.back();
  ring_[pos]->ring_pos = static_cast<int64_t>(pos);
  ring_.pop_back();
  // After the move: when in was the last entry, the line above pointed it at its old slot.
  in->ring_pos = -1;
}

void InodeStore::forget_fd(Inode* in) {
  if (tearing_down_) return;
  std::lock_guard<std::mutex> g(cache_m_);
  if (in->ring_pos >= 0) ring_remove(in);
  if (in->fd >= 0) fds_open_.fetch_sub(1, std::memory_order_relaxed);
}

void InodeStore::set_root(Inode* root) {
  root->nodeid = FUSE_ROOT_ID;
  root->generation = 0;
  root->nlookup.store(1, std::memory_order_relaxed);
  root_ = root;
  Shard& s = shard(root->key);
  std::lock_guard<std::mutex> g(s.m);
  s.map[root->key] = root;
  nodes_.set(FUSE_ROOT_ID, root);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Inode* InodeStore::ref(const InodeKey& key) {
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it == s.map.end()) return nullptr;
  it->second->nlookup.fetch_add(1, std::memory_order_relaxed);
  return it->second;
}

bool InodeStore::handle_of(int dirfd, const char* name, ObjHandle* out) const {
  if (mount_fd_ < 0) return false;
  out->fh.handle_bytes = sizeof out->bytes;
  int mount_id;
  return name_to_handle_at(dirfd, name, &out->fh, &mount_id, *name ? 0 : AT_EMPTY_PATH) == 0;
}

bool InodeStore::needs_handle(const InodeKey& key) {
  if (mount_fd_ < 0) return false;
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it == s.map.end()) return false;
  std::lock_guard<std::mutex> fg(it->second->fd_m);
  return it->second->handle != nullptr;
}

bool InodeStore::still_same(Shard& s, Inode* in, const ObjHandle* h, int hfd) {
  // While its descriptor is open an inode has no handle yet, and its inode number cannot have
  // been reused: it is the object.
  std::lock_guard<std::mutex> g(in->fd_m);
  if (!in->handle) return true;
  ObjHandle mine_now;
  if (!h && hfd >= 0) {
    mine_now.fh.handle_bytes = sizeof mine_now.bytes;
    int mount_id;
    if (name_to_handle_at(hfd, "", &mine_now.fh, &mount_id, AT_EMPTY_PATH) == 0) h = &mine_now;
  }
  if (!h) return true;
  auto* mine = reinterpret_cast<const struct file_handle*>(in->handle.get());
  if (mine->handle_type == h->fh.handle_type && mine->handle_bytes == h->fh.handle_bytes &&
      memcmp(mine->f_handle, h->fh.f_handle, mine->handle_bytes) == 0)
    return true;
  s.map.erase(in->key);
  s.retired.insert(in);
  return false;
}

Inode* InodeStore::ref(const InodeKey& key, const ObjHandle* h, int hfd) {
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it == s.map.end() || !still_same(s, it->second, h, hfd)) return nullptr;
  it->second->nlookup.fetch_add(1, std::memory_order_relaxed);
  return it->second;
}

void InodeStore::ref_inode(Inode* in) {
  if (in == root_) {
    root_->nlookup.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Shard& s = shard(in->key);
  std::lock_guard<std::mutex> g(s.m);
  in->nlookup.fetch_add(1, std::memory_order_relaxed);
}

Inode* InodeStore::ref_nodeid(fuse_ino_t nodeid) {
  if (nodeid == FUSE_ROOT_ID) {
    root_->nlookup.fetch_add(1, std::memory_order_relaxed);
    return root_;
  }
  // The id may be freed concurrently: read its key under the table lock, then find the inode
  // again under the shard lock, where frees happen.
  InodeKey key;
  if (!nodes_.key_of(nodeid, &key)) return nullptr;
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it == s.map.end() || it->second->nodeid != nodeid) return nullptr;
  it->second->nlookup.fetch_add(1, std::memory_order_relaxed);
  return it->second;
}

Inode* InodeStore::ref_or_insert(const InodeKey& key, const std::function<Inode*()>& make,
                                 bool* created, const ObjHandle* h, int hfd) {
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it != s.map.end() && still_same(s, it->second, h, hfd)) {
    it->second->nlookup.fetch_add(1, std::memory_order_relaxed);
    *created = false;
    return it->second;
  }
  Inode* in = make();
  in->key = key;
  in->nlookup.store(1, std::memory_order_relaxed);
  try {
    in->nodeid = nodes_.alloc(in, &in->generation);
    s.map.emplace(key, in);
  } catch (...) {
    if (in->nodeid) nodes_.release(in->nodeid);
    // The caller still owns the descriptor it passed in, and the parent reference it took.
    in->fd = -1;
    in->parent = nullptr;
    delete in;
    throw;
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  *created = true;
  return in;
}

void InodeStore::unref(Inode* in, uint64_t n) {
  if (in == root_) return;
  {
    Shard& s = shard(in->key);
    std::lock_guard<std::mutex> g(s.m);
    uint64_t cur = in->nlookup.load(std::memory_order_relaxed);
    uint64_t left = n >= cur ? 0 : cur - n;
    in->nlookup.store(left, std::memory_order_relaxed);
    if (left) return;
    auto it = s.map.find(in->key);
    if (it != s.map.end() && it->second == in)
      s.map.erase(it);
    else
      s.retired.erase(in);
    nodes_.release(in->nodeid);
  }
  count_.fetch_sub(1, std::memory_order_relaxed);
  if (hints_ && in->parent) drop_name(in->parent, in->name);  // nothing else reaches in now
  delete in;  // outside the lock: closing descriptors can be slow
}

std::string InodeStore::path_of(const Inode* in) {
  std::lock_guard<std::mutex> g(names_m);
  std::vector<const std::string*> parts;
  const Inode* p = in;
  while (p && p != root_) {
    if (!p->parent) return "";  // not reachable from the root by recorded names
    parts.push_back(&p->name);
    p = p->parent;
  }
  if (!p) return "";
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    out += '/';
    out += **it;
  }
  return out.empty() ? "/" : out;
}

void InodeStore::set_name(Inode* in, Inode* dir, const char* name) {
  if (in == root_) return;
  ref_inode(dir);
  Inode* old;
  {
    std::lock_guard<std::mutex> g(names_m);
    old = in->parent;
    if (hints_ && old) drop_name(old, in->name);
    in->parent = dir;
    in->name = name;
  }
  if (old) unref(old, 1);
}

void InodeStore::enable_name_hints() {
  hints_.reset(new std::atomic<uint64_t>[size_t{1} << kHintBits]());
}

uint64_t InodeStore::name_hint(const Inode* dir, const char* name) {
  // FNV-1a over the name, seeded with the directory's node id, and a final mix: the top bits
  // pick the slot.
  uint64_t h = 0xcbf29ce484222325ULL ^ (dir->nodeid * 0x9e3779b97f4a7c15ULL);
  for (const unsigned char* c = reinterpret_cast<const unsigned char*>(name); *c; c++)
    h = (h ^ *c) * 0x100000001b3ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h | 1;  // 0 marks an empty slot
}

void InodeStore::drop_name(const Inode* dir, const std::string& name) {
  uint64_t h = name_hint(dir, name.c_str());
  // Only if the slot still holds this name's fingerprint (a racing note of the same name loses
  // nothing but a syscall).
  hints_[h >> (64 - kHintBits)].compare_exchange_strong(h, 0, std::memory_order_relaxed);
}

void InodeStore::for_each(const std::function<void(Inode*)>& fn) {
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> g(s.m);
    for (auto& [k, in] : s.map) fn(in);
  }
}

}  // namespace fusekit
