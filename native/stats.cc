#include "stats.h"

namespace fusekit {

const char* op_name(Op op) {
  static const char* const kNames[] = {
      "init",      "destroy",         "lookup",      "forget",     "getattr",
      "setattr",   "readlink",        "mknod",       "mkdir",      "unlink",
      "rmdir",     "symlink",         "rename",      "link",       "open",
      "read",      "write",           "flush",       "release",    "fsync",
      "opendir",   "readdir",         "readdirplus", "releasedir", "fsyncdir",
      "statfs",    "setxattr",        "getxattr",    "listxattr",  "removexattr",
      "access",    "create",          "getlk",       "setlk",      "flock",
      "fallocate", "copy_file_range", "lseek",       "tmpfile",    "statx",
  };
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Op::Count),
                "every Op needs a name");
  return kNames[static_cast<size_t>(op)];
}

}  // namespace fusekit
