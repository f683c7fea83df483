// Changes of the merged namespace. Each is a short sequence of atomic steps on the upper layer
// (renameat2 with RENAME_WHITEOUT/RENAME_EXCHANGE, objects built in the work dir and swapped in),
// serialised by ns_m_, so a concurrent lookup sees either the old or the new name, never a gap.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>

#include "creds.h"
#include "overlay.h"
#include "overlay_xattr.h"
#include "sys.h"

namespace fusekit {

namespace {

int renameat2(int d1, const char* n1, int d2, const char* n2, unsigned flags) {
  return static_cast<int>(syscall(SYS_renameat2, d1, n1, d2, n2, flags));
}

bool has_lower_parts(const RealState& s) { return !s.in_upper || !s.lowers.empty(); }

// With OCI whiteouts, ".wh.*" names are whiteout markers: creating one would hide a lower entry
// and then not show itself (fuse-overlayfs refuses them the same way).
bool oci_reserved(const OverlayConfig& c, const char* name) {
  return c.oci_whiteouts && strncmp(name, ".wh.", 4) == 0;
}

}  // namespace

int OverlayFs::whiteout_in_upper(int dirfd, const char* name, bool* is_whiteout) {
  struct stat st;
  *is_whiteout = false;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno;
  *is_whiteout = S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0);
  return 0;
}

