// The JavaScript object behind a live mount. JavaScript only configures, unmounts and reads
// statistics; requests never reach it. The end of a session (unmounted from anywhere) is reported
// once through a thread-safe function.
#pragma once

#include <napi.h>

#include <memory>

#include "session.h"

namespace fusekit {

class MountHandle : public Napi::ObjectWrap<MountHandle> {
 public:
  static Napi::Function Init(Napi::Env env);
  // mount(config, onClosed) -> Promise<MountHandle>
  static Napi::Value Mount(const Napi::CallbackInfo& info);
  // Detaches every live mount of this process (exit paths).
  static void DetachAll();

  explicit MountHandle(const Napi::CallbackInfo& info);
  ~MountHandle() override;

  void Attach(std::shared_ptr<Session> session, Napi::Function on_closed, Napi::Function on_events);

 private:
  Napi::Value Unmount(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);
  Napi::Value SetTrace(const Napi::CallbackInfo& info);
  Napi::Value Invalidate(const Napi::CallbackInfo& info);
  void StartEvents();

  std::shared_ptr<Session> session_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::ThreadSafeFunction events_tsfn_;
  bool tsfn_live_ = false;
};

}  // namespace fusekit
