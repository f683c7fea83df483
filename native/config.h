// Mount configuration as the binding hands it to the core (already validated in TypeScript; the
// core checks again what it depends on).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "idmap.h"
#include "policy.h"

namespace fusekit {

enum class PassthroughMode { Auto, On, Off };
enum class Transport { Auto, IoUring, Dev };

// Overlay layers, as kernel overlayfs takes them.
struct OverlayConfig {
  std::vector<std::string> lower;  // top first
  std::string upper;               // empty: a read-only overlay of the lower layers
  std::string work;                // on the upper's filesystem
  bool oci_whiteouts = false;      // also read OCI/AUFS ".wh." files as whiteouts
  bool redirect_dir = true;        // allow renaming lower directories (redirect xattr)
  bool volatile_upper = false;     // fsync is a no-op: the upper is disposable
};

struct MountConfig {
  std::string source;  // passthrough source directory (empty for an overlay)
  bool is_overlay = false;
  OverlayConfig overlay;
  std::string mountpoint;
  std::string fsname;
  std::string subtype = "fusekit";

  bool read_only = false;
  bool allow_other = false;
  bool devices = false;  // mount with dev and allow mknod of device nodes
  bool suid = false;     // mount with suid
  bool debug = false;

  PassthroughMode passthrough = PassthroughMode::Auto;
  Transport transport = Transport::Auto;
  unsigned threads = 0;            // 0: libfuse default
  unsigned uring_queue_depth = 0;  // 0: fusekit default

  IdMap idmap;  // identity unless configured
  std::vector<PolicyRule> rules;
  int audit = 0;  // 0 off, 1 denied operations, 2 also every change

  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  double negative_timeout = 0.0;
  int watch = 0;         // 0 off, 1 auto, 2 fanotify, 3 inotify
  int file_handles = 0;  // 0 auto, 1 on, 2 off: keep file handles instead of one fd per inode
  unsigned max_fds = 0;  // descriptors cached in file-handle mode (0: from RLIMIT_NOFILE)
};

}  // namespace fusekit
