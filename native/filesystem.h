// The one interface every fusekit filesystem implements. The session (session.cc) adapts libfuse's
// low-level API to it: it builds the Request, calls the operation, sends the reply and records
// statistics, so implementations only return an errno (0 = success) and fill their out-parameters.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusekit {

class Session;
class WatchClient;

// Who asked, as the kernel reported it.
struct Request {
  fuse_req_t req;
  uid_t uid;
  gid_t gid;
  pid_t pid;
  mode_t umask;
};

// Returned by an operation that replies on its own later (blocking locks).
constexpr int kAsyncReply = -1;

// Collects directory entries into the reply buffer.
class DirFiller {
 public:
  virtual ~DirFiller() = default;
  // Adds one entry; false when it does not fit (the entry is then not part of the reply).
  virtual bool add(const char* name, const struct stat& st, off_t next_off) = 0;
  // readdirplus: the entry carries a lookup reference when e.ino != 0.
  virtual bool add_plus(const char* name, const fuse_entry_param& e, off_t next_off) = 0;
};

// A read answered from a file descriptor (spliced by libfuse) or from memory.
struct ReadReply {
  int fd = -1;
  off_t pos = 0;
  size_t size = 0;
  std::vector<char> data;  // used when fd < 0
};

class Filesystem {
 public:
  virtual ~Filesystem() = default;

  // Negotiates capabilities; `session` stays valid until destroy().
  virtual void init(Session* session, fuse_conn_info* conn) = 0;
  virtual void destroy() = 0;
  // After the session ended (no request or helper thread runs any more): closes every descriptor
  // and frees every inode now, not when the JS handle is collected. Stats stay readable.
  virtual void release() = 0;

  virtual int lookup(Request& r, fuse_ino_t parent, const char* name, fuse_entry_param* e) = 0;
  virtual void forget(fuse_ino_t ino, uint64_t nlookup) = 0;
  virtual int getattr(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct stat* st,
                      double* timeout) = 0;
  virtual int setattr(Request& r, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi,
                      struct stat* out, double* timeout) = 0;
  virtual int readlink(Request& r, fuse_ino_t ino, std::string* target) = 0;
  virtual int mknod(Request& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev,
                    fuse_entry_param* e) = 0;
  virtual int mkdir(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                    fuse_entry_param* e) = 0;
  virtual int unlink(Request& r, fuse_ino_t parent, const char* name) = 0;
  virtual int rmdir(Request& r, fuse_ino_t parent, const char* name) = 0;
  virtual int symlink(Request& r, const char* link, fuse_ino_t parent, const char* name,
                      fuse_entry_param* e) = 0;
  virtual int rename(Request& r, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                     const char* newname, unsigned flags) = 0;
  virtual int link(Request& r, fuse_ino_t ino, fuse_ino_t newparent, const char* newname,
                   fuse_entry_param* e) = 0;
  virtual int open(Request& r, fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int create(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_file_info* fi, fuse_entry_param* e) = 0;
  virtual int tmpfile(Request& r, fuse_ino_t parent, mode_t mode, fuse_file_info* fi,
                      fuse_entry_param* e) = 0;
  // Called when the reply to open/create/tmpfile could not be delivered: undo the open.
  virtual void abandon_open(fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int read(Request& r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                   ReadReply* out) = 0;
  virtual int write_buf(Request& r, fuse_ino_t ino, fuse_bufvec* in, off_t off, fuse_file_info* fi,
                        size_t* written) = 0;
  virtual int flush(Request& r, fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int release(Request& r, fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int fsync(Request& r, fuse_ino_t ino, int datasync, fuse_file_info* fi) = 0;
  virtual int opendir(Request& r, fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int readdir(Request& r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                      bool plus, DirFiller& out) = 0;
  virtual int releasedir(Request& r, fuse_ino_t ino, fuse_file_info* fi) = 0;
  virtual int fsyncdir(Request& r, fuse_ino_t ino, int datasync, fuse_file_info* fi) = 0;
  virtual int statfs(Request& r, fuse_ino_t ino, struct statvfs* out) = 0;
  virtual int setxattr(Request& r, fuse_ino_t ino, const char* name, const char* value, size_t size,
                       int flags) = 0;
  // size == 0 asks for the needed size (returned in *len, value untouched).
  virtual int getxattr(Request& r, fuse_ino_t ino, const char* name, size_t size,
                       std::string* value, size_t* len) = 0;
  virtual int listxattr(Request& r, fuse_ino_t ino, size_t size, std::string* list,
                        size_t* len) = 0;
  virtual int removexattr(Request& r, fuse_ino_t ino, const char* name) = 0;
  virtual int access(Request& r, fuse_ino_t ino, int mask) = 0;
  virtual int getlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) = 0;
  virtual int setlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock,
                    int sleep) = 0;
  virtual int flock(Request& r, fuse_ino_t ino, fuse_file_info* fi, int op) = 0;
  virtual int fallocate(Request& r, fuse_ino_t ino, int mode, off_t offset, off_t length,
                        fuse_file_info* fi) = 0;
  virtual int copy_file_range(Request& r, fuse_ino_t ino_in, off_t off_in, fuse_file_info* fi_in,
                              fuse_ino_t ino_out, off_t off_out, fuse_file_info* fi_out, size_t len,
                              int flags, size_t* copied) = 0;
  virtual int lseek(Request& r, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi,
                    off_t* out) = 0;
  virtual int statx(Request& r, fuse_ino_t ino, int flags, int mask, fuse_file_info* fi,
                    struct statx* out, double* timeout) = 0;

  // Inodes currently known to the kernel, and an estimate of the memory they take (for stats).
  virtual size_t inode_count() const = 0;
  virtual size_t inode_memory() const = 0;
  // Descriptors held for inodes: mode ("handles" or "descriptors"), open now, cache capacity (0
  // when unbounded), reopens from handles.
  struct FdUse {
    const char* mode;
    size_t open, capacity;
    uint64_t reopens;
  };
  virtual FdUse fd_use() const = 0;
  // A path of the inode from the mount root ("/a/b"), "" if it has none (for rules and events).
  virtual std::string path_of(fuse_ino_t ino) = 0;
  // Cache coherence: how this filesystem maps changes of its backing files to the kernel's cache.
  virtual WatchClient* watch_client() = 0;
};

}  // namespace fusekit
