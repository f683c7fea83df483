// Inode numbers shown through the mount. A mount may span several backing filesystems (submounts
// under a passthrough source, overlay layers on different disks), whose inode numbers collide.
// Like overlayfs' xino, the first filesystem keeps its numbers and each further one gets a tag in
// the top bits; numbers too large for that get a synthetic number that is never reused while the
// mount lives, so st_ino stays unique and stable.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "inode_store.h"

namespace fusekit {

class InoMap {
 public:
  explicit InoMap(dev_t primary) : primary_(primary) {}

  uint64_t map(dev_t dev, uint64_t ino) {
    if (dev == primary_) return ino;
    return map_slow(dev, ino);
  }

 private:
  static constexpr int kTagShift = 56;
  uint64_t map_slow(dev_t dev, uint64_t ino) {
    std::lock_guard<std::mutex> g(m_);
    auto it = tags_.find(dev);
    uint64_t tag;
    if (it != tags_.end()) {
      tag = it->second;
    } else {
      tag = tags_.size() + 1 < 127 ? tags_.size() + 1 : 0;  // 127 reserved for synthetic numbers
      tags_.emplace(dev, tag);
    }
    if (tag && ino < (1ULL << kTagShift)) return ino | (tag << kTagShift);
    InodeKey k{static_cast<uint64_t>(dev), ino};
    auto s = synthetic_.find(k);
    if (s != synthetic_.end()) return s->second;
    uint64_t v = (127ULL << kTagShift) | next_synthetic_++;
    synthetic_.emplace(k, v);
    return v;
  }

  const dev_t primary_;
  std::mutex m_;
  std::unordered_map<dev_t, uint64_t> tags_;
  std::unordered_map<InodeKey, uint64_t, InodeKeyHash> synthetic_;
  uint64_t next_synthetic_ = 1;
};

}  // namespace fusekit
