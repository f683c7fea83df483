#include "filesystems.h"

#include "overlay.h"
#include "passthrough.h"

namespace fusekit {

std::unique_ptr<Filesystem> make_filesystem(const MountConfig& cfg, Error* err) {
  if (cfg.is_overlay) return OverlayFs::create(cfg, err);
  return PassthroughFs::create(cfg, err);
}

}  // namespace fusekit
