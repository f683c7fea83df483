// UID/GID mapping between the ids stored in the source/layers ("inside": the container's own ids)
// and the ids processes use through the mount ("outside": host ids), with the semantics of a
// kernel idmapped mount made with the same map: owners read through the mount are mapped
// inside -> outside (an unmapped one shows as the overflow id 65534); owners written through it
// (new files, chown, ACL entries) are mapped outside -> inside (an unmapped caller cannot create:
// EOVERFLOW; an unmapped chown/ACL id: EINVAL). Squash modes show every owner as one id and give
// every new file one owner, like fuse-overlayfs's squash_to_uid/squash_to_gid.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusekit {

struct IdRange {
  uint32_t inside;
  uint32_t outside;
  uint32_t count;
};

constexpr uint32_t kOverflowId = 65534;
constexpr int64_t kNoSquash = -1;

class IdMap {
 public:
  IdMap() = default;
  IdMap(std::vector<IdRange> uids, std::vector<IdRange> gids, int64_t squash_uid,
        int64_t squash_gid);

  bool identity() const { return identity_; }

  // Owners shown through the mount.
  uint32_t uid_out(uint32_t inside) const;
  uint32_t gid_out(uint32_t inside) const;
  // Owners written through the mount; false when the id has no inside counterpart.
  bool uid_in(uint32_t outside, uint32_t* inside) const;
  bool gid_in(uint32_t outside, uint32_t* inside) const;
  // The owner a new file gets on disk for a caller: squashed, or mapped.
  bool creator(uint32_t uid, uint32_t gid, uint32_t* in_uid, uint32_t* in_gid) const;

  void to_outside(struct stat* st) const {
    if (identity_) return;
    st->st_uid = uid_out(st->st_uid);
    st->st_gid = gid_out(st->st_gid);
  }
  void to_outside(struct statx* stx) const {
    if (identity_) return;
    stx->stx_uid = uid_out(stx->stx_uid);
    stx->stx_gid = gid_out(stx->stx_gid);
  }

  static bool is_acl_xattr(const char* name);
  // Rewrites the ids of a system.posix_acl_* value in place. to_out: inside -> outside (reads),
  // else outside -> inside (writes; false if an id has no inside counterpart).
  bool map_acl(char* value, size_t size, bool to_out) const;

 private:
  static bool find(const std::vector<IdRange>& r, uint32_t id, bool from_inside, uint32_t* out);

  std::vector<IdRange> uids_, gids_;
  int64_t squash_uid_ = kNoSquash, squash_gid_ = kNoSquash;
  bool identity_ = true;
};

}  // namespace fusekit
