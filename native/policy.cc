#include "policy.h"

#include <errno.h>

namespace fusekit {

Policy::Policy(std::vector<PolicyRule> rules) {
  for (auto& r : rules) {
    std::string g = r.pattern;
    if (g.empty() || g[0] != '/') g = "/" + g;
    while (g.size() > 1 && g.back() == '/') g.pop_back();
    rules_.push_back({g, r.deny, r.read_only});
  }
}

bool Policy::glob_match(const char* p, const char* s) {
  while (*p) {
    if (p[0] == '*' && p[1] == '*') {
      p += 2;
      if (*p == '/') {
        // "a/**/b" also matches "a/b"
        if (glob_match(p + 1, s)) return true;
      }
      for (const char* t = s;; t++) {
        if (glob_match(p, t)) return true;
        if (!*t) return false;
      }
    }
    if (*p == '*') {
      p++;
      for (const char* t = s;; t++) {
        if (glob_match(p, t)) return true;
        if (!*t || *t == '/') return false;
      }
    }
    if (!*s) return false;
    if (*p == '?') {
      if (*s == '/') return false;
    } else if (*p != *s) {
      return false;
    }
    p++;
    s++;
  }
  return *s == 0;
}

bool Policy::covers(const std::string& glob, const std::string& path) {
  if (glob == "/") return true;
  // The path itself, or any of its ancestors.
  std::string prefix = path;
  for (;;) {
    if (glob_match(glob.c_str(), prefix.c_str())) return true;
    size_t slash = prefix.rfind('/');
    if (slash == 0 || slash == std::string::npos) return false;
    prefix.resize(slash);
  }
}

int Policy::check(const std::string& path, bool write) const {
  int result = 0;
  for (const Compiled& r : rules_) {
    if (!r.deny && !(r.read_only && write)) continue;
    if (!covers(r.glob, path)) continue;
    if (r.deny) return EACCES;
    result = EROFS;
  }
  return result;
}

int Policy::check_below(const std::string& dir, bool write) const {
  const std::string prefix = dir == "/" ? dir : dir + "/";
  int result = 0;
  for (const Compiled& r : rules_) {
    if (!r.deny && !(r.read_only && write)) continue;
    const size_t lit = r.glob.find_first_of("*?");
    const size_t len = lit == std::string::npos ? r.glob.size() : lit;
    if (len < prefix.size() || r.glob.compare(0, prefix.size(), prefix) != 0) continue;
    if (r.deny) return EACCES;
    result = EROFS;
  }
  return result;
}

}  // namespace fusekit
