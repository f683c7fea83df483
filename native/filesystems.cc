#include "filesystems.h"

#include <errno.h>
#include <string.h>

#include <string>

#include "overlay.h"
#include "passthrough.h"
#include "sys.h"

namespace fusekit {

std::unique_ptr<Filesystem> make_filesystem(const MountConfig& cfg, Error* err) {
  // Opened now, so that no request opens it: a request may hold an inode's lock, and running out
  // of descriptors there would make it ask the caches, whose sweeps take such locks.
  if (!sys::open_proc_fd_dir()) {
    err->code = errno;
    err->message = std::string("cannot open /proc/self/fd: ") + strerror(errno);
    return nullptr;
  }
  if (cfg.is_overlay) return OverlayFs::create(cfg, err);
  return PassthroughFs::create(cfg, err);
}

}  // namespace fusekit
