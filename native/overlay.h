// Overlay: one upper and N lower layers merged the way kernel overlayfs merges them, in the
// kernel's on-disk format, so layers move freely between fusekit, kernel overlayfs and podman.
//
//  - Lookup goes top-down; a directory present in several layers is merged; an opaque directory
//    (trusted.overlay.opaque "y") stops the merge; a whiteout (character device 0/0, or an xattr
//    whiteout in an "x" directory, or with ociWhiteouts an OCI ".wh.<name>" file) hides the name.
//  - Any change to a lower object first copies it up, atomically: it is built in the work dir
//    (O_TMPFILE where possible) with data (FICLONE, else sparse copy_file_range), owner, mode,
//    times and xattrs, gets trusted.overlay.origin, and is then linked/renamed into place.
//  - Inode numbers follow the origin, so a file keeps st_ino across copy-up and rename, also
//    across remounts. Lower hard links are copied up through work/index (like index=on), so all
//    names keep sharing one inode, and trusted.overlay.nlink keeps the merged link count.
//  - Renaming a directory that has lower parts records trusted.overlay.redirect.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.h"
#include "creds.h"
#include "filesystem.h"
#include "ino_map.h"
#include "inode_store.h"
#include "locks.h"
#include "open_files.h"
#include "session.h"
#include "watcher.h"

namespace fusekit {

struct Layer {
  std::string path;
  int fd = -1;  // O_PATH root (a private detached clone when privileged)
  dev_t dev = 0;
  // File-handle mode: a descriptor (not O_PATH) for open_by_handle_at, and the mount id
  // name_to_handle_at reports for objects of this layer's mount.
  int mount_fd = -1;
  int mount_id = -1;
  bool upper = false;
  uint8_t uuid[16]{};
  bool has_uuid = false;
};

// One layer's directory taking part in a merged directory.
struct RealDir {
  int layer = 0;
  int fd = -1;              // O_PATH, owned by the RealState
  bool xwhiteouts = false;  // trusted.overlay.opaque "x": may hold xattr whiteouts
  std::string handle;       // file-handle mode: the directory's struct file_handle
};

// What one merged object is made of. Immutable once published: copy-up and rename publish a new
// one, and readers keep the old one (and its descriptors) alive for as long as they use it.
//
// File-handle mode (OvFdCache): a published state also carries the file handle of every
// descriptor it holds. While its inode is the only holder (no reader has it), the cache may close
// its descriptors (they become -1), and OvInode::state() opens them again from the handles before
// anyone else gets the state: a state anyone but its inode holds always has its descriptors.
struct RealState {
  RealState() = default;
  RealState(const RealState&) = delete;
  RealState& operator=(const RealState&) = delete;
  ~RealState();

  int fd = -1;            // the topmost real object, O_PATH, owned
  int layer = 0;          // its layer (0 is the upper layer when there is one)
  InodeKey real{};        // its (st_dev, st_ino)
  bool in_upper = false;  // present in the upper namespace under its own name
  // Directories only:
  bool xwhiteouts = false;      // top directory may hold xattr whiteouts
  bool opaque = false;          // the top directory stops the merge
  bool impure = false;          // upper directory that holds copied-up entries
  std::vector<RealDir> lowers;  // directories merged below the top one, top first
  std::string lower_path;       // where the lower parts live, from the root ("/a/b")
  // File-handle mode: fd's handle; handled when every descriptor (fd and lowers) has one, so
  // the cache may close them (taken when the cache first evicts the state).
  std::string handle;
  bool handled = false;
  bool pinned = false;  // keeps its descriptors (an O_TMPFILE, which linkat names later)
  size_t nfds() const { return 1 + lowers.size(); }
};

class OvInode;

// File-handle mode's descriptor cache: a clock over the inodes whose current state holds open
// descriptors; at most `capacity` descriptors stay open (apart from states readers hold at that
// moment, pinned ones and those whose handles cannot be taken). Lock order: the cache's lock, then
// an inode's state_m; nothing takes the cache's lock while holding a state_m.
class OvFdCache final : public sys::FdReclaimer {
 public:
  struct Mount {
    int fd;  // for open_by_handle_at
    int mount_id;
  };
  OvFdCache(std::vector<Mount> mounts, size_t capacity);
  ~OvFdCache();
  size_t capacity() const { return capacity_.get(); }
  // Out of descriptors: closes an eighth of the cached ones and keeps the capacity that low for
  // a while.
  bool reclaim_fds() override;
  size_t open() const { return open_.load(std::memory_order_relaxed); }
  uint64_t reopens() const { return reopens_.load(std::memory_order_relaxed); }
  // Takes the handles of a state nobody else reads (sets handled when all are taken).
  void prepare(RealState& s) const;
  // Opens an evicted state's descriptors again from its handles; false (errno) when an object
  // is gone (ESTALE) or cannot be opened.
  bool reopen(RealState& s);
  void add(int64_t n) { open_.fetch_add(static_cast<size_t>(n), std::memory_order_relaxed); }
  // in's state holds counted descriptors: keep it in the ring, evicting others over capacity.
  void insert(OvInode* in);
  // in is going away.
  void remove(OvInode* in);

