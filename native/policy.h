// Per-path access rules, compiled once at mount and evaluated by the session on the request
// threads (never by a JavaScript call per request). A rule names a path from the mount root or a
// glob ("*" within one component, "**" across components, "?" one character); it covers that
// path and everything below it. deny: every access fails with EACCES; readOnly: every change
// fails with EROFS. deny wins over readOnly.
#pragma once

#include <string>
#include <vector>

namespace fusekit {

struct PolicyRule {
  std::string pattern;
  bool deny = false;
  bool read_only = false;
};

class Policy {
 public:
  Policy() = default;
  explicit Policy(std::vector<PolicyRule> rules);

  bool empty() const { return rules_.empty(); }
  // 0, EACCES or EROFS for an access (a change when write) of path ("/a/b").
  int check(const std::string& path, bool write) const;
  bool denied(const std::string& path) const { return check(path, false) == EACCES_; }
  // 0, EACCES or EROFS for moving dir ("/a"): a rule anchored strictly below it (its literal
  // part starts with "/a/") would lose what it protects when dir moves.
  int check_below(const std::string& dir, bool write) const;

  // Exposed for tests of the matcher.
  static bool glob_match(const char* pat, const char* str);

 private:
  static constexpr int EACCES_ = 13;
  struct Compiled {
    std::string glob;  // normalised, starting with '/'
    bool deny, read_only;
  };
  static bool covers(const std::string& glob, const std::string& path);
  std::vector<Compiled> rules_;
};

}  // namespace fusekit
