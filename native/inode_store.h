// The inode store: every inode the kernel knows, keyed by its backing identity (st_dev, st_ino),
// each holding an O_PATH descriptor and the kernel's lookup count.
//
// Lookup vs forget is the classic race in FUSE daemons (libfuse's examples crashed under fsstress):
// here every change of a lookup count happens under the lock of the shard that owns the key, so a
// lookup either finds a live inode and raises its count, or the inode has already left the map and
// the lookup builds a new one. Node ids index a two-level slot table, so the hot path resolves an
// id with two loads and no lock; a slot's generation changes on reuse, so NFS-style handles to a
// freed inode are seen as stale.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "sys.h"

namespace fusekit {

struct InodeKey {
  uint64_t dev;
  uint64_t ino;
  bool operator==(const InodeKey& o) const { return dev == o.dev && ino == o.ino; }
};

struct InodeKeyHash {
  size_t operator()(const InodeKey& k) const {
    // splitmix-style mixing: inode numbers are dense, devices few.
    uint64_t x = k.ino * 0x9e3779b97f4a7c15ULL ^ (k.dev + 0x632be59bd9b4e019ULL);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    return static_cast<size_t>(x ^ (x >> 29));
  }
};

// POSIX locks of one lock owner live on a private open file description (OFD lock) per inode.
struct LockOwners {
  std::unordered_map<uint64_t, int> fds;
};

class InodeStore;

// A file handle as name_to_handle_at gives it: what identifies an object in file-handle mode.
struct ObjHandle {
  struct file_handle fh;
  unsigned char bytes[128];
};

struct Inode {
  virtual ~Inode();

  InodeKey key{};
  uint64_t nodeid = 0;
  uint64_t generation = 0;
  mode_t type = 0;  // S_IFMT bits
  // O_PATH descriptor (an O_TMPFILE's own descriptor for anonymous files). With a file handle it
  // is only a cached one: use PathFd, which opens it again when the cache let it go.
  int fd = -1;
  std::atomic<uint64_t> nlookup{0};

  // File-handle mode: the descriptor is only cached (cached), and the object's handle, taken
  // from the descriptor when the cache first lets it go: while the descriptor is open the inode
  // number cannot be reused, so nothing needs the handle before that.
  std::atomic<bool> cached{false};
  std::unique_ptr<unsigned char[]> handle;  // struct file_handle, guarded by fd_m
  std::mutex fd_m;
  uint32_t pins = 0;        // PathFds using fd right now
  bool referenced = false;  // used since the cache's clock hand last passed
  int64_t ring_pos = -1;    // position in the cache ring, -1 when not cached

  // Open state, guarded by m. The kernel allows one backing file per inode, shared by all its
  // passthrough opens, and refuses to mix passthrough with page-cache opens of the same inode.
  std::mutex m;
  uint32_t npassthrough = 0;
  uint32_t ncached = 0;
  uint32_t nwriters = 0;  // opens for writing through the mount
  // Writes through the mount show up in the watcher as changes by the writing process (passthrough
  // I/O and the backing file's close run in its context), often read after the close: the file as
  // the last writer through the mount left it, so a data event that finds it so is the mount's own.
  // Allocated at the first such close.
  struct WrittenState {
    off_t size;
    struct timespec mtime;
  };
  std::unique_ptr<WrittenState> own_write;
  int backing_id = 0;
  bool backing_writable = false;
  InodeKey backing_real{};  // the real file the backing file is (overlay: changes at copy-up)
  std::unique_ptr<LockOwners> locks;

  // One name of the inode in the mount (the last one it was looked up or moved under), for path
  // rules, events and overlay copy-up. Guarded by InodeStore::names_m; the parent carries a
  // lookup reference taken for this inode, dropped when it is freed.
  InodeStore* store = nullptr;
  Inode* parent = nullptr;
  std::string name;
};

class NodeTable {
 public:
  NodeTable();
  ~NodeTable();
  uint64_t alloc(Inode* in, uint64_t* generation);
  void set(uint64_t id, Inode* in);
  void release(uint64_t id);
  // Reads the key of a possibly-freed id under the table lock (the inode is freed only after its
  // slot is released, so it is alive while the lock is held).
  bool key_of(uint64_t id, InodeKey* key);
  Inode* get(uint64_t id) const {
    uint64_t c = id >> kChunkBits;
    if (c >= kMaxChunks) return nullptr;
    Slot* chunk = chunks_[c].load(std::memory_order_acquire);
    return chunk ? chunk[id & (kChunkSize - 1)].inode.load(std::memory_order_acquire) : nullptr;
  }

