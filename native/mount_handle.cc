#include "mount_handle.h"

#include <string.h>

#include <mutex>
#include <unordered_set>

#include "filesystems.h"
#include "js_config.h"

namespace fusekit {

namespace {

// Live sessions of this process, for the exit paths. Leaked on purpose: it must outlive static
// destruction while request threads may still run.
std::mutex& registry_mutex() {
  static auto* m = new std::mutex;
  return *m;
}
std::unordered_set<std::shared_ptr<Session>>& registry() {
  static auto* s = new std::unordered_set<std::shared_ptr<Session>>;
  return *s;
}

Napi::FunctionReference* g_ctor = nullptr;

// False from the environment's cleanup on: a session ending later (the process exiting with a
// mount still live) must not call its thread-safe function, which is freed soon after.
std::mutex& js_mutex() {
  static auto* m = new std::mutex;
  return *m;
}
bool g_js_alive = true;

class MountWorker : public Napi::AsyncWorker {
 public:
  MountWorker(Napi::Env env, MountConfig cfg, Napi::Function on_closed, Napi::Function on_events)
      : Napi::AsyncWorker(env, "fusekit.mount"),
        deferred_(Napi::Promise::Deferred::New(env)),
        cfg_(std::move(cfg)),
        on_closed_(Napi::Persistent(on_closed)),
        on_events_(Napi::Persistent(on_events)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    std::unique_ptr<Filesystem> fs = make_filesystem(cfg_, &err_);
    if (!fs) return;
    auto s = std::make_shared<Session>(cfg_, std::move(fs));
    if (!s->start(&err_)) return;
    session_ = std::move(s);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!session_) {
      deferred_.Reject(make_error(env, err_.code ? err_.code : EIO, err_.message).Value());
      return;
    }
    {
      std::lock_guard<std::mutex> g(registry_mutex());
      registry().insert(session_);
    }
    Napi::Object obj = g_ctor->New({});
    MountHandle::Unwrap(obj)->Attach(session_, on_closed_.Value(), on_events_.Value());
    deferred_.Resolve(obj);
  }

