// Builds the filesystem a mount configuration asks for.
#pragma once

#include <memory>

#include "config.h"
#include "filesystem.h"
#include "session.h"

namespace fusekit {

std::unique_ptr<Filesystem> make_filesystem(const MountConfig& cfg, Error* err);

}  // namespace fusekit
