// The kernel overlayfs on-disk format: xattr names, whiteouts and opaque markers, in every
// dialect fusekit reads (kernel character-device and xattr whiteouts, OCI/AUFS ".wh." files).
#pragma once

#include <sys/stat.h>

#include <string>

namespace fusekit {

constexpr const char* kOvlPrefix = "trusted.overlay.";
constexpr const char* kOvlOpaque = "trusted.overlay.opaque";
constexpr const char* kOvlRedirect = "trusted.overlay.redirect";
constexpr const char* kOvlOrigin = "trusted.overlay.origin";
constexpr const char* kOvlImpure = "trusted.overlay.impure";
constexpr const char* kOvlNlink = "trusted.overlay.nlink";
constexpr const char* kOvlWhiteout = "trusted.overlay.whiteout";
constexpr const char* kOciWhiteoutPrefix = ".wh.";
constexpr const char* kOciOpaque = ".wh..wh..opq";

struct DirXattrs {
  char opaque = 0;  // 'y' opaque, 'x' may hold xattr whiteouts, 0 none
  bool impure = false;
  std::string redirect;
  std::string origin;
};

// One listxattr, then only the overlay attributes that are present.
DirXattrs read_dir_xattrs(int path_fd);
// false when absent
bool get_xattr_string(int path_fd, const char* name, std::string* out);
// trusted.overlay.origin of fd, an upper non-directory just opened as `name` in dirfd.
bool get_origin(int dirfd, const char* name, int fd, std::string* out);
int set_xattr_string(int path_fd, const char* name, const std::string& value);
// All names, NUL-separated.
int list_xattrs(int path_fd, std::string* out);
bool is_overlay_xattr(const char* name);

// A kernel whiteout: a 0/0 character device, or (in an "x" directory) a zero-size regular file
// with trusted.overlay.whiteout.
bool is_whiteout(const struct stat& st, int dirfd, const char* name, bool xwhiteouts);
// ".wh.<name>" exists in dirfd
bool oci_whiteout(int dirfd, const char* name);
// ".wh..wh..opq" exists in the directory
bool oci_opaque(int dir_path_fd);

// trusted.overlay.nlink "U+n"/"U-n": merged link count relative to the real one (0 if absent).
int read_nlink_diff(int path_fd);
int write_nlink_diff(int path_fd, int diff);

}  // namespace fusekit
