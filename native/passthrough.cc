#include "passthrough.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include "sys.h"

namespace fusekit {

namespace {

struct DirHandle {
  int fd = -1;
  std::mutex m;
  off_t offset = 0;  // directory position after the last entry handed out
  size_t pos = 0, len = 0;
  alignas(8) char buf[32768];
};

FileHandle* fh(fuse_file_info* fi) { return file_handle(fi); }
DirHandle* dh(fuse_file_info* fi) { return reinterpret_cast<DirHandle*>(fi->fh); }

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

bool is_dot_or_dotdot(const char* n) {
  return n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0));
}

// Written-to or truncated by a caller without CAP_FSETID (the kernel tells us so): drop setuid,
// and setgid when group-executable, as the VFS would. The daemon itself has CAP_FSETID, so the
// backing filesystem would not.
void kill_suidgid(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !(st.st_mode & (S_ISUID | S_ISGID))) return;
  mode_t m = st.st_mode & ~S_ISUID;
  if (st.st_mode & S_IXGRP) m &= ~S_ISGID;
  if (m != st.st_mode) fchmod(fd, m & 07777);
}

constexpr int kHandleFlagsDropped = O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW;

}  // namespace

std::unique_ptr<PassthroughFs> PassthroughFs::create(const MountConfig& cfg, Error* err) {
  std::unique_ptr<PassthroughFs> fs(new PassthroughFs(cfg));
  int probe = ::open(cfg.source.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (probe < 0) {
    int e = errno;
    const char* why = e == ENOENT    ? "does not exist"
                      : e == ENOTDIR ? "is not a directory"
                      : e == EACCES  ? "cannot be reached (permission denied)"
                                     : strerror(e);
    *err = {e, "source " + cfg.source + " " + why};
    return nullptr;
  }
  int fd = sys::open_private_tree(cfg.source.c_str());
  if (fd >= 0) {
    close(probe);
    fs->detached_ = true;
  } else {
    fd = probe;
    // Without a private clone the daemon would walk into its own mount and deadlock.
    char src[PATH_MAX], mp[PATH_MAX];
    if (realpath(cfg.source.c_str(), src) && realpath(cfg.mountpoint.c_str(), mp)) {
      size_t n = strlen(src);
      if (strncmp(src, mp, n) == 0 && (mp[n] == '/' || mp[n] == 0 || n == 1)) {
        close(fd);
        *err = {EINVAL, "mount point " + cfg.mountpoint + " lies inside the source " + cfg.source +
                            ", which needs CAP_SYS_ADMIN (a private clone of the source)"};
        return nullptr;
      }
    }
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    *err = {e, "cannot stat source " + cfg.source};
    return nullptr;
  }
  auto* root = new Inode;
  root->fd = fd;
  root->store = &fs->store_;
  root->type = S_IFDIR;
  root->key = {static_cast<uint64_t>(st.st_dev), st.st_ino};
  fs->store_.set_root(root);
  fs->store_.enable_name_hints();
  fs->ino_map_ = std::make_unique<InoMap>(st.st_dev);
  if (cfg.file_handles != 2) {
    // File-handle mode when the source's filesystem exports handles and this process may open
    // them (CAP_DAC_READ_SEARCH): then no descriptor per known inode is needed.
    int mfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct {
      struct file_handle fh;
      unsigned char buf[128];
    } h;
    h.fh.handle_bytes = sizeof h.buf;
    int mount_id, probe_fd = -1;
    if (mfd >= 0 && name_to_handle_at(fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) == 0)
      probe_fd = open_by_handle_at(mfd, &h.fh, O_PATH | O_CLOEXEC);
    if (probe_fd >= 0) {
      close(probe_fd);
      fs->store_.enable_handles(mfd, st.st_dev,
                                cfg.max_fds ? cfg.max_fds : sys::default_fd_cache_capacity());
    } else {
      int e = errno;
      if (mfd >= 0) close(mfd);
      if (cfg.file_handles == 1) {
        *err = {e ? e : EOPNOTSUPP, std::string("file-handle mode is not available for ") +
                                        cfg.source + ": " + strerror(e ? e : EOPNOTSUPP)};
        return nullptr;
      }
    }
  }
  return fs;
}

PassthroughFs::~PassthroughFs() = default;

void PassthroughFs::init(Session* session, fuse_conn_info* conn) {
  session_ = session;
  stats_ = &session->stats();
  passthrough_ = session->passthrough();
  files_.init(session, passthrough_, cfg_.attr_timeout);
  // NFS-style handles: lookups of "." and ".." by node id are answered (stale ids give ESTALE).
  fuse_set_feature_flag(conn, FUSE_CAP_EXPORT_SUPPORT);
  fuse_set_feature_flag(conn, FUSE_CAP_PARALLEL_DIROPS);
  fuse_set_feature_flag(conn, FUSE_CAP_HANDLE_KILLPRIV_V2);
  // The daemon applies the caller's umask itself, so default ACLs on the source win over it.
  fuse_set_feature_flag(conn, FUSE_CAP_DONT_MASK);
  fuse_set_feature_flag(conn, FUSE_CAP_POSIX_ACL);
  fuse_set_feature_flag(conn, FUSE_CAP_CACHE_SYMLINKS);
  fuse_set_feature_flag(conn, FUSE_CAP_DIRECT_IO_ALLOW_MMAP);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_READ);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_WRITE);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_MOVE);
  // The kernel turns passthrough off with a writeback cache; coherence with the source wants
  // write-through anyway.
  fuse_unset_feature_flag(conn, FUSE_CAP_WRITEBACK_CACHE);
  conn->max_write = 1 << 20;
  conn->time_gran = 1;
  conn->no_interrupt = 0;  // blocking lock waits are interruptible
}

