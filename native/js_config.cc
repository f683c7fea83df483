#include "js_config.h"

#include <string.h>

namespace fusekit {

namespace {

std::string get_string(const Napi::Object& o, const char* key, const std::string& def = "") {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsString())
    throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

bool get_bool(const Napi::Object& o, const char* key, bool def) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsBoolean())
    throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

double get_number(const Napi::Object& o, const char* key, double def) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsNumber())
    throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

MountConfig config_from_js(const Napi::Object& o) {
  MountConfig c;
  c.source = get_string(o, "source");
  c.mountpoint = get_string(o, "mountpoint");
  c.fsname = get_string(o, "fsname", c.source);
  c.subtype = get_string(o, "subtype", "fusekit");
  c.read_only = get_bool(o, "readOnly", false);
  c.allow_other = get_bool(o, "allowOther", false);
  c.devices = get_bool(o, "devices", false);
  c.suid = get_bool(o, "suid", false);
  c.debug = get_bool(o, "debug", false);
  std::string pt = get_string(o, "passthrough", "auto");
  c.passthrough = pt == "on"    ? PassthroughMode::On
                  : pt == "off" ? PassthroughMode::Off
                                : PassthroughMode::Auto;
  std::string tr = get_string(o, "transport", "auto");
  c.transport = tr == "io_uring" ? Transport::IoUring
                : tr == "dev"    ? Transport::Dev
                                 : Transport::Auto;
  c.threads = static_cast<unsigned>(get_number(o, "threads", 0));
  c.uring_queue_depth = static_cast<unsigned>(get_number(o, "uringQueueDepth", 0));
  c.entry_timeout = get_number(o, "entryTimeout", 1.0);
  c.attr_timeout = get_number(o, "attrTimeout", 1.0);
  c.negative_timeout = get_number(o, "negativeTimeout", 0.0);
  std::string fh = get_string(o, "fileHandles", "auto");
  c.file_handles = fh == "on" ? 1 : fh == "off" ? 2 : 0;
  c.max_fds = static_cast<unsigned>(get_number(o, "maxFds", 0));
  std::string watch = get_string(o, "watch", "off");
  c.watch = watch == "auto" ? 1 : watch == "fanotify" ? 2 : watch == "inotify" ? 3 : 0;
  Napi::Value im = o.Get("idmap");
  if (im.IsObject()) {
    Napi::Object m = im.As<Napi::Object>();
    auto ranges = [&](const char* key) {
      std::vector<IdRange> out;
      Napi::Value v = m.Get(key);
      if (v.IsUndefined()) return out;
      if (!v.IsArray())
        throw Napi::TypeError::New(o.Env(), std::string("idmap.") + key + " must be an array");
      Napi::Array a = v.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Object r = a.Get(i).As<Napi::Object>();
        out.push_back({static_cast<uint32_t>(get_number(r, "inside", 0)),
                       static_cast<uint32_t>(get_number(r, "outside", 0)),
                       static_cast<uint32_t>(get_number(r, "count", 0))});
      }
      return out;
    };
    int64_t su = kNoSquash, sg = kNoSquash;
    Napi::Value sq = m.Get("squash");
    if (sq.IsObject()) {
      Napi::Object s = sq.As<Napi::Object>();
      if (s.Get("uid").IsNumber()) su = static_cast<int64_t>(get_number(s, "uid", 0));
      if (s.Get("gid").IsNumber()) sg = static_cast<int64_t>(get_number(s, "gid", 0));
    }
    c.idmap = IdMap(ranges("uid"), ranges("gid"), su, sg);
  }
  Napi::Value rules = o.Get("rules");
  if (rules.IsArray()) {
    Napi::Array a = rules.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Object r = a.Get(i).As<Napi::Object>();
      c.rules.push_back(
          {get_string(r, "path"), get_bool(r, "deny", false), get_bool(r, "readOnly", false)});
    }
  }
  std::string audit = get_string(o, "audit", "off");
  c.audit = audit == "changes" ? 2 : audit == "denied" ? 1 : 0;
  Napi::Value ov = o.Get("overlay");
  if (ov.IsObject()) {
    Napi::Object v = ov.As<Napi::Object>();
    c.is_overlay = true;
    Napi::Value lower = v.Get("lower");
    if (!lower.IsArray()) throw Napi::TypeError::New(o.Env(), "overlay.lower must be an array");
    Napi::Array arr = lower.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value s = arr.Get(i);
      if (!s.IsString())
        throw Napi::TypeError::New(o.Env(), "overlay.lower entries must be strings");
      c.overlay.lower.push_back(s.As<Napi::String>().Utf8Value());
    }
    c.overlay.upper = get_string(v, "upper");
    c.overlay.work = get_string(v, "work");
    c.overlay.oci_whiteouts = get_bool(v, "ociWhiteouts", false);
    c.overlay.redirect_dir = get_bool(v, "redirectDir", true);
    c.overlay.volatile_upper = get_bool(v, "volatile", false);
    if (c.overlay.upper.empty()) c.read_only = true;  // nothing can be written without an upper
  }
  if (c.mountpoint.empty() || c.mountpoint[0] != '/')
    throw Napi::TypeError::New(o.Env(), "mountpoint must be an absolute path");
  return c;
}

const char* errno_name(int err) {
  const char* n = strerrorname_np(err);
  return n ? n : "EIO";
}

Napi::Error make_error(Napi::Env env, int code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, errno_name(code)));
  e.Set("errno", Napi::Number::New(env, code));
  return e;
}

}  // namespace fusekit
