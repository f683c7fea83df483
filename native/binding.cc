// Module glue only: the core lives in session/filesystem/passthrough, the JS object in
// mount_handle.
#include <errno.h>
#include <napi.h>
#include <sys/mount.h>

#include "creds.h"
#include "js_config.h"
#include "mount_handle.h"
#include "sys.h"

namespace {

// unmountPath(path, mode): for `fusekit umount` on a mount served by another process.
Napi::Value UnmountPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path required");
  std::string path = info[0].As<Napi::String>();
  std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  int flags = UMOUNT_NOFOLLOW;
  if (mode == "lazy") flags |= MNT_DETACH;
  if (mode == "force") flags |= MNT_FORCE | MNT_DETACH;
  if (umount2(path.c_str(), flags) != 0) {
    int e = errno;
    throw fusekit::make_error(env, e, "unmounting " + path + " failed: " + strerror(e));
  }
  return env.Undefined();
}

Napi::Value DetachAll(const Napi::CallbackInfo& info) {
  fusekit::MountHandle::DetachAll();
  return info.Env().Undefined();
}

// What this machine allows, for option validation and diagnostics.
Napi::Value Capabilities(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("capSysAdmin", Napi::Boolean::New(env, fusekit::has_cap_sys_admin()));
  std::string u = fusekit::sys::read_text("/sys/module/fuse/parameters/enable_uring");
  o.Set("uringEnabled", Napi::Boolean::New(env, u == "Y" || u == "1"));
  o.Set("libfuseVersion", Napi::Number::New(env, fuse_version()));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("MountHandle", fusekit::MountHandle::Init(env));
  exports.Set("mount", Napi::Function::New(env, fusekit::MountHandle::Mount, "mount"));
  exports.Set("unmountPath", Napi::Function::New(env, UnmountPath, "unmountPath"));
  exports.Set("detachAll", Napi::Function::New(env, DetachAll, "detachAll"));
  exports.Set("capabilities", Napi::Function::New(env, Capabilities, "capabilities"));
  env.AddCleanupHook([] { fusekit::MountHandle::DetachAll(); });
  return exports;
}

}  // namespace

NODE_API_MODULE(fusekit, Init)