int OverlayFs::name_in_lowers(const RealState& dir, const char* name, bool* exists) {
  *exists = false;
  if (dir.opaque) return 0;
  for (auto& d : dir.lowers) {
    struct stat st;
    if (fstatat(d.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      *exists = !is_whiteout(st, d.fd, name, d.xwhiteouts);
      return 0;
    }
    if (errno != ENOENT) return errno;
    if (cfg_.overlay.oci_whiteouts && oci_whiteout(d.fd, name)) return 0;
  }
  return 0;
}

int OverlayFs::remove_work_tree(const char* name) {
  int fd = sys::retry_fds(
      [&] { return openat(tmp_fd_, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); });
  if (fd >= 0) {
    sys::remove_contents(fd);
    close(fd);
    return unlinkat(tmp_fd_, name, AT_REMOVEDIR) == 0 ? 0 : errno;
  }
  return unlinkat(tmp_fd_, name, 0) == 0 ? 0 : errno;
}

int OverlayFs::create_object(
    const Request& r, OvInode* dir, const char* name, mode_t,
    const std::function<int(const CallerCreds&, int dirfd, const char* name)>& mk, bool is_dir) {
  if (!has_upper_) return EROFS;
  if (oci_reserved(cfg_.overlay, name)) return EINVAL;
  if (int err = copy_up(dir)) return err;
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  uint32_t uid, gid;
  if (!cfg_.idmap.creator(r.uid, r.gid, &uid, &gid)) return EOVERFLOW;
  int r1;
  {
    CallerCreds c(uid, gid, r.umask);
    if (c.error()) return c.error();
    r1 = mk(c, ds->fd, name);
  }
  if (r1 == 0) {
    if (is_dir) dirs_changed(dir);
    return 0;
  }
  if (errno != EEXIST) return errno;
  bool wh = false;
  whiteout_in_upper(ds->fd, name, &wh);
  if (!wh) return EEXIST;
  // Over a whiteout: build the object in the work dir, then swap it in atomically.
  const std::string tmp = temp_name();
  {
    CallerCreds c(uid, gid, r.umask);
    if (c.error()) return c.error();
    if (mk(c, tmp_fd_, tmp.c_str()) != 0) return errno;
  }
  struct stat pst;
  if (fstatat(ds->fd, "", &pst, AT_EMPTY_PATH) == 0 && (pst.st_mode & S_ISGID)) {
    // The work dir is not setgid: give the object what the parent would have given it.
    fchownat(tmp_fd_, tmp.c_str(), static_cast<uid_t>(-1), pst.st_gid, AT_SYMLINK_NOFOLLOW);
    struct stat tst;
    if (is_dir && fstatat(tmp_fd_, tmp.c_str(), &tst, AT_SYMLINK_NOFOLLOW) == 0)
      fchmodat(tmp_fd_, tmp.c_str(), (tst.st_mode & 07777) | S_ISGID, 0);
  }
  int err = 0;
  if (is_dir) {
    // What the whiteout hid must stay hidden: the new directory is opaque.
    int dfd = sys::retry_fds([&] {
      return openat(tmp_fd_, tmp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    });
    err = dfd < 0 ? errno : set_xattr_string(dfd, kOvlOpaque, "y");
    if (dfd >= 0) close(dfd);
    if (!err && renameat2(tmp_fd_, tmp.c_str(), ds->fd, name, RENAME_EXCHANGE) != 0) err = errno;
    if (!err)
      unlinkat(tmp_fd_, tmp.c_str(), 0);  // the whiteout, now in the work dir
    else
      unlinkat(tmp_fd_, tmp.c_str(), AT_REMOVEDIR);
    dirs_changed(dir);
  } else if (renameat2(tmp_fd_, tmp.c_str(), ds->fd, name, 0) != 0) {
    err = errno;
    unlinkat(tmp_fd_, tmp.c_str(), 0);
  }
  return err;
}

int OverlayFs::mknod(Request& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev,
                     fuse_entry_param* e) {
  if ((S_ISCHR(mode) || S_ISBLK(mode)) && !cfg_.devices) return EPERM;
  OvInode* dir = inode(parent);
  std::lock_guard<std::mutex> g(ns_m_);
  int err = create_object(
      r, dir, name, mode,
      [&](const CallerCreds& c, int dfd, const char* n) {
        return mknodat(dfd, n, (mode & S_IFMT) | c.mask_mode(mode & 07777), rdev);
      },
      false);
  return err ? err : do_lookup(dir, name, e);
}

int OverlayFs::mkdir(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_entry_param* e) {
  OvInode* dir = inode(parent);
  std::lock_guard<std::mutex> g(ns_m_);
  int err = create_object(
      r, dir, name, mode,
      [&](const CallerCreds& c, int dfd, const char* n) {
        return mkdirat(dfd, n, c.mask_mode(mode & 07777));
      },
      true);
  return err ? err : do_lookup(dir, name, e);
}

int OverlayFs::symlink(Request& r, const char* link, fuse_ino_t parent, const char* name,
                       fuse_entry_param* e) {
  OvInode* dir = inode(parent);
  std::lock_guard<std::mutex> g(ns_m_);
  int err = create_object(
      r, dir, name, 0,
      [&](const CallerCreds&, int dfd, const char* n) { return symlinkat(link, dfd, n); }, false);
  return err ? err : do_lookup(dir, name, e);
}

int OverlayFs::create(Request& r, fuse_ino_t parent, const char* name, mode_t mode,
                      fuse_file_info* fi, fuse_entry_param* e) {
  OvInode* dir = inode(parent);
  int flags = (fi->flags | O_CREAT | O_NOFOLLOW) & ~O_NOCTTY;
  if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
  int fd = -1;
  {
    std::lock_guard<std::mutex> g(ns_m_);
    int err = create_object(
        r, dir, name, mode,
        [&](const CallerCreds& c, int dfd, const char* n) {
          fd = sys::retry_fds([&] {
            return openat(dfd, n, flags | O_EXCL | O_CLOEXEC, c.mask_mode(mode & 07777));
          });
          return fd < 0 ? -1 : 0;
        },
        false);
    if (err == EEXIST && !(fi->flags & O_EXCL)) {
      // An existing upper file (created behind the kernel's back): open it.
      auto ds = dir->state();
      if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
      fd = sys::retry_fds([&] { return openat(ds->fd, name, (flags & ~O_CREAT) | O_CLOEXEC); });
      err = fd < 0 ? errno : 0;
    }
    if (err) return err;
    if (int lerr = do_lookup(dir, name, e)) {
      close(fd);
      return lerr;
    }
  }
  OvInode* in = inode(e->ino);
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  int err = files_.attach(in, s->fd, s->real, fd, flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW), fi);
  if (err) {
    close(fd);
    forget(e->ino, 1);
  }
  return err;
}

int OverlayFs::tmpfile(Request& r, fuse_ino_t parent, mode_t mode, fuse_file_info* fi,
                       fuse_entry_param* e) {
  if (!has_upper_) return EROFS;
  OvInode* dir = inode(parent);
  if (int err = copy_up(dir)) return err;
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  int flags = (fi->flags | O_TMPFILE) & ~(O_CREAT | O_NOFOLLOW | O_NOCTTY);
  int fd;
  uint32_t uid, gid;
  if (!cfg_.idmap.creator(r.uid, r.gid, &uid, &gid)) return EOVERFLOW;
  {
    CallerCreds c(uid, gid, r.umask);
    if (c.error()) return c.error();
    fd = sys::retry_fds(
        [&] { return openat(ds->fd, ".", flags | O_CLOEXEC, c.mask_mode(mode & 07777)); });
    if (fd < 0) return errno;
  }
  struct stat st;
  int dup = -1;
  if (fstat(fd, &st) != 0 ||
      (dup = sys::retry_fds([&] { return fcntl(fd, F_DUPFD_CLOEXEC, 0); })) < 0) {
    int err = errno;
    close(fd);
    return err;
  }
  store_.ref(dir->key);
  bool created = false;
  OvInode* in;
  std::shared_ptr<RealState> rs;
  try {
    rs = std::make_shared<RealState>();
    rs->fd = dup;       // a real descriptor: linkat can name it later
    rs->pinned = true;  // so the descriptor cache never closes it
    rs->layer = 0;
    rs->in_upper = true;
    rs->real = {static_cast<uint64_t>(st.st_dev), st.st_ino};
    in = static_cast<OvInode*>(store_.ref_or_insert(
        rs->real,
        [&] {
          auto* n = new OvInode;
          n->type = S_IFREG;
          n->store = &store_;
          n->cache = fh_cache_.get();
          n->parent = dir;
          n->set_state(rs);
          return n;
        },
        &created));
  } catch (const std::bad_alloc&) {
    store_.unref(dir, 1);
    if (!rs) close(dup);  // otherwise the state owns it and closes it as it goes
    close(fd);
    return ENOMEM;
  }
  if (!created) store_.unref(dir, 1);
  e->ino = in->nodeid;
  e->generation = in->generation;
  fill_attr(in, *in->state(), &e->attr);
  e->attr_timeout = cfg_.attr_timeout;
  e->entry_timeout = cfg_.entry_timeout;
  int err = files_.attach(in, rs->fd, rs->real, fd, flags & ~O_TMPFILE, fi);
  if (err) {
    close(fd);
    forget(e->ino, 1);
  }
  return err;
}

int OverlayFs::link(Request&, fuse_ino_t ino, fuse_ino_t newparent, const char* newname,
                    fuse_entry_param* e) {
  if (!has_upper_) return EROFS;
  if (oci_reserved(cfg_.overlay, newname)) return EINVAL;
  OvInode* in = inode(ino);
  OvInode* dir = inode(newparent);
  std::lock_guard<std::mutex> g(ns_m_);
  if (int err = copy_up(in)) return err;
  if (int err = copy_up(dir)) return err;
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  if (linkat(s->fd, "", ds->fd, newname, AT_EMPTY_PATH) != 0) {
    if (errno != EEXIST) return errno;
    bool wh = false;
    whiteout_in_upper(ds->fd, newname, &wh);
    if (!wh) return EEXIST;
    const std::string tmp = temp_name();
    if (linkat(s->fd, "", tmp_fd_, tmp.c_str(), AT_EMPTY_PATH) != 0) return errno;
    if (renameat2(tmp_fd_, tmp.c_str(), ds->fd, newname, 0) != 0) {
      int err = errno;
      unlinkat(tmp_fd_, tmp.c_str(), 0);
      return err;
    }
  }
  mark_impure(dir);
  return do_lookup(dir, newname, e);
}

int OverlayFs::copy_up_alias(OvInode* in, OvInode* dir, const char* name) {
  if (!S_ISREG(in->type)) return copy_up(in);
  if (int err = copy_up(dir)) return err;
  std::lock_guard<std::mutex> g(in->copy_m);
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  // Not copied up yet: under this name (the inode's recorded name is just one of its names).
  if (!s->in_upper) return copy_up_object(in, dir, name, true);
  if (!in->indexed) return 0;
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  struct stat st;
  if (fstatat(ds->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) return 0;
  if (errno != ENOENT) return errno;
  if (linkat(s->fd, "", ds->fd, name, AT_EMPTY_PATH) != 0) return errno;
  set_nlink_diff(in, in->nlink_diff - 1);  // one more real link, the same merged count
  mark_impure(dir);
  return 0;
}

int OverlayFs::unlink(Request&, fuse_ino_t parent, const char* name) {
  if (!has_upper_) return EROFS;
  OvInode* dir = inode(parent);
  std::lock_guard<std::mutex> g(ns_m_);
  for (int pass = 0;; pass++) {
    auto ds = dir->state();
    if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
    Found f;
    if (int err = resolve(*ds, name, &f)) return err;
    if (!f.exists) return ENOENT;
    if (S_ISDIR(f.st.st_mode)) return EISDIR;
    OvInode* victim = find_inode(key_for(f));
    if (pass == 0 && victim && f.layer != 0 && S_ISREG(f.st.st_mode) &&
        (f.from_index || f.st.st_nlink > 1)) {
      // A lower hard link keeps its other names: as the kernel does, copy it up (through the index)
      // under this name first, so that removing it is an upper unlink and the count stays right.
      int err = copy_up_alias(victim, dir, name);
      store_.unref(victim, 1);
      if (err) return err;
      continue;
    }
    const bool upper_name = f.layer == 0;
    int err = 0;
    if (upper_name) {
      bool lower = false;
      name_in_lowers(*ds, name, &lower);
      if (lower) {
        const std::string tmp = temp_name();
        if (renameat2(ds->fd, name, tmp_fd_, tmp.c_str(), RENAME_WHITEOUT) != 0)
          err = errno;
        else
          unlinkat(tmp_fd_, tmp.c_str(), 0);
      } else if (unlinkat(ds->fd, name, 0) != 0) {
        err = errno;
      }
    } else {
      err = copy_up(dir);
      if (!err && mknodat(dir->state()->fd, name, S_IFCHR, makedev(0, 0)) != 0) err = errno;
    }
    if (!err && victim) {
      if (victim->indexed) {
        // The merged count drops; the real one only if an upper link went.
        if (!upper_name) set_nlink_diff(victim, victim->nlink_diff - 1);
      } else if (!upper_name) {
        victim->removed = true;
      }
    }
    if (victim) store_.unref(victim, 1);
    return err;
  }
}

int OverlayFs::rmdir(Request&, fuse_ino_t parent, const char* name) {
  if (!has_upper_) return EROFS;
  OvInode* dir = inode(parent);
  std::lock_guard<std::mutex> g(ns_m_);
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  Found f;
  if (int err = resolve(*ds, name, &f)) return err;
  if (!f.exists) return ENOENT;
  if (!S_ISDIR(f.st.st_mode)) return ENOTDIR;
  {
    RealState probe;  // the directory as merged, to see whether anything is visible in it
    probe.fd = f.fd;
    probe.layer = f.layer;
    probe.opaque = f.opaque;
    probe.xwhiteouts = f.xwhiteouts;
    probe.lowers = std::move(f.lowers);
    f.lowers.clear();
    std::vector<Entry> entries;
    int lerr = list_merged(probe, &entries, kListFirst);
    f.lowers = std::move(probe.lowers);
    probe.lowers.clear();
    probe.fd = -1;
    if (lerr) return lerr;
    if (!entries.empty()) return ENOTEMPTY;
  }
  OvInode* victim = find_inode(key_for(f));
  int err = 0;
  if (f.layer == 0) {
    bool lower = false;
    name_in_lowers(*ds, name, &lower);
    // Move it out of the way in one step (leaving a whiteout if a lower one must stay hidden),
    // then clear the whiteouts it may hold.
    const std::string tmp = temp_name();
    if (renameat2(ds->fd, name, tmp_fd_, tmp.c_str(), lower ? RENAME_WHITEOUT : 0) != 0)
      err = errno;
    else
      remove_work_tree(tmp.c_str());
  } else {
    err = copy_up(dir);
    if (!err && mknodat(dir->state()->fd, name, S_IFCHR, makedev(0, 0)) != 0) err = errno;
  }
  if (!err) {
    dirs_changed(dir);
    if (victim) victim->removed = true;
  }
  if (victim) store_.unref(victim, 1);
  return err;
}

int OverlayFs::rename(Request&, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                      const char* newname, unsigned flags) {
  if (!has_upper_) return EROFS;
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return EINVAL;
  if (oci_reserved(cfg_.overlay, newname)) return EINVAL;
  const bool exchange = flags & RENAME_EXCHANGE;
  OvInode* d1 = inode(parent);
  OvInode* d2 = inode(newparent);
  std::lock_guard<std::mutex> g(ns_m_);
  fuse_entry_param tmp_e;
  OvInode* src = nullptr;
  OvInode* dst = nullptr;
  if (int err = do_lookup(d1, name, &tmp_e, &src)) return err;
  int err = do_lookup(d2, newname, &tmp_e, &dst);
  if (err && err != ENOENT) {
    store_.unref(src, 1);
    return err;
  }
  auto release = [&] {
    if (src) store_.unref(src, 1);
    if (dst) store_.unref(dst, 1);
  };
  if (src == dst && d1 == d2 && !strcmp(name, newname)) {
    release();
    return 0;
  }
  if ((flags & RENAME_NOREPLACE) && dst) {
    release();
    return EEXIST;
  }
  if (exchange && !dst) {
    release();
    return ENOENT;
  }
  const bool src_dir = S_ISDIR(src->type);
  const bool dst_dir = dst && S_ISDIR(dst->type);
  if (dst && !exchange) {
    if (src_dir && !dst_dir) err = ENOTDIR;
    if (!src_dir && dst_dir) err = EISDIR;
    if (!err && dst_dir) {
      std::vector<Entry> entries;
      err = list_merged(*dst->state(), &entries, kListFirst);
      if (!err && !entries.empty()) err = ENOTEMPTY;
    }
    if (err) {
      release();
      return err;
    }
  }
  // A directory with lower parts is moved by recording where those parts live.
  auto needs_redirect = [&](OvInode* in) {
    return S_ISDIR(in->type) && has_lower_parts(*in->state());
  };
  if (((needs_redirect(src)) || (exchange && needs_redirect(dst))) && !cfg_.overlay.redirect_dir) {
    release();
    return EXDEV;
  }
  // A lower hard link being moved, swapped or replaced is copied up under that very name.
  auto lower_link = [&](OvInode* in) {
    if (!S_ISREG(in->type)) return false;
    if (in->indexed) return true;
    auto s = in->state();
    struct stat st;
    return !s->in_upper && fstatat(s->fd, "", &st, AT_EMPTY_PATH) == 0 && st.st_nlink > 1;
  };
  if ((err = copy_up(d1)) || (err = copy_up(d2)) || (err = copy_up_alias(src, d1, name)) ||
      (exchange && (err = copy_up_alias(dst, d2, newname))) ||
      (dst && !exchange && lower_link(dst) && (err = copy_up_alias(dst, d2, newname)))) {
    release();
    return err;
  }
  // An upper object's real link count stays right when one of its names is replaced.
  const bool dst_in_upper = dst && dst->state()->in_upper;
  auto set_redirect = [&](OvInode* in, const std::string& lower_path) {
    if (lower_path.empty()) return 0;
    auto s = in->state();
    if (s->fd < 0) return ESTALE;  // file-handle mode: gone
    std::string cur;
    if (get_xattr_string(s->fd, kOvlRedirect, &cur)) return 0;
    return set_xattr_string(s->fd, kOvlRedirect, lower_path);
  };
  {
    auto ss = src->state();
    if (ss->fd < 0) return ESTALE;  // file-handle mode: gone
    if (S_ISDIR(src->type) && !ss->lowers.empty()) err = set_redirect(src, ss->lower_path);
    if (!err && exchange && S_ISDIR(dst->type)) {
      auto ds2 = dst->state();
      if (ds2->fd < 0) return ESTALE;  // file-handle mode: gone
      if (!ds2->lowers.empty()) err = set_redirect(dst, ds2->lower_path);
    }
  }
  auto s1 = d1->state();
  if (s1->fd < 0) return ESTALE;  // file-handle mode: gone
  auto s2 = d2->state();
  if (s2->fd < 0) return ESTALE;  // file-handle mode: gone
  bool src_lower = false, dst_lower = false;
  if (!err) name_in_lowers(*s1, name, &src_lower);
  if (!err) name_in_lowers(*s2, newname, &dst_lower);
  std::string moved_dst;
  // A pure upper directory landing where a lower entry is must not merge with it (also when it
  // is swapped there).
  if (!err && src_dir && src->state()->lowers.empty() && dst_lower)
    err = set_xattr_string(src->state()->fd, kOvlOpaque, "y");
  if (!err && exchange && dst_dir && dst->state()->lowers.empty() && src_lower)
    err = set_xattr_string(dst->state()->fd, kOvlOpaque, "y");
  if (!err && !exchange) {
    // An upper directory being replaced may hold whiteouts: move it aside first.
    if (!err && dst_dir && dst->state()->in_upper) {
      moved_dst = temp_name();
      if (renameat2(s2->fd, newname, tmp_fd_, moved_dst.c_str(), dst_lower ? RENAME_WHITEOUT : 0))
        err = errno;
    }
  }
  if (!err) {
    if (exchange) {
      if (renameat2(s1->fd, name, s2->fd, newname, RENAME_EXCHANGE) != 0) err = errno;
    } else {
      bool wh = false;
      whiteout_in_upper(s2->fd, newname, &wh);
      if (wh && src_dir) {
        // A directory cannot replace a whiteout: swap them, and the whiteout lands where the
        // directory was, which is where one is needed anyway if a lower entry is there.
        if (renameat2(s1->fd, name, s2->fd, newname, RENAME_EXCHANGE) != 0)
          err = errno;
        else if (!src_lower)
          unlinkat(s1->fd, name, 0);
      } else if (renameat2(s1->fd, name, s2->fd, newname, src_lower ? RENAME_WHITEOUT : 0) != 0) {
        err = errno;
      }
    }
  }
  if (!moved_dst.empty()) {
    if (err)  // put it back
      renameat2(tmp_fd_, moved_dst.c_str(), s2->fd, newname, RENAME_EXCHANGE);
    remove_work_tree(moved_dst.c_str());
  }
  if (!err) {
    auto move = [&](OvInode* in, OvInode* to, const char* n) { store_.set_name(in, to, n); };
    move(src, d2, newname);
    if (exchange) {
      move(dst, d1, name);
    } else if (dst) {
      if (dst->indexed) {
        if (!dst->state()->in_upper) set_nlink_diff(dst, dst->nlink_diff - 1);
      } else if (!dst_in_upper) {
        dst->removed = true;
      }
    }
    mark_impure(d2);
    if (exchange) mark_impure(d1);
    dirs_changed(d1);
    dirs_changed(d2);
  }
  release();
  return err;
}

}  // namespace fusekit
