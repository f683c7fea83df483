#include "events.h"

#include <chrono>

namespace fusekit {

bool is_change(Op op) {
  switch (op) {
    case Op::Setattr:
    case Op::Mknod:
    case Op::Mkdir:
    case Op::Unlink:
    case Op::Rmdir:
    case Op::Symlink:
    case Op::Rename:
    case Op::Link:
    case Op::Create:
    case Op::Tmpfile:
    case Op::Setxattr:
    case Op::Removexattr:
      return true;
    default:
      return false;
  }
}

void EventBus::set_trace(const TraceConfig& t) {
  {
    std::lock_guard<std::mutex> g(tm_);
    trace_ = t;
    if (trace_.sample == 0) trace_.sample = 1;
  }
  update_active();
}

void EventBus::update_active() {
  bool tracing;
  {
    std::lock_guard<std::mutex> g(tm_);
    tracing = trace_.enabled;
  }
  active_.store(tracing || audit_ != AuditMode::Off, std::memory_order_relaxed);
}

bool EventBus::wants_trace(Op op, int err) {
  std::lock_guard<std::mutex> g(tm_);
  if (!trace_.enabled) return false;
  if (!(trace_.ops & (1ULL << static_cast<unsigned>(op)))) return false;
  if (trace_.errors_only && !err) return false;
  return sample_ctr_.fetch_add(1, std::memory_order_relaxed) % trace_.sample == 0;
}

void EventBus::push(Event&& e) {
  {
    std::lock_guard<std::mutex> g(m_);
    if (buf_.size() >= cap_) {
      dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    buf_.push_back(std::move(e));
  }
  recorded.fetch_add(1, std::memory_order_relaxed);
}

void EventBus::start(Sink sink) {
  std::lock_guard<std::mutex> g(m_);
  if (th_.joinable()) return;
  sink_ = std::move(sink);
  stopping_ = false;
  th_ = std::thread(&EventBus::run, this);
}

void EventBus::stop() {
  {
    std::lock_guard<std::mutex> g(m_);
    if (!th_.joinable()) return;
    stopping_ = true;
    cv_.notify_all();
  }
  th_.join();
}

void EventBus::run() {
  std::unique_lock<std::mutex> l(m_);
  for (;;) {
    cv_.wait_for(l, std::chrono::milliseconds(20), [&] { return stopping_; });
    if (!buf_.empty()) {
      std::vector<Event> batch;
      batch.swap(buf_);
      l.unlock();
      size_t n = batch.size();
      if (!sink_(std::move(batch))) dropped.fetch_add(n, std::memory_order_relaxed);
      l.lock();
    }
    if (stopping_) return;
  }
}

}  // namespace fusekit
