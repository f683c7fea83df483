// Merged directories. opendir takes a snapshot of the merged listing (upper first, then each
// lower layer, without duplicates or whited-out names), so a sequence of getdents calls is stable
// while entries come and go, and offsets are simply positions in the snapshot.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_set>

#include "overlay.h"
#include "overlay_xattr.h"
#include "sys.h"

namespace fusekit {

namespace {

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

struct OvDirHandle {
  std::mutex m;
  std::vector<OverlayFs::Entry> entries;  // "." and ".." first
  bool served = false;                    // rebuilt when read again from offset 0
};

OvDirHandle* odh(fuse_file_info* fi) { return reinterpret_cast<OvDirHandle*>(fi->fh); }

}  // namespace

int OverlayFs::list_merged(const RealState& dir, std::vector<Entry>* out, unsigned flags) {
  const bool stop_at_first = flags & kListFirst;
  const bool impure = dir.impure || (flags & kListImpure);
  struct Src {
    int layer;
    int fd;
    bool xw;
  };
  if (dir.fd < 0) return ESTALE;  // file-handle mode: the directory is gone
  std::vector<Src> srcs{{dir.layer, dir.fd, dir.xwhiteouts}};
  if (!dir.opaque)
    for (auto& d : dir.lowers) srcs.push_back({d.layer, d.fd, d.xwhiteouts});
  const bool oci = cfg_.overlay.oci_whiteouts;
  std::unordered_set<std::string> decided;  // shown, or whited out by a layer above
  alignas(8) char buf[32768];
  for (const Src& s : srcs) {
    int dfd = sys::retry_fds([&] { return openat(s.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (dfd < 0) return errno;
    const bool upper = has_upper_ && s.layer == 0;
    const dev_t dev = layers_[s.layer].dev;
    std::vector<std::string> oci_hidden;  // OCI whiteouts hide the layers below only
    for (;;) {
      long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
      if (n < 0) {
        int err = errno;
        close(dfd);
        return err;
      }
      if (n == 0) break;
      for (long p = 0; p < n;) {
        auto* de = reinterpret_cast<linux_dirent64*>(buf + p);
        p += de->d_reclen;
        const char* name = de->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
        if (decided.count(name)) continue;
        if (oci && strncmp(name, kOciWhiteoutPrefix, 4) == 0) {
          if (strcmp(name, kOciOpaque) != 0) oci_hidden.emplace_back(name + 4);
          continue;
        }
        unsigned char type = de->d_type;
        if (type == DT_CHR || type == DT_UNKNOWN || (type == DT_REG && s.xw)) {
          struct stat st;
          if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            if (is_whiteout(st, dfd, name, s.xw)) {
              decided.insert(name);
              continue;
            }
            type = IFTODT(st.st_mode);
          }
        }
        decided.insert(name);
        uint64_t ino = ino_map_->map(dev, de->d_ino);
        if ((flags & kListInos) && upper && (impure || type == DT_DIR)) {
          // A copied-up entry shows its origin's inode number, as getattr does. Read by name
          // (one lookup in a directory being listed, instead of an open, a read through /proc
          // and a close): what is listed is the name's object at this moment anyway.
          char v[256];
          ssize_t n = sys::getxattr_name(dfd, name, kOvlOrigin, v, sizeof v);
          std::string origin;
          if (n >= 0) {
            origin.assign(v, static_cast<size_t>(n));
          } else if (errno == ENOSYS || errno == ERANGE) {
            int efd = sys::retry_fds(
                [&] { return openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC); });
            if (efd >= 0) {
              get_xattr_string(efd, kOvlOrigin, &origin);
              close(efd);
            }
          }
          InodeKey k;
          if (!origin.empty() && decode_origin(origin, &k, nullptr))
            ino = ino_map_->map(static_cast<dev_t>(k.dev), k.ino);
        }
        out->push_back({name, type, ino});
        if (stop_at_first) {
          close(dfd);
          return 0;
        }
      }
    }
    close(dfd);
    for (auto& h : oci_hidden) decided.insert(std::move(h));
  }
  return 0;
}

int OverlayFs::opendir(Request&, fuse_ino_t ino, fuse_file_info* fi) {
  auto* h = new (std::nothrow) OvDirHandle;
  if (!h) return ENOMEM;
  fi->fh = reinterpret_cast<uint64_t>(h);
  // The kernel may keep the listing between opens; changes through the mount, an mtime change of
  // the directory or a watcher's invalidation drop it. A merged directory's mtime is its top
  // layer's, blind to changes in the layers below, so without a watcher it is not kept.
  fi->cache_readdir = fi->keep_cache = cfg_.attr_timeout > 0 &&
                                       (cfg_.watch || inode(ino)->state()->lowers.empty());
  return 0;
}

int OverlayFs::readdir(Request&, fuse_ino_t ino, size_t, off_t off, fuse_file_info* fi, bool plus,
                       DirFiller& out) {
  OvInode* dir = inode(ino);
  OvDirHandle* h = odh(fi);
  std::lock_guard<std::mutex> g(h->m);
  if (h->entries.empty() || (off == 0 && h->served)) {
    // (Re)build: on the first read, and on a rewind, as POSIX rewinddir() asks. The first read
    // may come at an offset another open reached: the kernel's readdir cache goes on from the
    // daemon that way when it loses its pages mid-listing, and seekdir() on a new stream too.
    // Offsets index the listing, which is the same in a new snapshot of an unchanged directory.
    auto s = dir->state();
    if (s->fd < 0) return ESTALE;  // file-handle mode: gone
    std::vector<Entry> entries;
    struct stat st;
    if (int err = fill_attr(dir, *s, &st)) return err;
    entries.push_back({".", DT_DIR, st.st_ino});
    OvInode* parent;
    {
      std::lock_guard<std::mutex> n(store_.names_m);
      parent = dir->parent ? dir->ov_parent() : dir;
    }
    struct stat pst;
    uint64_t pino = ino_map_->map(static_cast<dev_t>(parent->key.dev), parent->key.ino);
    (void)pst;
    entries.push_back({"..", DT_DIR, pino});
    // A copy-up since the directory's state was read makes it impure without a new state.
    const unsigned lf = kListInos | (dir->impure.load() ? unsigned{kListImpure} : 0u);
    if (int err = list_merged(*s, &entries, lf)) return err;
    h->entries = std::move(entries);
    h->served = false;
  }
  for (size_t i = static_cast<size_t>(off); i < h->entries.size(); i++) {
    const Entry& e = h->entries[i];
    const off_t next = static_cast<off_t>(i + 1);
    bool added;
    if (!plus || i < 2) {
      struct stat st {};
      st.st_ino = e.ino;
      st.st_mode = DTTOIF(e.type);
      added = plus ? out.add_plus(e.name.c_str(),
                                  fuse_entry_param{.ino = 0,
                                                   .generation = 0,
                                                   .attr = st,
                                                   .attr_timeout = 0,
                                                   .entry_timeout = 0},
                                  next)
                   : out.add(e.name.c_str(), st, next);
    } else {
      // A denied entry (the kernel's own lookup is then refused) and one whose lookup failed
      // other than by being gone since the snapshot (the kernel's lookup then meets the error)
      // are listed without attributes, as plain readdir lists them; a gone one is skipped.
      fuse_entry_param fe{};
      const bool denied = !session_->policy().empty() &&
                          session_->policy().denied(session_->path_for(ino, e.name.c_str()));
      int err = denied ? -1 : do_lookup(dir, e.name.c_str(), &fe);
      if (err == ENOENT) continue;
      if (err == 0) {
        added = out.add_plus(e.name.c_str(), fe, next);
        if (!added) forget(fe.ino, 1);
      } else {
        fe = {};
        fe.attr.st_ino = e.ino;  // an entry with inode number 0 would be skipped by readdir(3)
        fe.attr.st_mode = DTTOIF(e.type);
        added = out.add_plus(e.name.c_str(), fe, next);
      }
    }
    if (!added) break;
    h->served = true;
  }
  return 0;
}

int OverlayFs::releasedir(Request&, fuse_ino_t, fuse_file_info* fi) {
  delete odh(fi);
  return 0;
}

int OverlayFs::fsyncdir(Request&, fuse_ino_t ino, int datasync, fuse_file_info*) {
  auto s = inode(ino)->state();
  if (s->fd < 0) return ESTALE;                               // file-handle mode: gone
  if (!s->in_upper || cfg_.overlay.volatile_upper) return 0;  // nothing to make durable
  int fd = sys::retry_fds([&] { return openat(s->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  if (fd < 0) return errno;
  int r = datasync ? fdatasync(fd) : ::fsync(fd);
  int err = r == 0 ? 0 : errno;
  close(fd);
  return err;
}

}  // namespace fusekit