void PassthroughFs::destroy() { locks_.shutdown(); }

void PassthroughFs::release() {
  files_.close_all();
  store_.clear();
}

void PassthroughFs::map_attr(struct stat* st) const {
  st->st_ino = ino_map_->map(st->st_dev, st->st_ino);
  cfg_.idmap.to_outside(st);
}

void PassthroughFs::fill_entry(Inode* in, const struct stat& st, fuse_entry_param* e) const {
  e->ino = in->nodeid;
  e->generation = in->generation;
  e->attr = st;
  map_attr(&e->attr);
  e->attr_timeout = cfg_.attr_timeout;
  e->entry_timeout = cfg_.entry_timeout;
}

int PassthroughFs::check_dir(Inode* dir) const {
  if (!detached_ || dir == store_.root()) return 0;
  PathFd d(const_cast<InodeStore&>(store_), dir);
  if (!d) return d.error();
  // Only the walk to ".." matters (ENOENT once dir is outside the clone); faccessat's F_OK skips
  // the getattr and copy-out of a stat, about a fifth of the call here.
  if (faccessat(d.get(), "..", F_OK, AT_EACCESS | AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT)
    return ENOENT;
  return 0;
}

Inode* PassthroughFs::insert(const struct stat& st, int fd, int hfd, Inode* dir, const char* name,
                             bool* created) {
  *created = false;
  if (name) store_.ref_inode(dir);  // the new inode's reference on its parent
  Inode* in = nullptr;
  try {
    in = store_.ref_or_insert(
        {static_cast<uint64_t>(st.st_dev), st.st_ino},
        [&] {
          auto* n = new Inode;
          n->fd = fd;
          n->type = st.st_mode & S_IFMT;
          n->store = &store_;
          if (name) {
            n->parent = dir;
            n->name = name;
          }
          return n;
        },
        created, nullptr, hfd);
  } catch (const std::bad_alloc&) {
  }
  if (!*created) {
    if (name) store_.unref(dir, 1);
    close(fd);
  }
  return in;
}

int PassthroughFs::do_lookup(Inode* dir, const char* name, fuse_entry_param* e, bool confine) {
  if (is_dot_or_dotdot(name)) return lookup_dot(dir, name, e);
  PathFd dfd(store_, dir);
  if (!dfd) return dfd.error();
  struct stat st;
  uint64_t hint;
  bool checked = false;  // dir is known to be inside the source
  if (store_.name_known(dir, name, &hint)) {
    // A name this mount has answered before (a revalidation, a listing again): most likely an
    // inode it still knows, which one stat confirms.
    if (confine) {
      if (int err = check_dir(dir)) return err;
      checked = true;
    }
    if (fstatat(dfd.get(), name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno;
    // File-handle mode: the handle tells whether a known (dev, ino) is still the same object.
    ObjHandle h;
    const InodeKey key{static_cast<uint64_t>(st.st_dev), st.st_ino};
    const bool known_h = store_.needs_handle(key) && store_.handle_of(dfd.get(), name, &h);
    if (Inode* in = store_.ref(key, known_h ? &h : nullptr)) {
      fill_entry(in, st, e);
      return 0;
    }
  }
  // Any other name (or one whose inode is gone): open it straight away, one path walk, and the
  // descriptor decides what the object is, instead of stat, open and stat again. Known inodes
  // met this way cost a close.
  int fd = sys::retry_fds([&] { return openat(dfd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC); });
  if (fd < 0) {
    int err = errno;
    // ENOENT is what a directory moved out of the source answers too; anything else might tell
    // about the outside, so it is given only while dir is still inside.
    if (confine && !checked && err != ENOENT) {
      if (int c = check_dir(dir)) return c;
    }
    return err;
  }
  int err = fstat(fd, &st) == 0 ? 0 : errno;
  if (!err && confine && !checked) err = check_dir(dir);
  if (err) {
    close(fd);
    return err;
  }
  bool created;
  Inode* in = insert(st, fd, fd, dir, name, &created);
  if (!in) return ENOMEM;
  if (created) {
    if (S_ISDIR(st.st_mode) && session_->watcher())
      session_->watcher()->track_dir(in->fd, in->key);  // inotify only
    store_.give_handle(in);                             // from now on the descriptor is only cached
  }
  store_.note_name(hint);
  fill_entry(in, st, e);
  return 0;
}

int PassthroughFs::lookup_dot(Inode* dir, const char* name, fuse_entry_param* e) {
  Inode* target = nullptr;
  if (name[1] == 0 || dir == store_.root()) {
    store_.ref_inode(dir);  // "." and ".." of the root are the directory itself
    target = dir;
  } else {
    // Export support: ".." of a directory. The private clone refuses to leave the source.
    PathFd d(store_, dir);
    if (!d) return d.error();
    int fd = sys::retry_fds(
        [&] { return openat(d.get(), "..", O_PATH | O_DIRECTORY | O_CLOEXEC); });
    if (fd < 0) return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
      int err = errno;
      close(fd);
      return err;
    }
    bool created;
    target = insert(st, fd, fd, nullptr, nullptr, &created);
    if (!target) return ENOMEM;
    if (created) store_.give_handle(target);
  }
  if (!target) return ESTALE;
  struct stat st;
  PathFd t(store_, target);
  if (!t || fstatat(t.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
    int err = errno;
    store_.unref(target, 1);
    return err;
  }
  fill_entry(target, st, e);
  return 0;
}

int PassthroughFs::lookup(Request&, fuse_ino_t parent, const char* name, fuse_entry_param* e) {
  Inode* dir;
  if (is_dot_or_dotdot(name)) {
    // Export lookups may name a node id the kernel no longer holds: validate it.
    dir = store_.ref_nodeid(parent);
    if (!dir) return ESTALE;
    int err = lookup_dot(dir, name, e);
    store_.unref(dir, 1);
    return err;
  }
  dir = inode(parent);
  return do_lookup(dir, name, e, true);
}

void PassthroughFs::forget(fuse_ino_t ino, uint64_t nlookup) {
  if (Inode* in = inode(ino)) store_.unref(in, nlookup);
}

int PassthroughFs::getattr(Request&, fuse_ino_t ino, fuse_file_info*, struct stat* st,
                           double* timeout) {
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  if (fstatat(f.get(), "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  map_attr(st);
  *timeout = cfg_.attr_timeout;
  return 0;
}

int PassthroughFs::setattr(Request&, fuse_ino_t ino, struct stat* attr, int to_set,
                           fuse_file_info* fi, struct stat* out, double* timeout) {
  Inode* in = inode(ino);
  if (cfg_.read_only) return EROFS;
  PathFd f(store_, in);
  if (!f) return f.error();
  const int ifd = f.get();
  FileHandle* h = fi ? fh(fi) : nullptr;
  // Owner first: chown clears setuid/setgid, an explicit mode in the same call sets them again.
  if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    uid_t uid = static_cast<uid_t>(-1);
    gid_t gid = static_cast<gid_t>(-1);
    if ((to_set & FUSE_SET_ATTR_UID) && !cfg_.idmap.uid_in(attr->st_uid, &uid)) return EINVAL;
    if ((to_set & FUSE_SET_ATTR_GID) && !cfg_.idmap.gid_in(attr->st_gid, &gid)) return EINVAL;
    if (fchownat(ifd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    int r = h ? fchmod(h->fd, attr->st_mode & 07777)
              : sys::fchmod_path(ifd, attr->st_mode & 07777, S_ISLNK(in->type));
    if (r != 0) return errno;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (!S_ISREG(in->type)) return S_ISDIR(in->type) ? EISDIR : EINVAL;
    int r = h ? ftruncate(h->fd, attr->st_size) : sys::truncate_fd(ifd, attr->st_size);
    if (r != 0) return errno;
  }
  if ((to_set & FUSE_SET_ATTR_KILL_SUID) && !(to_set & FUSE_SET_ATTR_MODE) && S_ISREG(in->type)) {
    int fd = h ? h->fd : sys::retry_fds([&] { return sys::reopen(ifd, O_RDONLY); });
    if (fd >= 0) {
      kill_suidgid(fd);
      if (!h) close(fd);
    }
  }
  if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    struct timespec tv[2];
    tv[0].tv_sec = tv[1].tv_sec = 0;
    tv[0].tv_nsec = tv[1].tv_nsec = UTIME_OMIT;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW)
      tv[0].tv_nsec = UTIME_NOW;
    else if (to_set & FUSE_SET_ATTR_ATIME)
      tv[0] = attr->st_atim;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
      tv[1].tv_nsec = UTIME_NOW;
    else if (to_set & FUSE_SET_ATTR_MTIME)
      tv[1] = attr->st_mtim;
    int r = h ? futimens(h->fd, tv) : utimensat(ifd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (r != 0) return errno;
  }
  if (fstatat(ifd, "", out, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  map_attr(out);
  *timeout = cfg_.attr_timeout;
  return 0;
}

int PassthroughFs::readlink(Request&, fuse_ino_t ino, std::string* target) {
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat(f.get(), "", buf, sizeof buf);
  if (n < 0) return errno;
  if (static_cast<size_t>(n) >= sizeof buf) return ENAMETOOLONG;
  target->assign(buf, static_cast<size_t>(n));
  return 0;
}

int PassthroughFs::make_node(const Request& r, Inode* dir, const char* name, fuse_entry_param* e,
                             const std::function<int(const CallerCreds&, int dirfd)>& mk) {
  if (cfg_.read_only) return EROFS;
  if (int err = check_dir(dir)) return err;
  uint32_t uid, gid;
  if (!cfg_.idmap.creator(r.uid, r.gid, &uid, &gid)) return EOVERFLOW;
  PathFd d(store_, dir);
  if (!d) return d.error();
  {
    CallerCreds creds(uid, gid, r.umask);
    if (creds.error()) return creds.error();
    if (mk(creds, d.get()) != 0) return errno;
  }
  return do_lookup(dir, name, e);
}

int PassthroughFs::mknod(Request& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev,
                         fuse_entry_param* e) {
  // Device nodes only where allowed; a 0/0 character device is an overlay whiteout, not a device.
  if ((S_ISCHR(mode) || S_ISBLK(mode)) && !cfg_.devices && !(S_ISCHR(mode) && rdev == 0))
    return EPERM;
  return make_node(r, inode(parent), name, e, [&](const CallerCreds& c, int dfd) {
    return mknodat(dfd, name, (mode & S_IFMT) | c.mask_mode(mode & 07777), rdev);
  });
}

int PassthroughFs::mkdir(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                         fuse_entry_param* e) {
  return make_node(r, inode(parent), name, e, [&](const CallerCreds& c, int dfd) {
    return mkdirat(dfd, name, c.mask_mode(mode & 07777));
  });
}

int PassthroughFs::symlink(Request& r, const char* link, fuse_ino_t parent, const char* name,
                           fuse_entry_param* e) {
  return make_node(r, inode(parent), name, e,
                   [&](const CallerCreds&, int dfd) { return symlinkat(link, dfd, name); });
}

int PassthroughFs::unlink(Request&, fuse_ino_t parent, const char* name) {
  if (cfg_.read_only) return EROFS;
  Inode* dir = inode(parent);
  if (int err = check_dir(dir)) return err;
  PathFd d(store_, dir);
  if (!d) return d.error();
  return unlinkat(d.get(), name, 0) == 0 ? 0 : errno;
}

int PassthroughFs::rmdir(Request&, fuse_ino_t parent, const char* name) {
  if (cfg_.read_only) return EROFS;
  Inode* dir = inode(parent);
  if (int err = check_dir(dir)) return err;
  PathFd d(store_, dir);
  if (!d) return d.error();
  return unlinkat(d.get(), name, AT_REMOVEDIR) == 0 ? 0 : errno;
}

int PassthroughFs::rename(Request&, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                          const char* newname, unsigned flags) {
  if (cfg_.read_only) return EROFS;
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) return EINVAL;
  Inode* d1 = inode(parent);
  Inode* d2 = inode(newparent);
  if (int err = check_dir(d1)) return err;
  if (int err = check_dir(d2)) return err;
  PathFd f1(store_, d1), f2(store_, d2);
  if (!f1 || !f2) return !f1 ? f1.error() : f2.error();
  if (syscall(SYS_renameat2, f1.get(), name, f2.get(), newname, flags) != 0) return errno;
  // Keep the recorded names (path rules, events) in step with the move.
  auto renamed = [&](Inode* dir, int dfd, const char* n) {
    struct stat st;
    if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    ObjHandle h;
    const InodeKey key{static_cast<uint64_t>(st.st_dev), st.st_ino};
    const bool known_h = store_.needs_handle(key) && store_.handle_of(dfd, n, &h);
    if (Inode* in = store_.ref(key, known_h ? &h : nullptr)) {
      store_.set_name(in, dir, n);
      store_.unref(in, 1);
    }
  };
  renamed(d2, f2.get(), newname);
  if (flags & RENAME_EXCHANGE) renamed(d1, f1.get(), name);
  return 0;
}

int PassthroughFs::link(Request&, fuse_ino_t ino, fuse_ino_t newparent, const char* newname,
                        fuse_entry_param* e) {
  if (cfg_.read_only) return EROFS;
  Inode* in = inode(ino);
  Inode* dir = inode(newparent);
  if (int err = check_dir(dir)) return err;
  PathFd f(store_, in), d(store_, dir);
  if (!f || !d) return !f ? f.error() : d.error();
  if (linkat(f.get(), "", d.get(), newname, AT_EMPTY_PATH) != 0) return errno;
  return do_lookup(dir, newname, e);
}

int PassthroughFs::open(Request& r, fuse_ino_t ino, fuse_file_info* fi) {
  Inode* in = inode(ino);
  int acc = fi->flags & O_ACCMODE;
  if (cfg_.read_only && (acc != O_RDONLY || (fi->flags & O_TRUNC))) return EROFS;
  int flags = fi->flags & ~kHandleFlagsDropped;
  PathFd f(store_, in);
  if (!f) return f.error();
  int fd = -1;
  if (acc == O_WRONLY) {
    // Read-write where possible, so the handle can become the inode's backing file.
    fd = sys::retry_fds([&] { return sys::reopen(f.get(), (flags & ~O_ACCMODE) | O_RDWR); });
  }
  if (fd < 0) fd = sys::retry_fds([&] { return sys::reopen(f.get(), flags); });
  if (fd < 0) return errno;
  if (fi->kill_suidgid && (flags & O_TRUNC)) kill_suidgid(fd);
  int err = files_.attach(in, f.get(), in->key, fd, flags, fi);
  if (err) close(fd);
  return err;
}

int PassthroughFs::adopt(int fd, bool keep_fd, Inode* dir, const char* name, fuse_entry_param* e) {
  struct stat st;
  if (fstat(fd, &st) != 0) return errno;
  InodeKey key{static_cast<uint64_t>(st.st_dev), st.st_ino};
  Inode* in = store_.ref(key, nullptr, fd);
  if (!in) {
    // The inode's own descriptor: O_PATH to the same file, or (O_TMPFILE) a duplicate, since an
    // anonymous file can only be linked in later through a real descriptor.
    int pfd = sys::retry_fds(
        [&] { return keep_fd ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : sys::reopen(fd, O_PATH); });
    if (pfd < 0) return errno;
    bool created;
    in = insert(st, pfd, fd, dir, name, &created);
    if (!in) return ENOMEM;
    if (created && !keep_fd) store_.give_handle(in);  // an O_TMPFILE keeps its descriptor
  }
  uint64_t hint;
  if (name && !store_.name_known(dir, name, &hint)) store_.note_name(hint);  // for revalidations
  fill_entry(in, st, e);
  return 0;
}

int PassthroughFs::create(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                          fuse_file_info* fi, fuse_entry_param* e) {
  if (cfg_.read_only) return EROFS;
  Inode* dir = inode(parent);
  if (int err = check_dir(dir)) return err;
  // O_NOFOLLOW: a symlink raced into place fails with ELOOP instead of being followed.
  int flags = (fi->flags | O_CREAT | O_NOFOLLOW) & ~O_NOCTTY;
  if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
  int fd;
  uint32_t cuid, cgid;
  if (!cfg_.idmap.creator(r.uid, r.gid, &cuid, &cgid)) return EOVERFLOW;
  PathFd d(store_, dir);
  if (!d) return d.error();
  {
    CallerCreds creds(cuid, cgid, r.umask);
    if (creds.error()) return creds.error();
    fd = sys::retry_fds(
        [&] { return openat(d.get(), name, flags | O_CLOEXEC, creds.mask_mode(mode & 07777)); });
    if (fd < 0 && errno == EACCES && (fi->flags & O_ACCMODE) == O_WRONLY) {
      flags = (flags & ~O_ACCMODE) | O_WRONLY;
      fd = sys::retry_fds(
          [&] { return openat(d.get(), name, flags | O_CLOEXEC, creds.mask_mode(mode & 07777)); });
    }
    if (fd < 0) return errno;
  }
  if (fi->kill_suidgid && (flags & O_TRUNC)) kill_suidgid(fd);
  int err = adopt(fd, false, dir, name, e);
  if (!err) {
    // The new descriptor itself can be reopened for a backing file.
    err = files_.attach(inode(e->ino), fd, inode(e->ino)->key, fd, flags & ~kHandleFlagsDropped, fi,
                        e->attr.st_mode);
    if (err) forget(e->ino, 1);
  }
  if (err) close(fd);
  return err;
}

int PassthroughFs::tmpfile(Request& r, fuse_ino_t parent, mode_t mode, fuse_file_info* fi,
                           fuse_entry_param* e) {
  if (cfg_.read_only) return EROFS;
  Inode* dir = inode(parent);
  if (int err = check_dir(dir)) return err;
  int flags = (fi->flags | O_TMPFILE) & ~(O_CREAT | O_NOFOLLOW | O_NOCTTY);
  int fd;
  uint32_t cuid, cgid;
  if (!cfg_.idmap.creator(r.uid, r.gid, &cuid, &cgid)) return EOVERFLOW;
  PathFd d(store_, dir);
  if (!d) return d.error();
  {
    CallerCreds creds(cuid, cgid, r.umask);
    if (creds.error()) return creds.error();
    fd = sys::retry_fds(
        [&] { return openat(d.get(), ".", flags | O_CLOEXEC, creds.mask_mode(mode & 07777)); });
    if (fd < 0) return errno;
  }
  int err = adopt(fd, true, dir, nullptr, e);
  if (!err) {
    err = files_.attach(inode(e->ino), fd, inode(e->ino)->key, fd,
                        flags & ~(kHandleFlagsDropped | O_TMPFILE), fi);
    if (err) forget(e->ino, 1);
  }
  if (err) close(fd);
  return err;
}

void PassthroughFs::abandon_open(fuse_ino_t ino, fuse_file_info* fi) {
  if (FileHandle* h = fh(fi)) files_.detach(inode(ino), h);
}

int PassthroughFs::read(Request&, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi,
                        ReadReply* out) {
  FileHandle* h = fh(fi);
  out->fd = h->fd;
  out->pos = off;
  out->size = size;
  struct stat st;
  if (fstat(h->fd, &st) == 0 && off < st.st_size) {
    uint64_t n = std::min<uint64_t>(size, static_cast<uint64_t>(st.st_size - off));
    stats_->bytes_read.fetch_add(n, std::memory_order_relaxed);
  }
  return 0;
}

int PassthroughFs::write_buf(Request&, fuse_ino_t, fuse_bufvec* in, off_t off, fuse_file_info* fi,
                             size_t* written) {
  if (cfg_.read_only) return EROFS;
  FileHandle* h = fh(fi);
  fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(in));
  dst.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  dst.buf[0].fd = h->fd;
  dst.buf[0].pos = off;
  ssize_t n = fuse_buf_copy(&dst, in, FUSE_BUF_SPLICE_NONBLOCK);
  if (n < 0) return static_cast<int>(-n);
  if (fi->kill_suidgid) kill_suidgid(h->fd);
  *written = static_cast<size_t>(n);
  stats_->bytes_written.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  return 0;
}

int PassthroughFs::flush(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  // Any close by a process releases its POSIX locks on the file.
  locks_.release_owner(inode(ino), fi->lock_owner);
  FileHandle* h = fh(fi);
  int d = sys::retry_fds([&] { return fcntl(h->fd, F_DUPFD_CLOEXEC, 0); });
  if (d < 0) return errno;
  return close(d) == 0 ? 0 : errno;
}

int PassthroughFs::release(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  files_.detach(inode(ino), fh(fi));
  return 0;
}

int PassthroughFs::fsync(Request&, fuse_ino_t, int datasync, fuse_file_info* fi) {
  int fd = fh(fi)->fd;
  return (datasync ? fdatasync(fd) : ::fsync(fd)) == 0 ? 0 : errno;
}

int PassthroughFs::opendir(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  Inode* in = inode(ino);
  if (int err = check_dir(in)) return err;
  PathFd f(store_, in);
  if (!f) return f.error();
  int fd = sys::retry_fds([&] { return openat(f.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  if (fd < 0) return errno;
  auto* d = new (std::nothrow) DirHandle;
  if (!d) {
    close(fd);
    return ENOMEM;
  }
  d->fd = fd;
  fi->fh = reinterpret_cast<uint64_t>(d);
  // Let the kernel keep the listing between opens: it drops it itself when the directory changes
  // through the mount or its mtime changes (attribute refresh, or a watcher's invalidation).
  fi->cache_readdir = fi->keep_cache = cfg_.attr_timeout > 0;
  return 0;
}

int PassthroughFs::readdir(Request&, fuse_ino_t ino, size_t, off_t off, fuse_file_info* fi,
                           bool plus, DirFiller& out) {
  Inode* dir = inode(ino);
  DirHandle* d = dh(fi);
  std::lock_guard<std::mutex> g(d->m);
  if (off != d->offset) {
    if (::lseek(d->fd, off, SEEK_SET) < 0) return errno;
    d->offset = off;
    d->pos = d->len = 0;
  }
  for (;;) {
    if (d->pos >= d->len) {
      long n = syscall(SYS_getdents64, d->fd, d->buf, sizeof d->buf);
      if (n < 0) return errno;
      if (n == 0) break;
      d->len = static_cast<size_t>(n);
      d->pos = 0;
    }
    auto* de = reinterpret_cast<linux_dirent64*>(d->buf + d->pos);
    bool added = true;
    if (!plus) {
      struct stat st {};
      st.st_ino = ino_map_->map(static_cast<dev_t>(dir->key.dev), de->d_ino);
      st.st_mode = DTTOIF(de->d_type);
      added = out.add(de->d_name, st, de->d_off);
    } else {
      // Dots, a denied entry (the kernel's own lookup is then refused) and one whose lookup
      // failed other than by being gone since getdents (the kernel's lookup then meets the error)
      // are listed without attributes, as plain readdir lists them; a gone one is skipped.
      fuse_entry_param e{};
      const bool bare = is_dot_or_dotdot(de->d_name) ||
                        (!session_->policy().empty() &&
                         session_->policy().denied(session_->path_for(ino, de->d_name)));
      int err = bare ? -1 : do_lookup(dir, de->d_name, &e);
      if (err == 0) {
        added = out.add_plus(de->d_name, e, de->d_off);
        if (!added) forget(e.ino, 1);
      } else if (err != ENOENT) {
        e = {};
        e.attr.st_ino = ino_map_->map(static_cast<dev_t>(dir->key.dev), de->d_ino);
        e.attr.st_mode = DTTOIF(de->d_type);
        added = out.add_plus(de->d_name, e, de->d_off);
      }
    }
    if (!added) break;
    d->pos += de->d_reclen;
    d->offset = de->d_off;
  }
  return 0;
}

int PassthroughFs::releasedir(Request&, fuse_ino_t, fuse_file_info* fi) {
  DirHandle* d = dh(fi);
  close(d->fd);
  delete d;
  return 0;
}

int PassthroughFs::fsyncdir(Request&, fuse_ino_t, int datasync, fuse_file_info* fi) {
  int fd = dh(fi)->fd;
  return (datasync ? fdatasync(fd) : ::fsync(fd)) == 0 ? 0 : errno;
}

int PassthroughFs::statfs(Request&, fuse_ino_t ino, struct statvfs* out) {
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  return fstatvfs(f.get(), out) == 0 ? 0 : errno;
}

int PassthroughFs::setxattr(Request&, fuse_ino_t ino, const char* name, const char* value,
                            size_t size, int flags) {
  if (cfg_.read_only) return EROFS;
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  if (IdMap::is_acl_xattr(name) && !cfg_.idmap.identity()) {
    std::string v(value, size);
    if (!cfg_.idmap.map_acl(v.data(), v.size(), false)) return EINVAL;
    return sys::setxattr_fd(f.get(), name, v.data(), size, flags) == 0 ? 0 : errno;
  }
  return sys::setxattr_fd(f.get(), name, value, size, flags) == 0 ? 0 : errno;
}

int PassthroughFs::getxattr(Request&, fuse_ino_t ino, const char* name, size_t size,
                            std::string* value, size_t* len) {
  value->resize(size);
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  ssize_t n = sys::getxattr_fd(f.get(), name, size ? value->data() : nullptr, size);
  if (n < 0) return errno;
  *len = static_cast<size_t>(n);
  if (size && IdMap::is_acl_xattr(name)) cfg_.idmap.map_acl(value->data(), *len, true);
  return 0;
}

int PassthroughFs::listxattr(Request&, fuse_ino_t ino, size_t size, std::string* list,
                             size_t* len) {
  list->resize(size);
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  ssize_t n = sys::listxattr_fd(f.get(), size ? list->data() : nullptr, size);
  if (n < 0) return errno;
  *len = static_cast<size_t>(n);
  return 0;
}

int PassthroughFs::removexattr(Request&, fuse_ino_t ino, const char* name) {
  if (cfg_.read_only) return EROFS;
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  return sys::removexattr_fd(f.get(), name) == 0 ? 0 : errno;
}

int PassthroughFs::access(Request& r, fuse_ino_t ino, int mask) {
  struct stat st;
  PathFd f(store_, inode(ino));
  if (!f) return f.error();
  if (fstatat(f.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  if (mask == F_OK) return 0;
  if ((mask & W_OK) && cfg_.read_only) return EROFS;
  if (r.uid == 0) {
    // root may do anything but execute a file nobody may execute
    return (mask & X_OK) && !S_ISDIR(st.st_mode) && !(st.st_mode & 0111) ? EACCES : 0;
  }
  mode_t bits = st.st_uid == r.uid   ? (st.st_mode >> 6)
                : st.st_gid == r.gid ? (st.st_mode >> 3)
                                     : st.st_mode;
  if (((mask & R_OK) && !(bits & 4)) || ((mask & W_OK) && !(bits & 2)) ||
      ((mask & X_OK) && !(bits & 1)))
    return EACCES;
  return 0;
}

int PassthroughFs::getlk(Request&, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  Inode* in = inode(ino);
  PathFd f(store_, in);
  if (!f) return f.error();
  return locks_.getlk(in, f.get(), fi->lock_owner, lock);
}

int PassthroughFs::setlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock,
                         int sleep) {
  Inode* in = inode(ino);
  PathFd f(store_, in);
  if (!f) return f.error();
  return locks_.setlk(r.req, in, f.get(), fi->lock_owner, lock, sleep != 0);
}

int PassthroughFs::flock(Request& r, fuse_ino_t, fuse_file_info* fi, int op) {
  return locks_.flock(r.req, fh(fi)->fd, op);
}

int PassthroughFs::fallocate(Request&, fuse_ino_t, int mode, off_t offset, off_t length,
                             fuse_file_info* fi) {
  if (cfg_.read_only) return EROFS;
  return ::fallocate(fh(fi)->fd, mode, offset, length) == 0 ? 0 : errno;
}

int PassthroughFs::copy_file_range(Request&, fuse_ino_t, off_t off_in, fuse_file_info* fi_in,
                                   fuse_ino_t, off_t off_out, fuse_file_info* fi_out, size_t len,
                                   int flags, size_t* copied) {
  if (cfg_.read_only) return EROFS;
  loff_t in_off = off_in, out_off = off_out;
  ssize_t n = ::copy_file_range(fh(fi_in)->fd, &in_off, fh(fi_out)->fd, &out_off, len,
                                static_cast<unsigned>(flags));
  if (n < 0) return errno;
  *copied = static_cast<size_t>(n);
  return 0;
}

int PassthroughFs::lseek(Request&, fuse_ino_t, off_t off, int whence, fuse_file_info* fi,
                         off_t* out) {
  off_t r = ::lseek(fh(fi)->fd, off, whence);
  if (r < 0) return errno;
  *out = r;
  return 0;
}

int PassthroughFs::statx(Request&, fuse_ino_t ino, int flags, int mask, fuse_file_info*,
                         struct statx* out, double* timeout) {
  Inode* in = inode(ino);
  int sync = flags & AT_STATX_SYNC_TYPE;
  PathFd f(store_, in);
  if (!f) return f.error();
  if (::statx(f.get(), "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | sync, static_cast<unsigned>(mask),
              out) != 0)
    return errno;
  out->stx_ino = ino_map_->map(makedev(out->stx_dev_major, out->stx_dev_minor), out->stx_ino);
  cfg_.idmap.to_outside(out);
  *timeout = cfg_.attr_timeout;
  return 0;
}

// ---- cache coherence

void PassthroughFs::changed(const InodeKey* dir, const char* name, const InodeKey* obj,
                            bool data_only, Invalidations* out) {
  // A write to a file being written through the mount is (most likely) the mount's own: the
  // kernel updated its cache as it went.
  auto file_changed = [&](Inode* o) {
    auto stat_now = [&](struct stat* st) {
      PathFd f(store_, o);
      return f && fstat(f.get(), st) == 0;
    };
    if (!(data_only && written_through_mount(o, stat_now))) out->inodes.push_back(o->nodeid);
  };
  if (dir) {
    if (Inode* d = store_.ref(*dir)) {
      if (name && !data_only) {
        out->entries.emplace_back(d->nodeid, name);
        // The directory's own attributes (mtime, nlink) changed too; the kernel drops them with a
        // cached entry of the name, but a name it never looked up has none to drop.
        out->inodes.push_back(d->nodeid);
      }
      struct stat st;
      // inotify does not say which object changed: find it by name.
      PathFd dfd(store_, d);
      if (name && !obj && dfd && fstatat(dfd.get(), name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (Inode* o = store_.ref({static_cast<uint64_t>(st.st_dev), st.st_ino})) {
          file_changed(o);
          store_.unref(o, 1);
        }
      } else if (!name) {
        out->inodes.push_back(d->nodeid);
      }
      store_.unref(d, 1);
    }
  }
  if (obj) {
    if (Inode* o = store_.ref(*obj)) {
      file_changed(o);
      store_.unref(o, 1);
    }
  }
}

void PassthroughFs::everything(Invalidations* out) {
  store_.for_each([&](Inode* in) { out->inodes.push_back(in->nodeid); });
}

int PassthroughFs::invalidations_for(const std::string& path, Invalidations* out) {
  std::vector<std::string> comps;
  for (size_t p = 0; p < path.size();) {
    size_t e = path.find('/', p);
    if (e == std::string::npos) e = path.size();
    if (e > p) comps.push_back(path.substr(p, e - p));
    p = e + 1;
  }
  if (comps.empty()) {
    everything(out);
    return 0;
  }
  // Walk the source the way lookups do: one name at a time, never following a symlink.
  int cur = sys::retry_fds([&] { return fcntl(store_.root()->fd, F_DUPFD_CLOEXEC, 0); });
  struct stat st;
  fstat(cur, &st);
  for (size_t i = 0; i < comps.size(); i++) {
    if (comps[i] == "." || comps[i] == "..") {
      close(cur);
      return EINVAL;
    }
    InodeKey dir_key{static_cast<uint64_t>(st.st_dev), st.st_ino};
    int next = sys::retry_fds(
        [&] { return openat(cur, comps[i].c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC); });
    if (i + 1 == comps.size()) {
      // The last name: forget the entry even if the source lost it, and the object if any.
      if (Inode* d = store_.ref(dir_key)) {
        out->entries.emplace_back(d->nodeid, comps[i]);
        store_.unref(d, 1);
      }
      if (next >= 0 && fstat(next, &st) == 0) {
        if (Inode* o = store_.ref({static_cast<uint64_t>(st.st_dev), st.st_ino})) {
          out->inodes.push_back(o->nodeid);
          store_.unref(o, 1);
        }
      }
    }
    close(cur);
    if (next < 0) return i + 1 == comps.size() ? 0 : ENOENT;
    cur = next;
    fstat(cur, &st);
  }
  close(cur);
  return 0;
}

}  // namespace fusekit