 private:
  Napi::Promise::Deferred deferred_;
  MountConfig cfg_;
  Napi::FunctionReference on_closed_;
  Napi::FunctionReference on_events_;
  Error err_;
  std::shared_ptr<Session> session_;
};

class UnmountWorker : public Napi::AsyncWorker {
 public:
  UnmountWorker(Napi::Env env, std::shared_ptr<Session> s, UnmountMode mode)
      : Napi::AsyncWorker(env, "fusekit.unmount"),
        deferred_(Napi::Promise::Deferred::New(env)),
        session_(std::move(s)),
        mode_(mode) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { ok_ = session_->unmount(mode_, &err_); }
  void OnOK() override {
    if (ok_)
      deferred_.Resolve(Env().Undefined());
    else
      deferred_.Reject(make_error(Env(), err_.code, err_.message).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Session> session_;
  UnmountMode mode_;
  Error err_;
  bool ok_ = false;
};

Napi::Object counters_to_js(Napi::Env env, const OpCounters& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", Napi::Number::New(env, static_cast<double>(c.count.load())));
  o.Set("errors", Napi::Number::New(env, static_cast<double>(c.errors.load())));
  o.Set("totalNs", Napi::Number::New(env, static_cast<double>(c.total_ns.load())));
  Napi::Array lat = Napi::Array::New(env, kLatencyBuckets);
  for (int i = 0; i < kLatencyBuckets; i++)
    lat.Set(i, Napi::Number::New(env, static_cast<double>(c.latency[i].load())));
  o.Set("latencyLog2Ns", lat);
  Napi::Object errs = Napi::Object::New(env);
  for (int e = 0; e <= kMaxErrno; e++) {
    uint64_t n = c.errnos[e].load();
    if (n) errs.Set(e ? errno_name(e) : "EOTHER", Napi::Number::New(env, static_cast<double>(n)));
  }
  o.Set("errnos", errs);
  return o;
}

}  // namespace

Napi::Function MountHandle::Init(Napi::Env env) {
  Napi::Function f = DefineClass(env, "MountHandle",
                                 {
                                     InstanceMethod("unmount", &MountHandle::Unmount),
                                     InstanceMethod("stats", &MountHandle::Stats),
                                     InstanceMethod("info", &MountHandle::Info),
                                     InstanceMethod("ref", &MountHandle::Ref),
                                     InstanceMethod("unref", &MountHandle::Unref),
                                     InstanceMethod("setTrace", &MountHandle::SetTrace),
                                     InstanceMethod("invalidate", &MountHandle::Invalidate),
                                 });
  g_ctor = new Napi::FunctionReference(Napi::Persistent(f));
  // Registered before any thread-safe function, so it runs after their cleanup hooks, while they
  // still exist (they are freed when their handles close, later).
  env.AddCleanupHook([] {
    std::lock_guard<std::mutex> g(js_mutex());
    g_js_alive = false;
  });
  return f;
}

Napi::Value MountHandle::Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsFunction() || !info[2].IsFunction())
    throw Napi::TypeError::New(env, "mount(config, onClosed, onEvents)");
  MountConfig cfg = config_from_js(info[0].As<Napi::Object>());
  auto* w = new MountWorker(env, std::move(cfg), info[1].As<Napi::Function>(),
                            info[2].As<Napi::Function>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void MountHandle::DetachAll() {
  std::lock_guard<std::mutex> g(registry_mutex());
  for (auto& s : registry()) s->detach_now();
}

MountHandle::MountHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MountHandle>(info) {}

MountHandle::~MountHandle() = default;

void MountHandle::Attach(std::shared_ptr<Session> session, Napi::Function on_closed,
                         Napi::Function on_events) {
  session_ = std::move(session);
  Napi::Env env = on_closed.Env();
  // Calls on_closed on the JavaScript thread once the session has ended.
  tsfn_ = Napi::ThreadSafeFunction::New(env, on_closed, "fusekit.closed", 0, 1);
  tsfn_live_ = true;
  // Event batches: a bounded queue that never keeps the process alive; a full queue drops.
  events_tsfn_ = Napi::ThreadSafeFunction::New(env, on_events, "fusekit.events", 64, 1);
  events_tsfn_.Unref(env);
  std::weak_ptr<Session> weak = session_;
  Napi::ThreadSafeFunction tsfn = tsfn_;
  Napi::ThreadSafeFunction etsfn = events_tsfn_;
  if (session_->events().audit() != AuditMode::Off) StartEvents();
  session_->set_on_closed([tsfn, etsfn, weak]() mutable {
    std::lock_guard<std::mutex> g(js_mutex());
    if (!g_js_alive) return;
    etsfn.Release();  // the event flusher has stopped before the session reports its end
    tsfn.BlockingCall([weak](Napi::Env env, Napi::Function cb) {
      if (auto s = weak.lock()) {
        std::lock_guard<std::mutex> g(registry_mutex());
        registry().erase(s);
      }
      // During environment teardown (the process exiting with the mount still live) JavaScript
      // cannot run: the call fails, and an exception escaping here would abort the process.
      try {
        cb.Call({});
      } catch (const Napi::Error&) {
      }
      (void)env;
    });
    tsfn.Release();
  });
}

void MountHandle::StartEvents() {
  Napi::ThreadSafeFunction tsfn = events_tsfn_;
  session_->start_events([tsfn](std::vector<Event>&& batch) mutable -> bool {
    auto* b = new std::vector<Event>(std::move(batch));
    auto deliver = [](Napi::Env env, Napi::Function cb, std::vector<Event>* b) {
      Napi::Array arr = Napi::Array::New(env, b->size());
      for (size_t i = 0; i < b->size(); i++) {
        const Event& e = (*b)[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("kind", Napi::String::New(env, e.audit ? "audit" : "trace"));
        o.Set("time", Napi::Number::New(env, static_cast<double>(e.time_ns) / 1e6));
        o.Set("op", Napi::String::New(env, op_name(e.op)));
        o.Set("path", Napi::String::New(env, e.path));
        if (!e.path2.empty()) o.Set("path2", Napi::String::New(env, e.path2));
        o.Set("uid", Napi::Number::New(env, e.uid));
        o.Set("gid", Napi::Number::New(env, e.gid));
        o.Set("pid", Napi::Number::New(env, e.pid));
        o.Set("result", e.err ? Napi::Value(Napi::String::New(env, errno_name(e.err)))
                              : Napi::Value(Napi::Number::New(env, 0)));
        o.Set("denied", Napi::Boolean::New(env, e.denied));
        o.Set("latencyNs", Napi::Number::New(env, static_cast<double>(e.latency_ns)));
        arr.Set(i, o);
      }
      delete b;
      try {
        cb.Call({arr});
      } catch (const Napi::Error&) {
      }
    };
    if (tsfn.NonBlockingCall(b, deliver) != napi_ok) {
      delete b;  // the consumer is behind: drop this batch (counted by the bus)
      return false;
    }
    return true;
  });
}

// setTrace({ enabled, sample, ops, errorsOnly })
Napi::Value MountHandle::SetTrace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "trace config");
  Napi::Object o = info[0].As<Napi::Object>();
  TraceConfig t;
  t.enabled = o.Get("enabled").ToBoolean();
  if (o.Get("sample").IsNumber()) t.sample = o.Get("sample").As<Napi::Number>().Uint32Value();
  t.errors_only = o.Get("errorsOnly").ToBoolean();
  if (o.Get("ops").IsArray()) {
    Napi::Array ops = o.Get("ops").As<Napi::Array>();
    t.ops = 0;
    for (uint32_t i = 0; i < ops.Length(); i++) {
      std::string n = ops.Get(i).ToString();
      for (size_t k = 0; k < static_cast<size_t>(Op::Count); k++)
        if (n == op_name(static_cast<Op>(k))) t.ops |= 1ULL << k;
    }
  }
  session_->events().set_trace(t);
  if (t.enabled) StartEvents();
  return env.Undefined();
}

namespace {
class InvalidateWorker : public Napi::AsyncWorker {
 public:
  InvalidateWorker(Napi::Env env, std::shared_ptr<Session> s, std::string path)
      : Napi::AsyncWorker(env, "fusekit.invalidate"),
        deferred_(Napi::Promise::Deferred::New(env)),
        session_(std::move(s)),
        path_(std::move(path)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  // Off the JavaScript thread: a notification may wait for the kernel's directory lock.
  void Execute() override { err_ = session_->invalidate(path_, &sent_); }
  void OnOK() override {
    if (err_)
      deferred_.Reject(
          make_error(Env(), err_,
                     "invalidating " + (path_.empty() ? "/" : path_) + " failed: " + strerror(err_))
              .Value());
    else
      deferred_.Resolve(Napi::Number::New(Env(), static_cast<double>(sent_)));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Session> session_;
  std::string path_;
  int err_ = 0;
  size_t sent_ = 0;
};
}  // namespace

// invalidate(path?): drop the kernel's cached entries/attributes for a path, or everything.
Napi::Value MountHandle::Invalidate(const Napi::CallbackInfo& info) {
  std::string path = info.Length() > 0 && info[0].IsString() ? info[0].ToString().Utf8Value() : "";
  auto* w = new InvalidateWorker(info.Env(), session_, path);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value MountHandle::Unmount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string mode = info.Length() > 0 && info[0].IsString()
                         ? info[0].As<Napi::String>().Utf8Value()
                         : "";
  UnmountMode m = mode == "lazy"    ? UnmountMode::Lazy
                  : mode == "force" ? UnmountMode::Force
                                    : UnmountMode::Normal;
  auto* w = new UnmountWorker(env, session_, m);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value MountHandle::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  fusekit::Stats& st = session_->stats();
  auto num = [&](double v) { return Napi::Number::New(env, v); };
  Napi::Object o = Napi::Object::New(env);
  Napi::Object ops = Napi::Object::New(env);
  for (size_t i = 0; i < static_cast<size_t>(Op::Count); i++) {
    if (st.ops[i].count.load() == 0) continue;
    ops.Set(op_name(static_cast<Op>(i)), counters_to_js(env, st.ops[i]));
  }
  o.Set("ops", ops);
  o.Set("transport", Napi::String::New(env, session_->transport()));
  Napi::Object req = Napi::Object::New(env);
  req.Set("ioUring", num(static_cast<double>(st.uring_requests.load())));
  req.Set("dev", num(static_cast<double>(st.dev_requests.load())));
  o.Set("requests", req);
  Napi::Object bytes = Napi::Object::New(env);
  bytes.Set("read", num(static_cast<double>(st.bytes_read.load())));
  bytes.Set("written", num(static_cast<double>(st.bytes_written.load())));
  o.Set("daemonBytes", bytes);
  Napi::Object pt = Napi::Object::New(env);
  pt.Set("enabled", Napi::Boolean::New(env, session_->passthrough()));
  pt.Set("opens", num(static_cast<double>(st.opens_passthrough.load())));
  pt.Set("directOpens", num(static_cast<double>(st.opens_direct.load())));
  pt.Set("cachedOpens", num(static_cast<double>(st.opens_cached.load())));
  pt.Set("backingRegistered", num(static_cast<double>(st.backing_registered.load())));
  pt.Set("backingActive", num(static_cast<double>(st.backing_active.load())));
  pt.Set("failures", num(static_cast<double>(st.passthrough_failures.load())));
  o.Set("passthrough", pt);
  o.Set("inodes", num(static_cast<double>(session_->fs().inode_count())));
  o.Set("inodeMemory", num(static_cast<double>(session_->fs().inode_memory())));
  Filesystem::FdUse fu = session_->fs().fd_use();
  Napi::Object fds = Napi::Object::New(env);
  fds.Set("mode", Napi::String::New(env, fu.mode));
  fds.Set("open", num(static_cast<double>(fu.open)));
  fds.Set("capacity", num(static_cast<double>(fu.capacity)));
  fds.Set("reopens", num(static_cast<double>(fu.reopens)));
  o.Set("inodeFds", fds);
  Napi::Object ev = Napi::Object::New(env);
  ev.Set("recorded", num(static_cast<double>(session_->events().recorded.load())));
  ev.Set("dropped", num(static_cast<double>(session_->events().dropped.load())));
  o.Set("events", ev);
  Napi::Object cache = Napi::Object::New(env);
  cache.Set("watch", Napi::String::New(env, session_->watch_mode()));
  cache.Set("invalidations", num(static_cast<double>(st.invalidations.load())));
  cache.Set("overflows", num(static_cast<double>(st.watch_overflows.load())));
  o.Set("cache", cache);
  return o;
}

Napi::Value MountHandle::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("mountpoint", Napi::String::New(env, session_->config().mountpoint));
  o.Set("transport", Napi::String::New(env, session_->transport()));
  o.Set("passthrough", Napi::Boolean::New(env, session_->passthrough()));
  o.Set("closed", Napi::Boolean::New(env, session_->closed()));
  return o;
}

Napi::Value MountHandle::Ref(const Napi::CallbackInfo& info) {
  if (tsfn_live_ && !session_->closed()) tsfn_.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value MountHandle::Unref(const Napi::CallbackInfo& info) {
  if (tsfn_live_ && !session_->closed()) tsfn_.Unref(info.Env());
  return info.Env().Undefined();
}

}  // namespace fusekit
