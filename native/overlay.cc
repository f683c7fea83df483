// Overlay set-up, merged lookup, attributes, extended attributes and file I/O.
// Namespace changes are in overlay_ns.cc, copy-up in overlay_copyup.cc, directories in
// overlay_dir.cc.
#include "overlay.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>

#include "overlay_xattr.h"
#include "sys.h"

namespace fusekit {

RealState::~RealState() {
  if (fd >= 0) close(fd);
  for (auto& d : lowers) close(d.fd);
}

OverlayFs::Found::~Found() {
  if (fd >= 0) close(fd);
  for (auto& d : lowers) close(d.fd);
}

OverlayFs::~OverlayFs() {
  for (auto& l : layers_) {
    if (l.fd >= 0) close(l.fd);
    if (l.mount_fd >= 0) close(l.mount_fd);
  }
  if (tmp_fd_ >= 0) close(tmp_fd_);
  if (index_fd_ >= 0) close(index_fd_);
  if (work_fd_ >= 0) close(work_fd_);  // releases the work dir lock
}

namespace {

bool is_dot_or_dotdot(const char* n) {
  return n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0));
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// a == b, or a inside b
bool within(const std::string& a, const std::string& b) {
  return a == b || (a.size() > b.size() && a.compare(0, b.size(), b) == 0 &&
                    (b == "/" || a[b.size()] == '/'));
}

// Lower layers are opened as private clones (confined, immune to later mounts). The upper layer is
// opened as it is: renames and links between it and the work dir need one mount.
int open_layer(const std::string& path, const char* what, bool clone, Layer* l, Error* err) {
  int probe = ::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (probe < 0) {
    int e = errno;
    const char* why = e == ENOENT    ? "does not exist"
                      : e == ENOTDIR ? "is not a directory"
                                     : strerror(e);
    *err = {e, std::string(what) + " " + path + " " + why};
    return -1;
  }
  int fd = clone ? sys::open_private_tree(path.c_str()) : -1;
  if (fd >= 0)
    close(probe);
  else
    fd = probe;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    *err = {e, std::string("cannot stat ") + what + " " + path};
    return -1;
  }
  l->path = path;
  l->fd = fd;
  l->dev = st.st_dev;
  l->has_uuid = sys::fs_uuid(fd, l->uuid);
  return 0;
}

}  // namespace

