// Operation events for JavaScript: audit records (denied operations, and optionally every change)
// and sampled trace records (op, path, caller, result, latency). Request threads only append to a
// bounded buffer and never wait: when it is full the event is dropped and counted. A flusher
// thread hands batches to the binding every few milliseconds.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "stats.h"

namespace fusekit {

struct Event {
  uint64_t time_ns = 0;  // CLOCK_REALTIME
  uint64_t latency_ns = 0;
  uint32_t uid = 0, gid = 0, pid = 0;
  int32_t err = 0;
  Op op = Op::Lookup;
  bool audit = false;       // audit record (else a trace sample)
  bool denied = false;      // refused by an access rule
  std::string path, path2;  // path2: rename/link target
};

enum class AuditMode { Off, Denied, Changes };

struct TraceConfig {
  bool enabled = false;
  uint32_t sample = 1;   // record one in `sample` matching operations
  uint64_t ops = ~0ULL;  // bit per Op
  bool errors_only = false;
};

class EventBus {
 public:
  explicit EventBus(size_t capacity = 65536) : cap_(capacity) {}
  ~EventBus() { stop(); }

  // Delivers batches on the flusher thread; returns false when the consumer could not take one
  // (it is then counted as dropped).
  using Sink = std::function<bool(std::vector<Event>&&)>;
  void start(Sink sink);
  void stop();

  void set_audit(AuditMode m) {
    audit_ = m;
    update_active();
  }
  AuditMode audit() const { return audit_; }
  void set_trace(const TraceConfig& t);
  // Hot path: one relaxed load when nothing listens.
  bool active() const { return active_.load(std::memory_order_relaxed); }
  bool wants_trace(Op op, int err);
  void push(Event&& e);

  std::atomic<uint64_t> recorded{0};
  std::atomic<uint64_t> dropped{0};

 private:
  void update_active();
  void run();

  const size_t cap_;
  std::atomic<bool> active_{false};
  AuditMode audit_ = AuditMode::Off;
  std::mutex tm_;
  TraceConfig trace_;
  std::atomic<uint64_t> sample_ctr_{0};

  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Event> buf_;
  Sink sink_;
  std::thread th_;
  bool stopping_ = false;
};

bool is_change(Op op);

}  // namespace fusekit
