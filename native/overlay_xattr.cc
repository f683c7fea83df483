#include "overlay_xattr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "sys.h"

namespace fusekit {

bool is_overlay_xattr(const char* name) { return strncmp(name, kOvlPrefix, 16) == 0; }

int list_xattrs(int path_fd, std::string* out) {
  for (int attempt = 0; attempt < 4; attempt++) {
    ssize_t n = sys::listxattr_fd(path_fd, nullptr, 0);
    if (n < 0) return errno == ENOTSUP || errno == EOPNOTSUPP ? (out->clear(), 0) : errno;
    out->resize(static_cast<size_t>(n));
    if (n == 0) return 0;
    ssize_t m = sys::listxattr_fd(path_fd, out->data(), out->size());
    if (m >= 0) {
      out->resize(static_cast<size_t>(m));
      return 0;
    }
    if (errno != ERANGE) return errno;
  }
  return ERANGE;
}

bool get_xattr_string(int path_fd, const char* name, std::string* out) {
  char buf[4096];
  ssize_t n = sys::getxattr_fd(path_fd, name, buf, sizeof buf);
  if (n < 0) return false;
  out->assign(buf, static_cast<size_t>(n));
  return true;
}

bool get_origin(int dirfd, const char* name, int fd, std::string* out) {
  // Asked on every lookup of an upper non-directory, and most have none: ask by name first (one
  // component, where the descriptor's /proc entry costs a third of the lookup). Only "none" is
  // taken from that answer; a value is read again from the descriptor, because the name can have
  // been replaced since it was opened. That can happen only behind the mount (the kernel holds
  // the directory against our own changes during a lookup), and then the cost is an inode number
  // not kept across copy-up, never two objects taken for one.
  if (sys::getxattr_name(dirfd, name, kOvlOrigin, nullptr, 0) < 0 && errno == ENODATA) return false;
  return get_xattr_string(fd, kOvlOrigin, out);
}

int set_xattr_string(int path_fd, const char* name, const std::string& value) {
  return sys::setxattr_fd(path_fd, name, value.data(), value.size(), 0) == 0 ? 0 : errno;
}

DirXattrs read_dir_xattrs(int path_fd) {
  DirXattrs x;
  char list[512];
  ssize_t n = sys::listxattr_fd(path_fd, list, sizeof list);
  std::string big;
  const char* names = list;
  if (n < 0 && errno == ERANGE) {
    if (list_xattrs(path_fd, &big) != 0) return x;
    names = big.data();
    n = static_cast<ssize_t>(big.size());
  }
  if (n <= 0) return x;
  for (ssize_t p = 0; p < n;) {
    const char* nm = names + p;
    size_t len = strnlen(nm, static_cast<size_t>(n - p));
    if (is_overlay_xattr(nm)) {
      std::string v;
      if (!strcmp(nm, kOvlOpaque)) {
        if (get_xattr_string(path_fd, nm, &v) && !v.empty()) x.opaque = v[0];
      } else if (!strcmp(nm, kOvlImpure)) {
        x.impure = true;
      } else if (!strcmp(nm, kOvlRedirect)) {
        get_xattr_string(path_fd, nm, &x.redirect);
      } else if (!strcmp(nm, kOvlOrigin)) {
        get_xattr_string(path_fd, nm, &x.origin);
      }
    }
    p += static_cast<ssize_t>(len) + 1;
  }
  if (x.opaque != 'y' && x.opaque != 'x') x.opaque = 0;
  return x;
}

bool is_whiteout(const struct stat& st, int dirfd, const char* name, bool xwhiteouts) {
  if (S_ISCHR(st.st_mode)) return st.st_rdev == makedev(0, 0);
  if (!xwhiteouts || !S_ISREG(st.st_mode) || st.st_size != 0) return false;
  int fd = sys::retry_fds([&] { return openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC); });
  if (fd < 0) return false;
  bool w = sys::getxattr_fd(fd, kOvlWhiteout, nullptr, 0) >= 0;
  close(fd);
  return w;
}

bool oci_whiteout(int dirfd, const char* name) {
  std::string wh = std::string(kOciWhiteoutPrefix) + name;
  if (wh.size() > 255) return false;
  struct stat st;
  return fstatat(dirfd, wh.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

bool oci_opaque(int dir_path_fd) {
  struct stat st;
  return fstatat(dir_path_fd, kOciOpaque, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

int read_nlink_diff(int path_fd) {
  std::string v;
  if (!get_xattr_string(path_fd, kOvlNlink, &v) || v.size() < 2 || v[0] != 'U') return 0;
  return atoi(v.c_str() + 1);
}

int write_nlink_diff(int path_fd, int diff) {
  char buf[24];
  snprintf(buf, sizeof buf, "U%+d", diff);
  return set_xattr_string(path_fd, kOvlNlink, buf);
}

}  // namespace fusekit