std::unique_ptr<OverlayFs> OverlayFs::create(const MountConfig& cfg, Error* err) {
  const OverlayConfig& oc = cfg.overlay;
  if (oc.lower.empty()) {
    *err = {EINVAL, "an overlay needs at least one lower layer"};
    return nullptr;
  }
  if (oc.upper.empty() != oc.work.empty()) {
    *err = {EINVAL, "an overlay needs both an upper and a work dir, or neither (read-only)"};
    return nullptr;
  }
  std::unique_ptr<OverlayFs> fs(new OverlayFs(cfg));
  fs->has_upper_ = !oc.upper.empty();
  // Layers may not contain one another (the kernel refuses overlapping layers, and a copy-up
  // would change a lower layer).
  std::vector<std::pair<std::string, std::string>> named;
  if (fs->has_upper_) {
    named.emplace_back("upper dir", real_path(oc.upper));
    named.emplace_back("work dir", real_path(oc.work));
  }
  for (auto& l : oc.lower) named.emplace_back("lower layer", real_path(l));
  for (size_t i = 0; i < named.size(); i++) {
    for (size_t j = 0; j < named.size(); j++) {
      if (i == j || (i >= 2 && j >= 2) || (!fs->has_upper_)) continue;
      if (within(named[i].second, named[j].second)) {
        *err = {EINVAL, named[i].first + " " + named[i].second + " lies inside " + named[j].first +
                            " " + named[j].second};
        return nullptr;
      }
    }
  }
  if (fs->has_upper_) {
    Layer u;
    if (open_layer(oc.upper, "upper dir", false, &u, err) != 0) return nullptr;
    u.upper = true;
    fs->layers_.push_back(u);
  }
  for (auto& p : oc.lower) {
    Layer l;
    if (open_layer(p, "lower layer", true, &l, err) != 0) return nullptr;
    fs->layers_.push_back(l);
  }
  if (fs->has_upper_) {
    int wfd = ::open(oc.work.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (wfd < 0) {
      int e = errno;
      *err = {e, "work dir " + oc.work + " " + (e == ENOENT ? "does not exist" : strerror(e))};
      return nullptr;
    }
    fs->work_fd_ = wfd;
    struct statx ux, wx;
    if (::statx(fs->layers_[0].fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &ux) != 0 ||
        ::statx(wfd, "", AT_EMPTY_PATH, STATX_MNT_ID, &wx) != 0 ||
        ux.stx_dev_major != wx.stx_dev_major || ux.stx_dev_minor != wx.stx_dev_minor ||
        ux.stx_mnt_id != wx.stx_mnt_id) {
      *err = {EXDEV, "upper dir " + oc.upper + " and work dir " + oc.work +
                         " must be on the same filesystem and mount"};
      return nullptr;
    }
    if (::flock(wfd, LOCK_EX | LOCK_NB) != 0) {
      *err = {EBUSY, "work dir " + oc.work + " is in use by another mount"};
      return nullptr;
    }
    // Only what an overlay itself keeps there (ours or the kernel's) may be in the work dir.
    int dup = openat(wfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (DIR* d = fdopendir(dup)) {
      while (struct dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == ".." || n == "work" || n == "index") continue;
        closedir(d);
        *err = {ENOTEMPTY, "work dir " + oc.work + " is not empty (it holds " + n + ")"};
        return nullptr;
      }
      closedir(d);
    }
    for (const char* sub : {"work", "index"}) {
      if (mkdirat(wfd, sub, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        *err = {e, "cannot create " + oc.work + "/" + sub + ": " + strerror(e)};
        return nullptr;
      }
    }
    fs->tmp_fd_ = openat(wfd, "work", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    fs->index_fd_ = openat(wfd, "index", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fs->tmp_fd_ < 0 || fs->index_fd_ < 0) {
      *err = {errno, "cannot open the work dir's work/ and index/"};
      return nullptr;
    }
    // Leftovers of an interrupted copy-up are never visible; clear them.
    sys::remove_contents(fs->tmp_fd_);
  }

  if (!fs->enable_handles(err)) return nullptr;

  // The root merges every layer's root.
  auto rs = std::make_shared<RealState>();
  const Layer& top = fs->layers_[0];
  rs->fd = fcntl(top.fd, F_DUPFD_CLOEXEC, 0);
  rs->layer = 0;
  rs->in_upper = fs->has_upper_;
  struct stat st;
  fstat(top.fd, &st);
  rs->real = {static_cast<uint64_t>(st.st_dev), st.st_ino};
  DirXattrs tx = read_dir_xattrs(top.fd);
  rs->xwhiteouts = tx.opaque == 'x';
  rs->impure = tx.impure;
  for (size_t i = 1; i < fs->layers_.size(); i++) {
    DirXattrs x = read_dir_xattrs(fs->layers_[i].fd);
    rs->lowers.push_back(
        {static_cast<int>(i), fcntl(fs->layers_[i].fd, F_DUPFD_CLOEXEC, 0), x.opaque == 'x'});
  }
  auto* root = new OvInode;
  root->type = S_IFDIR;
  root->key = rs->real;
  root->store = &fs->store_;
  root->set_state(std::move(rs));
  fs->store_.set_root(root);
  // The layers' roots are the root's reals too: changes right in them must find it.
  fs->note_reals(root->key, *root->state());
  fs->ino_map_ = std::make_unique<InoMap>(top.dev);
  return fs;
}

void OverlayFs::init(Session* session, fuse_conn_info* conn) {
  session_ = session;
  stats_ = &session->stats();
  passthrough_ = session->passthrough();
  files_.init(session, passthrough_, cfg_.attr_timeout);
  fuse_set_feature_flag(conn, FUSE_CAP_PARALLEL_DIROPS);
  fuse_set_feature_flag(conn, FUSE_CAP_HANDLE_KILLPRIV_V2);
  fuse_set_feature_flag(conn, FUSE_CAP_DONT_MASK);
  fuse_set_feature_flag(conn, FUSE_CAP_POSIX_ACL);
  fuse_set_feature_flag(conn, FUSE_CAP_CACHE_SYMLINKS);
  fuse_set_feature_flag(conn, FUSE_CAP_DIRECT_IO_ALLOW_MMAP);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_READ);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_WRITE);
  fuse_set_feature_flag(conn, FUSE_CAP_SPLICE_MOVE);
  fuse_unset_feature_flag(conn, FUSE_CAP_WRITEBACK_CACHE);
  // Node ids of copied-up inodes stay valid, but the overlay answers no NFS "." / ".." lookups.
  fuse_set_feature_flag(conn, FUSE_CAP_NO_EXPORT_SUPPORT);
  conn->max_write = 1 << 20;
  conn->time_gran = 1;
  conn->no_interrupt = 0;
}

void OverlayFs::destroy() {
  locks_.shutdown();
  // The session is over: the layers may be mounted again at once, not only once this object is
  // freed (that waits for the JS handle to be collected).
  if (work_fd_ >= 0) ::flock(work_fd_, LOCK_UN);
}

void OverlayFs::release() {
  if (fh_cache_) sys::remove_reclaimer(fh_cache_.get());  // no reclaim while inodes go
  files_.close_all();
  store_.clear();
  static_cast<OvInode*>(store_.root())->set_state(std::make_shared<RealState>());
  {
    std::lock_guard<std::mutex> g(realmap_m_);
    realmap_.clear();
  }
  for (auto& l : layers_) {
    if (l.fd >= 0) close(l.fd);
    l.fd = -1;
    if (l.mount_fd >= 0) close(l.mount_fd);
    l.mount_fd = -1;
  }
  for (int* fd : {&tmp_fd_, &index_fd_, &work_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

// ---- cache coherence

std::vector<int> OverlayFs::watch_roots() {
  std::vector<int> out;
  for (auto& l : layers_) out.push_back(l.fd);
  return out;
}

void OverlayFs::note_reals(const InodeKey& key, const RealState& s) {
  if (!cfg_.watch) return;
  std::vector<InodeKey> reals{s.real};
  for (auto& d : s.lowers) {
    struct stat st;
    if (fstat(d.fd, &st) == 0) reals.push_back({static_cast<uint64_t>(st.st_dev), st.st_ino});
  }
  std::lock_guard<std::mutex> g(realmap_m_);
  for (auto& r : reals) {
    auto range = realmap_.equal_range(r);
    bool present = false;
    for (auto it = range.first; it != range.second; ++it) present |= it->second == key;
    if (!present) realmap_.emplace(r, key);
  }
}

void OverlayFs::changed(const InodeKey* dir, const char* name, const InodeKey* obj, bool data_only,
                        Invalidations* out) {
  auto owners = [&](const InodeKey& real) {
    std::vector<InodeKey> keys;
    std::lock_guard<std::mutex> g(realmap_m_);
    auto range = realmap_.equal_range(real);
    for (auto it = range.first; it != range.second; ++it) keys.push_back(it->second);
    return keys;
  };
  if (dir && !data_only) {
    for (auto& k : owners(*dir)) {
      if (auto* d = static_cast<OvInode*>(store_.ref(k))) {
        if (name) {
          out->entries.emplace_back(d->nodeid, name);
          // The entry may now come from another layer: find it again on the next lookup.
          Found f;
          if (resolve(*d->state(), name, &f) == 0 && f.exists) {
            if (auto* c = static_cast<OvInode*>(store_.ref(key_for(f)))) {
              c->stale = true;
              out->inodes.push_back(c->nodeid);
              store_.unref(c, 1);
            }
          }
        }
        d->dir_nlink = -1;
        d->stale = true;
        out->inodes.push_back(d->nodeid);
        store_.unref(d, 1);
      }
    }
  }
  if (obj) {
    for (auto& k : owners(*obj)) {
      if (auto* o = static_cast<OvInode*>(store_.ref(k))) {
        auto stat_now = [&](struct stat* st) { return fstat(o->state()->fd, st) == 0; };
        if (!(data_only && written_through_mount(o, stat_now))) out->inodes.push_back(o->nodeid);
        store_.unref(o, 1);
      }
    }
  }
}

void OverlayFs::everything(Invalidations* out) {
  store_.for_each([&](Inode* in) {
    auto* o = static_cast<OvInode*>(in);
    o->stale = true;
    o->dir_nlink = -1;
    out->inodes.push_back(in->nodeid);
  });
}

int OverlayFs::invalidations_for(const std::string& path, Invalidations* out) {
  OvInode* cur = static_cast<OvInode*>(store_.root());
  store_.ref(cur->key);
  size_t p = 0;
  int err = 0;
  while (p < path.size()) {
    size_t e = path.find('/', p);
    if (e == std::string::npos) e = path.size();
    std::string comp = path.substr(p, e - p);
    p = e + 1;
    if (comp.empty()) continue;
    bool last = path.find_first_not_of('/', p) == std::string::npos;
    if (last) out->entries.emplace_back(cur->nodeid, comp);
    cur->dir_nlink = -1;
    Found f;
    OvInode* next = nullptr;
    if (resolve(*cur->state(), comp.c_str(), &f) == 0 && f.exists)
      next = static_cast<OvInode*>(store_.ref(key_for(f)));
    store_.unref(cur, 1);
    if (!next) {
      // Not known to the kernel: nothing below it is cached.
      return last || comp.empty() ? 0 : (f.exists ? 0 : ENOENT);
    }
    cur = next;
    if (last) {
      cur->stale = true;
      out->inodes.push_back(cur->nodeid);
    }
  }
  store_.unref(cur, 1);
  return err;
}

// ---- merged lookup

int OverlayFs::resolve(const RealState& dir, const char* name, Found* f) {
  struct Src {
    int layer;
    int fd;
    bool xw;
  };
  if (dir.fd < 0) return ESTALE;  // file-handle mode: the directory is gone
  std::vector<Src> srcs;
  srcs.reserve(1 + dir.lowers.size());
  srcs.push_back({dir.layer, dir.fd, dir.xwhiteouts});
  if (!dir.opaque) {
    for (auto& d : dir.lowers) srcs.push_back({d.layer, d.fd, d.xwhiteouts});
  }
  const bool oci = cfg_.overlay.oci_whiteouts;
  // OCI whiteout files are markers, never part of the view (readdir leaves them out too).
  if (oci && strncmp(name, kOciWhiteoutPrefix, 4) == 0) return 0;
  const std::string lower_path = dir.lower_path + "/" + name;
  f->lower_path = lower_path;
  for (size_t i = 0; i < srcs.size(); i++) {
    const Src& s = srcs[i];
    struct stat st;
    // Until the top object is found, open it straight away (O_PATH opens a whiteout device
    // too): one syscall fewer than a stat first, and the descriptor's stat is the one that counts.
    int fd = -1;
    if (!f->exists) {
      fd = sys::retry_fds([&] { return openat(s.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC); });
      if (fd >= 0 && fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return err;
      }
    }
    if (f->exists ? fstatat(s.fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 : fd < 0) {
      if (errno != ENOENT) return errno;
      if (oci && oci_whiteout(s.fd, name)) break;
      continue;
    }
    if (is_whiteout(st, s.fd, name, s.xw)) {
      if (fd >= 0) close(fd);
      break;
    }
    if (!f->exists) {
      f->exists = true;
      f->st = st;
      f->real_st = st;
      f->layer = s.layer;
      f->fd = fd;
      if (!S_ISDIR(st.st_mode)) {
        if (has_upper_ && s.layer == 0) {
          get_origin(s.fd, name, fd, &f->origin);
          // An upper name of a lower hard link copied up through the index: the merged link
          // count is kept in trusted.overlay.nlink, as for the index entry itself.
          std::string nl;
          if (S_ISREG(st.st_mode) && st.st_nlink > 1 && get_xattr_string(fd, kOvlNlink, &nl)) {
            f->from_index = true;
            f->nlink_diff = read_nlink_diff(fd);
          }
        }
        break;
      }
      DirXattrs x = read_dir_xattrs(fd);
      f->xwhiteouts = x.opaque == 'x';
      f->opaque = x.opaque == 'y' || (oci && oci_opaque(fd));
      f->impure = x.impure;
      f->origin = std::move(x.origin);
      f->redirect = std::move(x.redirect);
      if (f->opaque) break;
      if (!f->redirect.empty() && cfg_.overlay.redirect_dir) {
        // The lower parts of a renamed directory live where the redirect says.
        std::string target = f->redirect[0] == '/' ? f->redirect
                                                   : dir.lower_path + "/" + f->redirect;
        f->lower_path = target;
        // The redirect is read from a layer, so its author controls it: resolve it beneath each
        // lower layer's root with openat2, so neither ".." nor a symlink can leave the layer.
        size_t b = target.find_first_not_of('/');
        std::string rel = b == std::string::npos ? "." : target.substr(b);
        for (size_t j = s.layer + 1; j < layers_.size(); j++) {
          int cur = sys::retry_fds(
              [&] { return sys::open_beneath(layers_[j].fd, rel.c_str(), O_PATH | O_DIRECTORY); });
          if (cur < 0) continue;
          DirXattrs lx = read_dir_xattrs(cur);
          f->lowers.push_back({static_cast<int>(j), cur, lx.opaque == 'x'});
          if (lx.opaque == 'y' || (oci && oci_opaque(cur))) break;
        }
        break;
      }
    } else {
      if (!S_ISDIR(st.st_mode)) break;  // a non-directory below a directory ends the merge
      int fd = sys::retry_fds(
          [&] { return openat(s.fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); });
      if (fd < 0) break;
      DirXattrs x = read_dir_xattrs(fd);
      f->lowers.push_back({s.layer, fd, x.opaque == 'x'});
      if (x.opaque == 'y' || (oci && oci_opaque(fd))) break;
    }
  }
  if (!f->exists) return 0;
  // A lower hard link already copied up lives in work/index: use that copy, so every name of the
  // inode shows the same data and metadata.
  if (has_upper_ && f->layer != 0 && !S_ISDIR(f->st.st_mode) && f->st.st_nlink > 1) {
    std::string idx = index_name(f->fd, f->layer);
    if (!idx.empty()) {
      int ifd = sys::retry_fds(
          [&] { return openat(index_fd_, idx.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC); });
      if (ifd >= 0) {
        struct stat ist;
        if (fstat(ifd, &ist) == 0) {
          close(f->fd);
          f->fd = ifd;
          f->st.st_mode = ist.st_mode;
          f->real_st = ist;
          f->from_index = true;
          f->nlink_diff = read_nlink_diff(ifd);
        } else {
          close(ifd);
        }
      }
    }
  }
  return 0;
}

InodeKey OverlayFs::key_for(const Found& f) {
  InodeKey k;
  if (!f.origin.empty() && decode_origin(f.origin, &k, nullptr)) return k;
  return {static_cast<uint64_t>(f.st.st_dev), f.st.st_ino};
}

OvInode* OverlayFs::find_inode(const InodeKey& key) {
  return static_cast<OvInode*>(store_.ref(key));
}

int OverlayFs::do_lookup(OvInode* dir, const char* name, fuse_entry_param* e, OvInode** out) {
  auto ds = dir->state();
  if (ds->fd < 0) return ESTALE;  // file-handle mode: gone
  Found f;
  if (int err = resolve(*ds, name, &f)) return err;
  if (!f.exists) return ENOENT;
  InodeKey key = key_for(f);
  auto rs = std::make_shared<RealState>();
  rs->layer = f.from_index ? 0 : f.layer;
  rs->in_upper = has_upper_ && f.layer == 0;
  rs->xwhiteouts = f.xwhiteouts;
  rs->opaque = f.opaque;
  rs->impure = f.impure;
  rs->lower_path = f.lower_path;
  rs->real = {static_cast<uint64_t>(f.real_st.st_dev), f.real_st.st_ino};
  rs->fd = f.fd;
  f.fd = -1;
  rs->lowers = std::move(f.lowers);
  f.lowers.clear();

  store_.ref(dir->key);  // the child's reference on its parent, dropped if the child existed
  bool created = false;
  OvInode* in;
  try {
    in = static_cast<OvInode*>(store_.ref_or_insert(
        key,
        [&] {
          auto* n = new OvInode;
          n->type = f.st.st_mode & S_IFMT;
          n->store = &store_;
          n->cache = fh_cache_.get();
          n->parent = dir;
          n->name = name;
          n->indexed = f.from_index;
          n->nlink_diff = f.nlink_diff;
          n->set_state(rs);
          return n;
        },
        &created));
  } catch (const std::bad_alloc&) {
    store_.unref(dir, 1);
    return ENOMEM;
  }
  if (created) {
    note_reals(key, *rs);
    if (S_ISDIR(f.st.st_mode) && session_->watcher()) {
      // inotify watches every layer's directory of a merged directory the kernel knows.
      session_->watcher()->track_dir(rs->fd, rs->real);
      for (auto& d : rs->lowers) {
        struct stat lst;
        if (fstat(d.fd, &lst) == 0)
          session_->watcher()->track_dir(d.fd, {static_cast<uint64_t>(lst.st_dev), lst.st_ino});
      }
    }
  } else if (in->stale.exchange(false)) {
    // A layer changed behind the mount: what this lookup found is the truth now.
    store_.unref(dir, 1);
    std::lock_guard<std::mutex> g(in->copy_m);
    in->set_state(rs);
    in->indexed = f.from_index;
    in->nlink_diff = f.nlink_diff;
    in->dir_nlink = -1;
    note_reals(key, *rs);
  } else {
    store_.unref(dir, 1);
    // File-handle mode: a known inode whose descriptors the cache closed takes the ones this
    // lookup just opened for the same objects (no reopen from handles).
    if (in->evicted_as(*rs)) {
      std::lock_guard<std::mutex> g(in->copy_m);
      if (in->evicted_as(*rs)) in->set_state(rs);
    }
    auto cur = in->state();
    if (cur->fd < 0) {
      // File-handle mode: its object is gone (deleted behind the mount, its inode number now
      // another object's): what this lookup found is what the name holds now.
      std::lock_guard<std::mutex> g(in->copy_m);
      in->stale = false;
      in->set_state(rs);
      in->indexed = f.from_index;
      in->nlink_diff = f.nlink_diff;
      in->dir_nlink = -1;
      note_reals(key, *rs);
      cur = rs;
    }
    // Only ever move an inode up the layers: a lookup racing a copy-up may have seen the lower
    // object, and must not undo the copy-up.
    if (rs->layer < cur->layer || (rs->in_upper && !cur->in_upper) ||
        (rs->layer == cur->layer && !(rs->real == cur->real) && !in->indexed)) {
      std::lock_guard<std::mutex> g(in->copy_m);
      cur = in->state();
      if (rs->layer < cur->layer || (rs->in_upper && !cur->in_upper)) {
        in->set_state(rs);
        if (f.from_index) {
          in->indexed = true;
          in->nlink_diff = f.nlink_diff;
        }
      }
    }
    std::lock_guard<std::mutex> g(store_.names_m);
    in->removed = false;
  }
  e->ino = in->nodeid;
  e->generation = in->generation;
  // A new inode's state is what resolve just stat'ed: no need to ask again.
  if (int err = fill_attr(in, *in->state(), &e->attr, created ? &f.real_st : nullptr)) {
    store_.unref(in, 1);
    return err;
  }
  e->attr_timeout = cfg_.attr_timeout;
  e->entry_timeout = cfg_.entry_timeout;
  if (out) *out = in;
  return 0;
}

int OverlayFs::fill_attr(OvInode* in, const RealState& s, struct stat* st,
                         const struct stat* known) {
  if (s.fd < 0) return ESTALE;  // file-handle mode: the object is gone
  if (known)
    *st = *known;
  else if (fstatat(s.fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0)
    return errno;
  st->st_ino = ino_map_->map(static_cast<dev_t>(in->key.dev), in->key.ino);
  cfg_.idmap.to_outside(st);
  if (S_ISDIR(st->st_mode)) {
    if (!s.lowers.empty()) st->st_nlink = merged_dir_nlink(in, s);
  } else if (in->indexed) {
    int64_t n = static_cast<int64_t>(st->st_nlink) + in->nlink_diff.load();
    st->st_nlink = n > 0 ? static_cast<nlink_t>(n) : 0;
  } else if (in->removed) {
    st->st_nlink = 0;
  }
  return 0;
}

int OverlayFs::merged_dir_nlink(OvInode* in, const RealState& s) {
  int64_t cached = in->dir_nlink.load();
  if (cached >= 0) return static_cast<int>(cached);
  std::vector<Entry> entries;
  if (list_merged(s, &entries) != 0) return 2;
  int64_t n = 2;
  for (auto& e : entries)
    if (e.type == DT_DIR) n++;
  in->dir_nlink.store(n);
  return static_cast<int>(n);
}

int OverlayFs::lookup(Request&, fuse_ino_t parent, const char* name, fuse_entry_param* e) {
  OvInode* dir = inode(parent);
  if (is_dot_or_dotdot(name)) {
    OvInode* target = dir;
    if (name[1] == '.') {
      std::lock_guard<std::mutex> g(store_.names_m);
      if (dir->parent) target = dir->ov_parent();
    }
    store_.ref(target->key);
    e->ino = target->nodeid;
    e->generation = target->generation;
    e->attr_timeout = cfg_.attr_timeout;
    e->entry_timeout = cfg_.entry_timeout;
    if (int err = fill_attr(target, *target->state(), &e->attr)) {
      store_.unref(target, 1);
      return err;
    }
    return 0;
  }
  return do_lookup(dir, name, e);
}

void OverlayFs::forget(fuse_ino_t ino, uint64_t nlookup) {
  if (Inode* in = store_.get(ino)) store_.unref(in, nlookup);
}

int OverlayFs::getattr(Request&, fuse_ino_t ino, fuse_file_info*, struct stat* st,
                       double* timeout) {
  OvInode* in = inode(ino);
  if (int err = fill_attr(in, *in->state(), st)) return err;
  *timeout = cfg_.attr_timeout;
  return 0;
}

int OverlayFs::setattr(Request&, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi,
                       struct stat* out, double* timeout) {
  OvInode* in = inode(ino);
  if (!has_upper_) return EROFS;
  FileHandle* h = fi ? file_handle(fi) : nullptr;
  // Truncating to zero needs no data from below.
  bool data = !((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size == 0);
  if (int err = copy_up(in, data)) return err;
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  // A handle opened before the copy-up still refers to the lower file: act on the upper one.
  int hfd = (h && h->kind != FileHandle::Passthrough) ? h->fd : -1;
  if (hfd >= 0) {
    struct stat hst;
    if (fstat(hfd, &hst) != 0 ||
        !(InodeKey{static_cast<uint64_t>(hst.st_dev), hst.st_ino} == s->real))
      hfd = -1;
  }
  if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    uid_t uid = static_cast<uid_t>(-1);
    gid_t gid = static_cast<gid_t>(-1);
    if ((to_set & FUSE_SET_ATTR_UID) && !cfg_.idmap.uid_in(attr->st_uid, &uid)) return EINVAL;
    if ((to_set & FUSE_SET_ATTR_GID) && !cfg_.idmap.gid_in(attr->st_gid, &gid)) return EINVAL;
    if (fchownat(s->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    if (sys::fchmod_path(s->fd, attr->st_mode & 07777, S_ISLNK(in->type)) != 0) return errno;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (!S_ISREG(in->type)) return S_ISDIR(in->type) ? EISDIR : EINVAL;
    int r = hfd >= 0 ? ftruncate(hfd, attr->st_size) : sys::truncate_fd(s->fd, attr->st_size);
    if (r != 0) return errno;
  }
  if ((to_set & FUSE_SET_ATTR_KILL_SUID) && !(to_set & FUSE_SET_ATTR_MODE) && S_ISREG(in->type)) {
    struct stat cur;
    if (fstatat(s->fd, "", &cur, AT_EMPTY_PATH) == 0 && (cur.st_mode & (S_ISUID | S_ISGID))) {
      mode_t m = cur.st_mode & ~S_ISUID;
      if (cur.st_mode & S_IXGRP) m &= ~S_ISGID;
      sys::fchmod_path(s->fd, m & 07777, false);
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
    if (utimensat(s->fd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  }
  if (int err = fill_attr(in, *s, out)) return err;
  *timeout = cfg_.attr_timeout;
  return 0;
}

int OverlayFs::readlink(Request&, fuse_ino_t ino, std::string* target) {
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  if (s->fd < 0) return ESTALE;
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat(s->fd, "", buf, sizeof buf);
  if (n < 0) return errno;
  if (static_cast<size_t>(n) >= sizeof buf) return ENAMETOOLONG;
  target->assign(buf, static_cast<size_t>(n));
  return 0;
}

// ---- files

int OverlayFs::open(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  OvInode* in = inode(ino);
  int acc = fi->flags & O_ACCMODE;
  bool writes = acc != O_RDONLY || (fi->flags & O_TRUNC);
  if (writes) {
    if (!has_upper_) return EROFS;
    if (int err = copy_up(in, !(fi->flags & O_TRUNC))) return err;
  }
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  if (s->fd < 0) return ESTALE;
  int flags = fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW);
  int fd = -1;
  if (acc == O_WRONLY)
    fd = sys::retry_fds([&] { return sys::reopen(s->fd, (flags & ~O_ACCMODE) | O_RDWR); });
  if (fd < 0) fd = sys::retry_fds([&] { return sys::reopen(s->fd, flags); });
  if (fd < 0) return errno;
  if (fi->kill_suidgid && (flags & O_TRUNC)) {
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID))) {
      mode_t m = st.st_mode & ~S_ISUID;
      if (st.st_mode & S_IXGRP) m &= ~S_ISGID;
      fchmod(fd, m & 07777);
    }
  }
  int err = files_.attach(in, s->fd, s->real, fd, flags, fi);
  if (err) close(fd);
  return err;
}

void OverlayFs::abandon_open(fuse_ino_t ino, fuse_file_info* fi) {
  if (FileHandle* h = file_handle(fi)) files_.detach(inode(ino), h);
}

int OverlayFs::read(Request&, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                    ReadReply* out) {
  FileHandle* h = file_handle(fi);
  out->fd = h->fd;
  out->pos = off;
  out->size = size;
  struct stat st;
  if (fstat(h->fd, &st) != 0) return errno;
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  if (s->in_upper && !(InodeKey{static_cast<uint64_t>(st.st_dev), st.st_ino} == s->real)) {
    // Opened before a copy-up, the handle still holds the lower file. Read the current object, as
    // kernel overlayfs does: lower data would land in the page cache every open of the inode
    // shares, and new readers would see it instead of the copied-up file's.
    int fd = sys::retry_fds([&] { return sys::reopen(s->fd, O_RDONLY); });
    if (fd < 0) return errno;
    out->data.resize(size);
    ssize_t n = pread(fd, out->data.data(), size, off);
    int err = errno;
    close(fd);
    if (n < 0) return err;
    out->data.resize(static_cast<size_t>(n));
    out->size = static_cast<size_t>(n);
    out->fd = -1;
    stats_->bytes_read.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    return 0;
  }
  if (off < st.st_size) {
    uint64_t n = std::min<uint64_t>(size, static_cast<uint64_t>(st.st_size - off));
    stats_->bytes_read.fetch_add(n, std::memory_order_relaxed);
  }
  return 0;
}

int OverlayFs::write_buf(Request&, fuse_ino_t, fuse_bufvec* in, off_t off, fuse_file_info* fi,
                         size_t* written) {
  FileHandle* h = file_handle(fi);
  fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(in));
  dst.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  dst.buf[0].fd = h->fd;
  dst.buf[0].pos = off;
  ssize_t n = fuse_buf_copy(&dst, in, FUSE_BUF_SPLICE_NONBLOCK);
  if (n < 0) return static_cast<int>(-n);
  if (fi->kill_suidgid) {
    struct stat st;
    if (fstat(h->fd, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID))) {
      mode_t m = st.st_mode & ~S_ISUID;
      if (st.st_mode & S_IXGRP) m &= ~S_ISGID;
      fchmod(h->fd, m & 07777);
    }
  }
  *written = static_cast<size_t>(n);
  stats_->bytes_written.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  return 0;
}

int OverlayFs::flush(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  locks_.release_owner(inode(ino), fi->lock_owner);
  int d = sys::retry_fds([&] { return fcntl(file_handle(fi)->fd, F_DUPFD_CLOEXEC, 0); });
  if (d < 0) return errno;
  return close(d) == 0 ? 0 : errno;
}

int OverlayFs::release(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  files_.detach(inode(ino), file_handle(fi));
  return 0;
}

int OverlayFs::fsync(Request&, fuse_ino_t, int datasync, fuse_file_info* fi) {
  if (cfg_.overlay.volatile_upper) return 0;
  int fd = file_handle(fi)->fd;
  return (datasync ? fdatasync(fd) : ::fsync(fd)) == 0 ? 0 : errno;
}

int OverlayFs::statfs(Request&, fuse_ino_t, struct statvfs* out) {
  return fstatvfs(layers_[0].fd, out) == 0 ? 0 : errno;
}

// ---- extended attributes: the overlay's own (trusted.overlay.*) are not part of the view

int OverlayFs::setxattr(Request&, fuse_ino_t ino, const char* name, const char* value, size_t size,
                        int flags) {
  if (is_overlay_xattr(name)) return EPERM;
  if (!has_upper_) return EROFS;
  OvInode* in = inode(ino);
  if (int err = copy_up(in)) return err;
  if (IdMap::is_acl_xattr(name) && !cfg_.idmap.identity()) {
    std::string v(value, size);
    if (!cfg_.idmap.map_acl(v.data(), v.size(), false)) return EINVAL;
    auto s = in->state();
    if (s->fd < 0) return ESTALE;  // file-handle mode: gone
    return sys::setxattr_fd(s->fd, name, v.data(), size, flags) == 0 ? 0 : errno;
  }
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  return sys::setxattr_fd(s->fd, name, value, size, flags) == 0 ? 0 : errno;
}

int OverlayFs::getxattr(Request&, fuse_ino_t ino, const char* name, size_t size, std::string* value,
                        size_t* len) {
  if (is_overlay_xattr(name)) return ENODATA;
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  value->resize(size);
  ssize_t n = sys::getxattr_fd(s->fd, name, size ? value->data() : nullptr, size);
  if (n < 0) return errno;
  *len = static_cast<size_t>(n);
  if (size && IdMap::is_acl_xattr(name)) cfg_.idmap.map_acl(value->data(), *len, true);
  return 0;
}

int OverlayFs::listxattr(Request&, fuse_ino_t ino, size_t size, std::string* list, size_t* len) {
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  std::string all;
  if (int err = list_xattrs(s->fd, &all)) return err;
  std::string visible;
  for (size_t p = 0; p < all.size();) {
    size_t e = all.find('\0', p);
    if (e == std::string::npos) break;
    std::string n = all.substr(p, e - p);
    if (!is_overlay_xattr(n.c_str())) visible.append(n).push_back('\0');
    p = e + 1;
  }
  *len = visible.size();
  if (size == 0) return 0;
  if (visible.size() > size) return ERANGE;
  *list = std::move(visible);
  return 0;
}

int OverlayFs::removexattr(Request&, fuse_ino_t ino, const char* name) {
  if (is_overlay_xattr(name)) return EPERM;
  if (!has_upper_) return EROFS;
  OvInode* in = inode(ino);
  if (int err = copy_up(in)) return err;
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  return sys::removexattr_fd(s->fd, name) == 0 ? 0 : errno;
}

int OverlayFs::access(Request& r, fuse_ino_t ino, int mask) {
  struct stat st;
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  if (fstatat(s->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return errno;
  if (mask == F_OK) return 0;
  if ((mask & W_OK) && !has_upper_) return EROFS;
  if (r.uid == 0) return (mask & X_OK) && !S_ISDIR(st.st_mode) && !(st.st_mode & 0111) ? EACCES : 0;
  mode_t bits = st.st_uid == r.uid   ? (st.st_mode >> 6)
                : st.st_gid == r.gid ? (st.st_mode >> 3)
                                     : st.st_mode;
  if (((mask & R_OK) && !(bits & 4)) || ((mask & W_OK) && !(bits & 2)) ||
      ((mask & X_OK) && !(bits & 1)))
    return EACCES;
  return 0;
}

// ---- locks and the rest of file I/O act on the open's own descriptor

int OverlayFs::getlk(Request&, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  OvInode* in = inode(ino);
  return locks_.getlk(in, in->state()->fd, fi->lock_owner, lock);
}

int OverlayFs::setlk(Request& r, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock,
                     int sleep) {
  OvInode* in = inode(ino);
  return locks_.setlk(r.req, in, in->state()->fd, fi->lock_owner, lock, sleep != 0);
}

int OverlayFs::flock(Request& r, fuse_ino_t, fuse_file_info* fi, int op) {
  return locks_.flock(r.req, file_handle(fi)->fd, op);
}

int OverlayFs::fallocate(Request&, fuse_ino_t, int mode, off_t offset, off_t length,
                         fuse_file_info* fi) {
  return ::fallocate(file_handle(fi)->fd, mode, offset, length) == 0 ? 0 : errno;
}

int OverlayFs::copy_file_range(Request&, fuse_ino_t, off_t off_in, fuse_file_info* fi_in,
                               fuse_ino_t, off_t off_out, fuse_file_info* fi_out, size_t len,
                               int flags, size_t* copied) {
  loff_t a = off_in, b = off_out;
  ssize_t n = ::copy_file_range(file_handle(fi_in)->fd, &a, file_handle(fi_out)->fd, &b, len,
                                static_cast<unsigned>(flags));
  if (n < 0) return errno;
  *copied = static_cast<size_t>(n);
  return 0;
}

int OverlayFs::lseek(Request&, fuse_ino_t, off_t off, int whence, fuse_file_info* fi, off_t* out) {
  off_t r = ::lseek(file_handle(fi)->fd, off, whence);
  if (r < 0) return errno;
  *out = r;
  return 0;
}

int OverlayFs::statx(Request&, fuse_ino_t ino, int flags, int mask, fuse_file_info*,
                     struct statx* out, double* timeout) {
  OvInode* in = inode(ino);
  auto s = in->state();
  if (s->fd < 0) return ESTALE;  // file-handle mode: gone
  if (::statx(s->fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | (flags & AT_STATX_SYNC_TYPE),
              static_cast<unsigned>(mask), out) != 0)
    return errno;
  out->stx_ino = ino_map_->map(static_cast<dev_t>(in->key.dev), in->key.ino);
  cfg_.idmap.to_outside(out);
  struct stat st;
  if (fill_attr(in, *s, &st) == 0) out->stx_nlink = static_cast<uint32_t>(st.st_nlink);
  *timeout = cfg_.attr_timeout;
  return 0;
}

}  // namespace fusekit
