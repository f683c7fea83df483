#include "inode_store.h"

#include <unistd.h>

#include <new>

namespace fusekit {

Inode::~Inode() {
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
  // Everything goes: no inode may hand its parent reference back into the maps being cleared.
  for (auto& s : shards_)
    for (auto& [k, in] : s.map) in->parent = nullptr;
  for (auto& s : shards_) {
    for (auto& [k, in] : s.map) {
      if (in != root_) delete in;
    }
    s.map.clear();
  }
  delete root_;
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
                                 bool* created) {
  Shard& s = shard(key);
  std::lock_guard<std::mutex> g(s.m);
  auto it = s.map.find(key);
  if (it != s.map.end()) {
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
    in->fd = -1;  // the caller still owns the descriptor it passed in
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
    s.map.erase(in->key);
    nodes_.release(in->nodeid);
  }
  count_.fetch_sub(1, std::memory_order_relaxed);
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
  ref(dir->key);
  Inode* old;
  {
    std::lock_guard<std::mutex> g(names_m);
    old = in->parent;
    in->parent = dir;
    in->name = name;
  }
  if (old) unref(old, 1);
}

void InodeStore::for_each(const std::function<void(Inode*)>& fn) {
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> g(s.m);
    for (auto& [k, in] : s.map) fn(in);
  }
}

}  // namespace fusekit