 private:
  static constexpr uint64_t kChunkBits = 16;
  static constexpr uint64_t kChunkSize = 1ULL << kChunkBits;
  static constexpr uint64_t kMaxChunks = 1ULL << 16;
  struct Slot {
    std::atomic<Inode*> inode{nullptr};
    uint64_t generation = 0;
  };
  Slot* slot(uint64_t id);

  std::unique_ptr<std::atomic<Slot*>[]> chunks_;
  std::mutex m_;
  uint64_t next_ = FUSE_ROOT_ID + 1;
  std::vector<uint64_t> free_;
};

class InodeStore final : public sys::FdReclaimer {
 public:
  InodeStore();
  ~InodeStore();

  // File-handle mode: inodes on filesystem `dev` keep a handle instead of a descriptor, and at
  // most `capacity` descriptors stay open (a clock cache), so a tree of millions of files needs a
  // bounded number of descriptors. mount_fd: a descriptor on that filesystem (not O_PATH).
  void enable_handles(int mount_fd, dev_t dev, size_t capacity);
  bool handles() const { return handles_; }
  size_t fd_capacity() const { return capacity_.get(); }
  // Out of descriptors: closes an eighth of the cached ones and keeps the capacity that low for
  // a while.
  bool reclaim_fds() override;
  size_t fds_open() const { return fds_open_.load(std::memory_order_relaxed); }
  uint64_t fd_reopens() const { return reopens_.load(std::memory_order_relaxed); }
  // Puts a new inode's descriptor in the cache when its filesystem is the handled one; its
  // handle is taken when the cache first closes the descriptor.
  void give_handle(Inode* in);
  // A usable descriptor of in's object, pinned until release(); -1 with errno on failure.
  int acquire(Inode* in);
  void release(Inode* in);
  // The inode is going away: forget its cache slot.
  void forget_fd(Inode* in);
  InodeStore(const InodeStore&) = delete;
  InodeStore& operator=(const InodeStore&) = delete;
  // The session is over and nothing runs on the store any more: frees every inode but the root
  // and closes every descriptor, the root's too (it is the source tree).
  void clear();

  // The root never leaves the store; it answers FUSE_ROOT_ID.
  void set_root(Inode* root);
  Inode* root() const { return root_; }

  // Resolves a node id the kernel holds a reference to.
  Inode* get(fuse_ino_t nodeid) const {
    return nodeid == FUSE_ROOT_ID ? root_ : nodes_.get(nodeid);
  }
  // Resolves a node id that may be stale (export handles); takes a lookup reference on success.
  Inode* ref_nodeid(fuse_ino_t nodeid);

  // Takes a lookup reference on a known inode; nullptr if the key is unknown.
  Inode* ref(const InodeKey& key);
  // Takes a lookup reference, building the inode with make() (called under the shard lock, so it
  // must not block) when the key is unknown. *created tells which happened.
  // hfd: a descriptor of the object at hand, to take its handle only if a known inode of the same
  // key needs the comparison (h not given). On std::bad_alloc the descriptor and the parent
  // reference the made inode held stay the caller's.
  Inode* ref_or_insert(const InodeKey& key, const std::function<Inode*()>& make, bool* created,
                       const ObjHandle* h = nullptr, int hfd = -1);

  // File-handle mode: an inode holds nothing that keeps the filesystem from reusing its inode
  // number once the object is deleted (behind the kernel's back, or before the kernel's forget
  // arrives), so (dev, ino) alone may find a stale inode for a new object. handle_of gives the
  // handle of dirfd/name ("" for dirfd itself; false outside handle mode); ref(key, h) and
  // ref_or_insert(..., h) retire a found inode whose handle differs (it stays valid by node id
  // until the kernel forgets it) and treat the key as unknown.
  bool handle_of(int dirfd, const char* name, ObjHandle* out) const;
  // Whether the key is known with a handle, the only case where ref and ref_or_insert compare
  // handles (a hint: another thread may add or drop the key right after).
  bool needs_handle(const InodeKey& key);
  // hfd (with h null): a descriptor of the object at hand, whose handle is taken only when a
  // known inode of the key has one to compare with.
  Inode* ref(const InodeKey& key, const ObjHandle* h, int hfd = -1);
  // Another lookup reference on an inode at hand (found by node id, or already referenced): not
  // by its key, which a retired inode no longer owns.
  void ref_inode(Inode* in);
  // Drops n lookup references; frees the inode (and closes its descriptor) at zero.
  void unref(Inode* in, uint64_t n);