 private:
  bool take(int layer, int fd, std::string* out) const;
  int open_handle(int layer, const std::string& h) const;
  void unlink_at(size_t pos);
  // unlink_at, and its inode's descriptors no longer counted.
  void drop_at(size_t pos);
  // Under m_: the clock sweep, until at most `limit` descriptors are cached (or every state left
  // is in use); `keep` is never closed.
  void sweep_locked(size_t limit, const OvInode* keep);

  std::vector<Mount> mounts_;  // by layer index
  sys::FdCapacity capacity_;   // under m_
  std::mutex m_;
  std::vector<OvInode*> ring_;
  size_t hand_ = 0;
  std::atomic<size_t> open_{0};
  std::atomic<uint64_t> reopens_{0};
};

struct OvInode : Inode {
  ~OvInode() override;

  // The current state, its descriptors open (file-handle mode: reopened when the cache closed
  // them; an object that is gone gives a state with fd -1, and marks the inode stale).
  std::shared_ptr<const RealState> state() {
    std::unique_lock<std::mutex> g(state_m);
    if (!cache || !state_) return state_;
    referenced = true;
    if (state_->fd >= 0 || !state_->handled) return state_;
    return reopen_state(g);
  }
  // File-handle mode: whether the cache closed the current state's descriptors and s (not yet
  // published) is made of the same objects.
  bool evicted_as(const RealState& s) {
    if (!cache) return false;
    std::lock_guard<std::mutex> g(state_m);
    return state_ && state_->handled && state_->fd < 0 && state_->real == s.real &&
           state_->layer == s.layer && state_->in_upper == s.in_upper &&
           state_->lowers.size() == s.lowers.size();
  }
  // Publishes a new state (it must not be shared yet).
  void set_state(std::shared_ptr<const RealState> s);

  mutable std::mutex state_m;
  std::shared_ptr<const RealState> state_;
  OvFdCache* cache = nullptr;  // file-handle mode (never for the root)
  size_t cached_fds = 0;       // descriptors of state_ counted in the cache (under state_m)

  OvInode* ov_parent() const { return static_cast<OvInode*>(parent); }

  std::mutex copy_m;  // serialises copy-up of this object

  // Link counts the real object does not give directly.
  std::atomic<int64_t> dir_nlink{-1};  // merged directory: cached count, -1 when unknown
  std::atomic<bool> indexed{false};    // hard link copied up through work/index
  std::atomic<int> nlink_diff{0};      // indexed: merged nlink = real nlink + diff
  std::atomic<bool> removed{false};    // unlinked while still known to the kernel
  std::atomic<bool> impure{false};     // trusted.overlay.impure set on the upper directory
  std::atomic<bool> stale{false};      // a layer changed under it: the next lookup rebuilds it

 private:
  std::shared_ptr<const RealState> reopen_state(std::unique_lock<std::mutex>& g);
};

class OverlayFs : public Filesystem, public WatchClient {
 public:
  static std::unique_ptr<OverlayFs> create(const MountConfig& cfg, Error* err);
  ~OverlayFs() override;

  void init(Session* session, fuse_conn_info* conn) override;
  void destroy() override;
  void release() override;

