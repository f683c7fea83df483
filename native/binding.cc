// Module glue only: the core lives in session/filesystem/passthrough, the JS object in
// mount_handle.
#include <errno.h>
#include <fcntl.h>
#include <napi.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/xattr.h>
#include <unistd.h>

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
  std::string mode = info.Length() > 1 && info[1].IsString()
                         ? info[1].As<Napi::String>().Utf8Value()
                         : "";
  int flags = UMOUNT_NOFOLLOW;
  if (mode == "lazy") flags |= MNT_DETACH;
  if (mode == "force") flags |= MNT_FORCE | MNT_DETACH;
  if (umount2(path.c_str(), flags) != 0) {
    int e = errno;
    throw fusekit::make_error(env, e, "unmounting " + path + " failed: " + strerror(e));
  }
  return env.Undefined();
}

// xattrs(path): every extended attribute of path itself (never following a symlink), for layer
// tools in TypeScript (Node has no xattr API).
Napi::Value Xattrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path required");
  std::string path = info[0].As<Napi::String>();
  Napi::Object out = Napi::Object::New(env);
  ssize_t n = llistxattr(path.c_str(), nullptr, 0);
  if (n < 0) {
    if (errno == ENOTSUP) return out;
    throw fusekit::make_error(env, errno, "listing xattrs of " + path + ": " + strerror(errno));
  }
  std::string names(static_cast<size_t>(n), '\0');
  n = llistxattr(path.c_str(), names.data(), names.size());
  if (n < 0) throw fusekit::make_error(env, errno, "listing xattrs of " + path);
  for (size_t p = 0; p < static_cast<size_t>(n);) {
    std::string name(names.c_str() + p);
    p += name.size() + 1;
    ssize_t len = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    if (len < 0) continue;
    Napi::Buffer<char> v = Napi::Buffer<char>::New(env, static_cast<size_t>(len));
    len = lgetxattr(path.c_str(), name.c_str(), v.Data(), v.Length());
    if (len >= 0) out.Set(name, Napi::Buffer<char>::Copy(env, v.Data(), static_cast<size_t>(len)));
  }
  return out;
}

// dirLocked(path): whether a live fusekit overlay holds this work dir (it keeps an exclusive
// flock on it while mounted).
Napi::Value DirLocked(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path required");
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw fusekit::make_error(env, errno, "cannot open " + path + ": " + strerror(errno));
  bool locked = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  close(fd);
  return Napi::Boolean::New(env, locked);
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
  exports.Set("xattrs", Napi::Function::New(env, Xattrs, "xattrs"));
  exports.Set("dirLocked", Napi::Function::New(env, DirLocked, "dirLocked"));
  env.AddCleanupHook([] { fusekit::MountHandle::DetachAll(); });
  return exports;
}

}  // namespace

NODE_API_MODULE(fusekit, Init)
