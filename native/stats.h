// Per-operation counters, errors by errno and log2 latency histograms, updated lock-free by the
// request threads and read on demand by JavaScript (never pushed per request).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace fusekit {

enum class Op : uint8_t {
  Init,
  Destroy,
  Lookup,
  Forget,
  Getattr,
  Setattr,
  Readlink,
  Mknod,
  Mkdir,
  Unlink,
  Rmdir,
  Symlink,
  Rename,
  Link,
  Open,
  Read,
  Write,
  Flush,
  Release,
  Fsync,
  Opendir,
  Readdir,
  Readdirplus,
  Releasedir,
  Fsyncdir,
  Statfs,
  Setxattr,
  Getxattr,
  Listxattr,
  Removexattr,
  Access,
  Create,
  Getlk,
  Setlk,
  Flock,
  Fallocate,
  CopyFileRange,
  Lseek,
  Tmpfile,
  Statx,
  Count
};

const char* op_name(Op op);

constexpr int kLatencyBuckets = 32;  // bucket i counts latencies in [2^i, 2^(i+1)) ns
constexpr int kMaxErrno = 134;

struct OpCounters {
  std::atomic<uint64_t> count{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> total_ns{0};
  std::atomic<uint64_t> latency[kLatencyBuckets]{};
  std::atomic<uint64_t> errnos[kMaxErrno + 1]{};  // [0] collects errnos out of range
};

struct Stats {
  OpCounters ops[static_cast<size_t>(Op::Count)];

  // Which transport really carried requests (libfuse falls back from io_uring silently).
  std::atomic<uint64_t> uring_requests{0};
  std::atomic<uint64_t> dev_requests{0};

  // Data moved by the daemon itself (splice/read/write), as opposed to passthrough.
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};

  // Passthrough accounting.
  std::atomic<uint64_t> opens_passthrough{0};  // opens answered with a backing id
  std::atomic<uint64_t> opens_cached{0};       // opens served by the daemon (page cache)
  std::atomic<uint64_t> opens_direct{0};       // passthrough opens whose I/O the daemon serves
  std::atomic<uint64_t> backing_registered{0};
  std::atomic<int64_t> backing_active{0};
  std::atomic<uint64_t> passthrough_failures{0};

  // Cache invalidations sent to the kernel (watch, invalidate()).
  std::atomic<uint64_t> invalidations{0};
  // Watcher queue overflows: changes were lost, so everything the kernel cached was invalidated.
  std::atomic<uint64_t> watch_overflows{0};

  void record(Op op, int err, uint64_t ns) {
    OpCounters& c = ops[static_cast<size_t>(op)];
    c.count.fetch_add(1, std::memory_order_relaxed);
    c.total_ns.fetch_add(ns, std::memory_order_relaxed);
    int b = ns ? 63 - __builtin_clzll(ns) : 0;
    if (b >= kLatencyBuckets) b = kLatencyBuckets - 1;
    c.latency[b].fetch_add(1, std::memory_order_relaxed);
    if (err) {
      c.errors.fetch_add(1, std::memory_order_relaxed);
      c.errnos[(err > 0 && err <= kMaxErrno) ? err : 0].fetch_add(1, std::memory_order_relaxed);
    }
  }
};

}  // namespace fusekit