  int lookup(Request& r, fuse_ino_t parent, const char* name, fuse_entry_param* e) override;
  void forget(fuse_ino_t ino, uint64_t nlookup) override;
  int getattr(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct stat* st,
              double* timeout) override;
  int setattr(Request& r, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi,
              struct stat* out, double* timeout) override;
  int readlink(Request& r, fuse_ino_t ino, std::string* target) override;
  int mknod(Request& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev,
            fuse_entry_param* e) override;
  int mkdir(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
            fuse_entry_param* e) override;
  int unlink(Request& r, fuse_ino_t parent, const char* name) override;
  int rmdir(Request& r, fuse_ino_t parent, const char* name) override;
  int symlink(Request& r, const char* link, fuse_ino_t parent, const char* name,
              fuse_entry_param* e) override;
  int rename(Request& r, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
             const char* newname, unsigned flags) override;
  int link(Request& r, fuse_ino_t ino, fuse_ino_t newparent, const char* newname,
           fuse_entry_param* e) override;
  int open(Request& r, fuse_ino_t ino, fuse_file_info* fi) override;
  int create(Request& r, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi,
             fuse_entry_param* e) override;
  int tmpfile(Request& r, fuse_ino_t parent, mode_t mode, fuse_file_info* fi,
              fuse_entry_param* e) override;
  void abandon_open(fuse_ino_t ino, fuse_file_info* fi) override;
  int read(Request& r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
           ReadReply* out) override;
  int write_buf(Request& r, fuse_ino_t ino, fuse_bufvec* in, off_t off, fuse_file_info* fi,
                size_t* written) override;
  int flush(Request& r, fuse_ino_t ino, fuse_file_info* fi) override;
  int release(Request& r, fuse_ino_t ino, fuse_file_info* fi) override;
  int fsync(Request& r, fuse_ino_t ino, int datasync, fuse_file_info* fi) override;
  int opendir(Request& r, fuse_ino_t ino, fuse_file_info* fi) override;
  int readdir(Request& r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus,
              DirFiller& out) override;
  int releasedir(Request& r, fuse_ino_t ino, fuse_file_info* fi) override;
  int fsyncdir(Request& r, fuse_ino_t ino, int datasync, fuse_file_info* fi) override;
  int statfs(Request& r, fuse_ino_t ino, struct statvfs* out) override;
  int setxattr(Request& r, fuse_ino_t ino, const char* name, const char* value, size_t size,
               int flags) override;
  int getxattr(Request& r, fuse_ino_t ino, const char* name, size_t size, std::string* value,
               size_t* len) override;
  int listxattr(Request& r, fuse_ino_t ino, size_t size, std::string* list, size_t* len) override;
  int removexattr(Request& r, fuse_ino_t ino, const char* name) override;
  int access(Request& r, fuse_ino_t ino, int mask) override;
  int getlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) override;
  int setlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock, int sleep) override;
  int flock(Request& r, fuse_ino_t ino, fuse_file_info* fi, int op) override;
  int fallocate(Request& r, fuse_ino_t ino, int mode, off_t offset, off_t length,
                fuse_file_info* fi) override;
  int copy_file_range(Request& r, fuse_ino_t ino_in, off_t off_in, fuse_file_info* fi_in,
                      fuse_ino_t ino_out, off_t off_out, fuse_file_info* fi_out, size_t len,
                      int flags, size_t* copied) override;
  int lseek(Request& r, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi,
            off_t* out) override;
  int statx(Request& r, fuse_ino_t ino, int flags, int mask, fuse_file_info* fi, struct statx* out,
            double* timeout) override;

  size_t inode_count() const override { return store_.size(); }
  // The object, its map entry and slot, a typical name (kernel-side descriptors not counted).
  size_t inode_memory() const override {
    // File-handle mode adds a handle per descriptor (about 32 bytes on the heap each).
    return store_.size() * (sizeof(OvInode) + sizeof(RealState) + 96 + (fh_cache_ ? 32 : 0));
  }
  std::string path_of(fuse_ino_t ino) override { return store_.path_of(store_.get(ino)); }
  WatchClient* watch_client() override { return this; }
  FdUse fd_use() const override {
    if (!fh_cache_) return {"descriptors", store_.size(), 0, 0};
    return {"handles", fh_cache_->open(), fh_cache_->capacity(), fh_cache_->reopens()};
  }

  // WatchClient: changes made to a layer behind the mount.
  std::vector<int> watch_roots() override;
  void changed(const InodeKey* dir, const char* name, const InodeKey* obj, bool data_only,
               Invalidations* out) override;
  void everything(Invalidations* out) override;
  int invalidations_for(const std::string& path, Invalidations* out) override;

  // --- used by the overlay's own translation units (copy-up, directories)
  // The merged lookup of one name under a directory.
  struct Found;
  int resolve(const RealState& dir, const char* name, Found* f);
  // Every visible entry of a merged directory (whiteouts and duplicates removed).
  struct Entry {
    std::string name;
    unsigned char type;  // DT_*
    uint64_t ino;        // as getattr reports it (with kListInos; else the real entry's)
  };
  enum : unsigned {
    kListFirst = 1,   // stop at the first visible entry (emptiness checks)
    kListInos = 2,    // copied-up entries show their origin's number (readdir)
    kListImpure = 4,  // the upper directory became impure after dir was read
  };
  int list_merged(const RealState& dir, std::vector<Entry>* out, unsigned flags = 0);

 private:
  explicit OverlayFs(const MountConfig& cfg) : cfg_(cfg) {}

  OvInode* inode(fuse_ino_t ino) const { return static_cast<OvInode*>(store_.get(ino)); }
  bool has_upper() const { return has_upper_; }
  int upper_layer() const { return 0; }

  int do_lookup(OvInode* dir, const char* name, fuse_entry_param* e, OvInode** out = nullptr);
  InodeKey key_for(const Found& f);
  // known: s's object's stat when the caller just took it (else fstat'ed).
  int fill_attr(OvInode* in, const RealState& s, struct stat* st,
                const struct stat* known = nullptr);
  int merged_dir_nlink(OvInode* in, const RealState& s);
  void dirs_changed(OvInode* dir) { dir->dir_nlink.store(-1); }

  // Copy-up (overlay_copyup.cc). data=false copies metadata only (open with O_TRUNC).
  int copy_up(OvInode* in, bool data = true);
  int copy_up_object(OvInode* in, OvInode* parent, const std::string& name, bool data);
  // Copy-up of `in` as the name dir/name: a lower hard link (one inode under several names) also
  // gets this name linked into the upper layer (overlay_ns.cc).
  int copy_up_alias(OvInode* in, OvInode* dir, const char* name);
  int copy_meta(int src_path_fd, int dst_fd, int dst_dirfd, const char* dst_name,
                const struct stat& st);
  int copy_data(int src, int dst, const struct stat& st);
  int set_origin(int src_path_fd, int layer, int dst_dirfd, const char* dst_name, int dst_fd);
  bool decode_origin(const std::string& fb, InodeKey* key, uint32_t* lower_nlink);
  std::string index_name(int lower_path_fd, int layer);
  void mark_impure(OvInode* dir);

  // Namespace helpers (overlay.cc).
  int name_in_lowers(const RealState& dir, const char* name, bool* exists);
  int create_object(const Request& r, OvInode* dir, const char* name, mode_t mode,
                    const std::function<int(const CallerCreds&, int dirfd, const char* name)>& mk,
                    bool is_dir);
  int whiteout_in_upper(int dirfd, const char* name, bool* is_whiteout);
  std::string temp_name();
  int remove_work_tree(const char* name);
  int set_nlink_diff(OvInode* in, int diff);
  OvInode* find_inode(const InodeKey& key);

  MountConfig cfg_;
  Session* session_ = nullptr;
  Stats* stats_ = nullptr;
  std::unique_ptr<OvFdCache> fh_cache_;  // file-handle mode (outlives the store's inodes)
  InodeStore store_;
  // Chooses file-handle mode (overlay_fh.cc); false with *err set when 'on' cannot have it.
  bool enable_handles(Error* err);
  std::unique_ptr<InoMap> ino_map_;
  FileLocks locks_;
  OpenFiles files_;

  std::vector<Layer> layers_;  // [0] = upper when has_upper_, then lowers top first
  bool has_upper_ = false;
  int work_fd_ = -1;   // the work dir itself (locked while mounted)
  int tmp_fd_ = -1;    // work/work: where copies are built
  int index_fd_ = -1;  // work/index: copied-up hard links
  bool passthrough_ = false;

  std::mutex ns_m_;  // serialises multi-step changes of the merged namespace
  // With a watcher: which merged inode each real object/directory belongs to.
  void note_reals(const InodeKey& key, const RealState& s);
  std::mutex realmap_m_;
  std::unordered_multimap<InodeKey, InodeKey, InodeKeyHash> realmap_;
  std::atomic<uint64_t> temp_counter_{0};
};

// The merged lookup result of one name.
struct OverlayFs::Found {
  Found() = default;
  Found(const Found&) = delete;
  Found& operator=(const Found&) = delete;
  ~Found();
  bool exists = false;
  struct stat st {};       // the topmost object's (mode from the index copy when from_index)
  struct stat real_st {};  // fd's own
  int layer = 0;
  int fd = -1;              // O_PATH to the topmost object (owned until adopted)
  bool from_index = false;  // a lower hard link whose copied-up data lives in work/index
  bool xwhiteouts = false, opaque = false, impure = false;
  std::string redirect;  // top directory's trusted.overlay.redirect
  std::string origin;    // top upper object's trusted.overlay.origin
  std::vector<RealDir> lowers;
  std::string lower_path;
  int nlink_diff = 0;  // from_index: from trusted.overlay.nlink
};

}  // namespace fusekit