  // Name hints (enabled by the passthrough): fingerprints of (directory, name) pairs that lately
  // led to a live inode, direct-mapped, dropped when the inode is freed or renamed. A lookup of
  // such a name most likely finds a known inode, which one stat confirms; any other name is
  // better opened at once. Only a hint: a stale or overwritten slot costs a syscall, never
  // correctness. name_known also gives the fingerprint for note_name.
  void enable_name_hints();
  bool name_known(const Inode* dir, const char* name, uint64_t* hint) const {
    *hint = name_hint(dir, name);
    return hints_ && hints_[*hint >> (64 - kHintBits)].load(std::memory_order_relaxed) == *hint;
  }
  void note_name(uint64_t hint) {
    if (hints_) hints_[hint >> (64 - kHintBits)].store(hint, std::memory_order_relaxed);
  }

  // Inode memory and count for stats.
  size_t size() const { return count_.load(std::memory_order_relaxed); }

  // Visits every live inode under its shard lock (for invalidation and teardown).
  void for_each(const std::function<void(Inode*)>& fn);

  // "/a/b" for an inode reachable from the root through recorded names; "" when not.
  std::string path_of(const Inode* in);
  // Records that `in` now lives at dir/name (takes a reference on dir, drops the old parent's).
  void set_name(Inode* in, Inode* dir, const char* name);

  std::mutex names_m;

 private:
  static constexpr size_t kShards = 64;
  struct Shard {
    std::mutex m;
    std::unordered_map<InodeKey, Inode*, InodeKeyHash> map;
    std::unordered_set<Inode*> retired;  // stale inodes the kernel still holds (see handle_of)
  };
  // Under the shard lock: false (and `in` retired) when h names another object than in.
  bool still_same(Shard& s, Inode* in, const ObjHandle* h, int hfd);
  static constexpr unsigned kHintBits = 14;
  static uint64_t name_hint(const Inode* dir, const char* name);
  // Drops dir/name's hint (a freed or renamed inode).
  void drop_name(const Inode* dir, const std::string& name);
  std::unique_ptr<std::atomic<uint64_t>[]> hints_;
  // Under cache_m_: takes in (ring_pos >= 0) out of the descriptor cache's ring.
  void ring_remove(Inode* in);
  // Takes in's handle from its open descriptor (under in->fd_m); false when it has none.
  static bool take_handle(Inode* in);
  Shard& shard(const InodeKey& k) { return shards_[InodeKeyHash()(k) % kShards]; }

  Shard shards_[kShards];
  NodeTable nodes_;
  Inode* root_ = nullptr;
  std::atomic<size_t> count_{0};

  void cache_insert(Inode* in);
  // Under cache_m_: the clock sweep, until fewer than `limit` descriptors are cached (or every
  // one left is in use).
  void sweep_locked(size_t limit);
  int mount_fd_ = -1;
  bool handles_ = false;  // stays set after clear(), for stats
  dev_t handle_dev_ = 0;
  sys::FdCapacity capacity_;  // under cache_m_
  std::mutex cache_m_;
  std::vector<Inode*> ring_;
  size_t hand_ = 0;
  std::atomic<size_t> fds_open_{0};
  std::atomic<uint64_t> reopens_{0};
  bool tearing_down_ = false;
};

// A descriptor of an inode's object for the duration of one operation.
class PathFd {
 public:
  PathFd(InodeStore& s, Inode* in)
      : s_(s), in_(in), fd_(s.acquire(in)), err_(fd_ < 0 ? errno : 0) {}
  ~PathFd() {
    if (fd_ >= 0) s_.release(in_);
  }
  PathFd(const PathFd&) = delete;
  PathFd& operator=(const PathFd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int error() const { return err_; }

 private:
  InodeStore& s_;
  Inode* in_;
  int fd_;
  int err_;
};

}  // namespace fusekit
