#include "idmap.h"

#include <string.h>

namespace fusekit {

IdMap::IdMap(std::vector<IdRange> uids, std::vector<IdRange> gids, int64_t squash_uid,
             int64_t squash_gid)
    : uids_(std::move(uids)),
      gids_(std::move(gids)),
      squash_uid_(squash_uid),
      squash_gid_(squash_gid) {
  identity_ = uids_.empty() && gids_.empty() && squash_uid_ == kNoSquash &&
              squash_gid_ == kNoSquash;
}

bool IdMap::find(const std::vector<IdRange>& r, uint32_t id, bool from_inside, uint32_t* out) {
  if (r.empty()) {
    *out = id;  // no map for this kind of id: unchanged
    return true;
  }
  for (const IdRange& e : r) {
    uint64_t base = from_inside ? e.inside : e.outside;
    if (id >= base && id - base < e.count) {
      *out = static_cast<uint32_t>((from_inside ? e.outside : e.inside) + (id - base));
      return true;
    }
  }
  return false;
}

uint32_t IdMap::uid_out(uint32_t inside) const {
  if (squash_uid_ != kNoSquash) inside = static_cast<uint32_t>(squash_uid_);
  uint32_t out;
  return find(uids_, inside, true, &out) ? out : kOverflowId;
}

uint32_t IdMap::gid_out(uint32_t inside) const {
  if (squash_gid_ != kNoSquash) inside = static_cast<uint32_t>(squash_gid_);
  uint32_t out;
  return find(gids_, inside, true, &out) ? out : kOverflowId;
}

bool IdMap::uid_in(uint32_t outside, uint32_t* inside) const {
  return find(uids_, outside, false, inside);
}

bool IdMap::gid_in(uint32_t outside, uint32_t* inside) const {
  return find(gids_, outside, false, inside);
}

bool IdMap::creator(uint32_t uid, uint32_t gid, uint32_t* in_uid, uint32_t* in_gid) const {
  if (squash_uid_ != kNoSquash)
    *in_uid = static_cast<uint32_t>(squash_uid_);
  else if (!uid_in(uid, in_uid))
    return false;
  if (squash_gid_ != kNoSquash)
    *in_gid = static_cast<uint32_t>(squash_gid_);
  else if (!gid_in(gid, in_gid))
    return false;
  return true;
}

bool IdMap::is_acl_xattr(const char* name) {
  return !strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default");
}

bool IdMap::map_acl(char* value, size_t size, bool to_out) const {
  // struct posix_acl_xattr_header { u32 a_version; } then entries { u16 tag; u16 perm; u32 id; }
  constexpr uint16_t kUser = 0x02, kGroup = 0x08;
  if (identity_ || size < 4) return true;
  for (size_t p = 4; p + 8 <= size; p += 8) {
    uint16_t tag;
    uint32_t id;
    memcpy(&tag, value + p, 2);
    memcpy(&id, value + p + 4, 4);
    if (tag != kUser && tag != kGroup) continue;
    uint32_t mapped;
    if (to_out) {
      // ACL entries name users and groups; squashing applies to owners only.
      if (!find(tag == kUser ? uids_ : gids_, id, true, &mapped)) mapped = kOverflowId;
    } else if (!(tag == kUser ? uid_in(id, &mapped) : gid_in(id, &mapped))) {
      return false;
    }
    memcpy(value + p + 4, &mapped, 4);
  }
  return true;
}

}  // namespace fusekit
