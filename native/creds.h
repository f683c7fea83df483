// Creating files as the caller. New files, directories, nodes and symlinks must be owned by the
// process that asked (not by the daemon), get the group of a setgid parent, inherit default ACLs
// and obey the caller's umask exactly as on the backing filesystem. The daemon therefore switches
// the request thread's filesystem uid/gid and umask around the creating syscall, which makes the
// backing filesystem apply its own rules. The kernel already checked permissions on the FUSE
// side (default_permissions, with the caller's supplementary groups, which the daemon thread
// lacks), so CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH/CAP_MKNOD/CAP_FSETID stay raised while switched.
#pragma once

#include <sys/types.h>

namespace fusekit {

// Gives the calling thread its own umask/cwd (unshare(CLONE_FS)) so that changing the umask never
// touches the Node.js process. Idempotent; false if the kernel refused.
bool thread_private_fs();

class CallerCreds {
 public:
  // uid/gid are host ids (already mapped). umask is applied unless the thread cannot have its own.
  CallerCreds(uid_t uid, gid_t gid, mode_t umask);
  ~CallerCreds();
  CallerCreds(const CallerCreds&) = delete;
  CallerCreds& operator=(const CallerCreds&) = delete;

  // 0 when the switch worked, else the errno that prevented it.
  int error() const { return error_; }
  // When the thread has no private umask, callers mask modes themselves.
  mode_t mask_mode(mode_t mode) const { return own_umask_ ? mode : (mode & ~umask_); }

 private:
  int error_ = 0;
  bool switched_ = false;
  bool own_umask_ = false;
  mode_t umask_ = 0;
  bool umask_set_ = false;  // the thread's umask was changed and must be restored
};

// True when the process can register passthrough backing files (CAP_SYS_ADMIN).
bool has_cap_sys_admin();
bool has_cap(int cap);  // in the calling thread's effective set

}  // namespace fusekit
