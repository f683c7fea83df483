#include "filesystems.h"

#include "passthrough.h"

namespace fusekit {

std::unique_ptr<Filesystem> make_filesystem(const MountConfig& cfg, Error* err) {
  return PassthroughFs::create(cfg, err);
}

}  // namespace fusekit
