#include "creds.h"

#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fusekit {

namespace {

thread_local int t_private_fs = -1;  // -1 unknown, 0 refused, 1 private
// The thread's umask while no CallerCreds is active (a private one, after unshare(CLONE_FS)):
// most callers bring the daemon's own umask, and then neither umask() call is needed.
thread_local mode_t t_umask = 0;

int capget_raw(__user_cap_data_struct data[2]) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  return static_cast<int>(syscall(SYS_capget, &hdr, data));
}

int capset_raw(__user_cap_data_struct data[2]) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  return static_cast<int>(syscall(SYS_capset, &hdr, data));
}

// Re-raises the capabilities the kernel drops from the effective set when the fsuid leaves 0.
// CAP_FSETID: the kernel already stripped setgid from the mode by the caller's own groups (the
// daemon thread lacks them), so the backing filesystem must not strip it again.
void raise_fs_caps() {
  __user_cap_data_struct d[2]{};
  if (capget_raw(d) != 0) return;
  const unsigned caps[] = {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_MKNOD, CAP_FSETID};
  for (unsigned c : caps) {
    unsigned i = c / 32, bit = 1u << (c % 32);
    if (d[i].permitted & bit) d[i].effective |= bit;
  }
  capset_raw(d);
}

}  // namespace

bool thread_private_fs() {
  if (t_private_fs < 0) {
    t_private_fs = unshare(CLONE_FS) == 0 ? 1 : 0;
    t_umask = ::umask(0);
    ::umask(t_umask);
  }
  return t_private_fs == 1;
}

CallerCreds::CallerCreds(uid_t uid, gid_t gid, mode_t umask) : umask_(umask) {
  own_umask_ = thread_private_fs();
  if (own_umask_ && umask != t_umask) {
    ::umask(umask);
    umask_set_ = true;
  }
  static const uid_t self_uid = geteuid();
  static const gid_t self_gid = getegid();
  if (uid == self_uid && gid == self_gid) return;
  // setfsuid/setfsgid act on the calling thread only (no glibc set*id broadcast) and report the
  // previous value; a second call with the same value tells whether the switch took effect.
  setfsgid(gid);
  if (static_cast<gid_t>(setfsgid(gid)) != gid) {
    error_ = EPERM;
    setfsgid(getegid());
    return;
  }
  setfsuid(uid);
  if (static_cast<uid_t>(setfsuid(uid)) != uid) {
    error_ = EPERM;
    setfsuid(geteuid());
    setfsgid(getegid());
    return;
  }
  switched_ = true;
  if (uid != 0 && self_uid == 0) raise_fs_caps();
}

CallerCreds::~CallerCreds() {
  if (switched_) {
    // Back to the daemon's ids: at fsuid 0 the kernel restores the filesystem capabilities from the
    // permitted set.
    setfsuid(geteuid());
    setfsgid(getegid());
  }
  if (umask_set_) ::umask(t_umask);
}

bool has_cap(int cap) {
  __user_cap_data_struct d[2]{};
  if (capget_raw(d) != 0) return false;
  return d[cap / 32].effective & (1u << (cap % 32));
}

bool has_cap_sys_admin() { return has_cap(CAP_SYS_ADMIN); }

}  // namespace fusekit
