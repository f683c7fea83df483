// Reads a MountConfig from the plain object the TypeScript layer builds (already validated there;
// this only guards the types the core relies on).
#pragma once

#include <napi.h>

#include "config.h"

namespace fusekit {

MountConfig config_from_js(const Napi::Object& o);

// A rejected promise's reason: an Error with code (errno name), errno and message.
Napi::Error make_error(Napi::Env env, int code, const std::string& message);

const char* errno_name(int err);

}  // namespace fusekit
