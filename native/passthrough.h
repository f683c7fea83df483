// Passthrough: mirrors a source directory. Every operation is relative to an inode's own O_PATH
// descriptor and never follows a symlink; nothing is resolved by path. The source is opened as a
// private detached clone of its mount tree (when privileged), so ".." from a directory that was
// moved out of the source fails instead of escaping, and mounts made later (including this FUSE
// mount itself, when the mount point lies inside the source) are invisible to the daemon.
#pragma once

#include <functional>
#include <memory>

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

class PassthroughFs : public Filesystem, public WatchClient {
 public:
  // Opens the source; on failure err says why and nothing is left open.
  static std::unique_ptr<PassthroughFs> create(const MountConfig& cfg, Error* err);
  ~PassthroughFs() override;

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
  size_t inode_memory() const override { return store_.size() * (sizeof(Inode) + 96); }
  std::string path_of(fuse_ino_t ino) override { return store_.path_of(store_.get(ino)); }
  WatchClient* watch_client() override { return this; }
  FdUse fd_use() const override {
    if (!store_.handles()) return {"descriptors", store_.size(), 0, 0};
    return {"handles", store_.fds_open(), store_.fd_capacity(), store_.fd_reopens()};
  }

  // WatchClient
  std::vector<int> watch_roots() override { return {store_.root()->fd}; }
  void changed(const InodeKey* dir, const char* name, const InodeKey* obj, bool data_only,
               Invalidations* out) override;
  void everything(Invalidations* out) override;
  int invalidations_for(const std::string& path, Invalidations* out) override;

 private:
  explicit PassthroughFs(const MountConfig& cfg) : cfg_(cfg) {}

  Inode* inode(fuse_ino_t ino) const { return store_.get(ino); }
  // Lookup of one name in dir; takes a lookup reference. confine: check that dir is still inside
  // the source (check_dir) before answering; callers that checked already pass false.
  int do_lookup(Inode* dir, const char* name, fuse_entry_param* e, bool confine = false);
  int lookup_dot(Inode* dir, const char* name, fuse_entry_param* e);
  // Takes a lookup reference on the inode of st's object, building it around fd (then the
  // inode's own descriptor) when the store does not know it; otherwise fd is closed. Named
  // dir/name (none when name is null). hfd: a descriptor of the object, for the handle comparison
  // with a known inode. nullptr when out of memory.
  Inode* insert(const struct stat& st, int fd, int hfd, Inode* dir, const char* name,
                bool* created);
  // Adopts an already-open descriptor of a new file as an inode (create, tmpfile).
  int adopt(int fd, bool keep_fd, Inode* dir, const char* name, fuse_entry_param* e);
  void fill_entry(Inode* in, const struct stat& st, fuse_entry_param* e) const;
  void map_attr(struct stat* st) const;
  // ENOENT once a directory has been moved out of the source (its ".." is unreachable).
  int check_dir(Inode* dir) const;
  // Creates a node as the caller (mk runs with the caller's fsuid/fsgid and umask), then looks it
  // up. mk returns 0 or -1 with errno set.
  int make_node(const Request& r, Inode* dir, const char* name, fuse_entry_param* e,
                const std::function<int(const CallerCreds&, int dirfd)>& mk);

  MountConfig cfg_;
  Session* session_ = nullptr;
  Stats* stats_ = nullptr;
  InodeStore store_;
  std::unique_ptr<InoMap> ino_map_;
  FileLocks locks_;
  OpenFiles files_;
  bool detached_ = false;     // the source is a private detached mount clone
  bool passthrough_ = false;  // negotiated at INIT
};

}  // namespace fusekit
