// Linux calls that Swift's Glibc module does not export, or that must run between fork and
// exec.
#ifndef VMFACTORY_LINUX_H
#define VMFACTORY_LINUX_H

#include <sys/types.h>
#include <stddef.h>
// llistxattr and lgetxattr, for reading extended attributes back.
#include <sys/xattr.h>

/// How to start one child process.
typedef struct {
    /// The executable's path (no PATH search happens here).
    const char *path;
    /// NULL-terminated argument and environment vectors.
    char *const *argv;
    char *const *envp;
    /// The child's working directory, or NULL for the parent's.
    const char *working_directory;
    /// The child's standard descriptors; -1 opens /dev/null.
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    /// Non-zero: the child leads a new process group (setpgid(0, 0)).
    int new_process_group;
    /// Non-zero: the child leads a new session (setsid()), and so a new process group too.
    int new_session;
    /// The signal the kernel sends the child when the thread that forked it ends
    /// (PR_SET_PDEATHSIG); 0 for none.
    int parent_death_signal;
    /// Descriptors of the parent's that the child keeps under the same numbers (3 and up);
    /// every other one is closed at execve.
    const int *kept_fds;
    int kept_fd_count;
    /// Non-zero: the child runs as `uid`, `gid` and exactly `groups` (setgroups, setresgid,
    /// setresuid), with no way back (PR_SET_NO_NEW_PRIVS).
    int change_identity;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    int group_count;
    /// Non-NULL: the child is an anchor instead (an OCI container's pid): it forks the
    /// program, which keeps every attribute above (and the anchor as its parent, with SIGKILL
    /// as its parent-death signal), then takes this folder as the root of a mount namespace
    /// of its own (what engines see through its /proc entry, as podman cp does), forwards
    /// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the program, and exits with
    /// its status (128+N for a signal). The pid returned is the anchor's.
    const char *anchor_root;
} vmf_spawn_attributes;

/// Forks and execs. On success returns 0 and stores the child's pid. On failure returns an
/// errno value: from fork, or from the child's setup or execve, which the child reports
/// through a close-on-exec pipe before it exits with status 127.
int vmf_spawn(const vmf_spawn_attributes *attributes, pid_t *pid);

/// pipe2(fds, O_CLOEXEC), which Swift's Glibc module does not export.
int vmf_pipe_cloexec(int fds[2]);

/// copy_file_range(2) between the current offsets of two descriptors.
ssize_t vmf_copy_file_range(int from, int to, size_t length);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC), which Swift's Glibc module does not export.
int vmf_accept_cloexec(int fd);

/// Installs a handler for each of `signals` that writes the signal's number (one byte) to
/// `write_fd`, a pipe's write end; a thread of the caller's reads the other end. Works
/// whichever thread the kernel picks for the signal.
int vmf_signals_to_pipe(const int *signals, int count, int write_fd);

/// Gives `signals` their default action again.
void vmf_signals_default(const int *signals, int count);
/// Sends `fd` over the connected Unix socket `socket` (SCM_RIGHTS), with one byte of data.
/// Returns 0, or -1 with errno.
int vmf_send_fd(int socket, int fd);

/// Sends `length` bytes of `data` with `fd` attached (SCM_RIGHTS) in one message: 0 when all
/// went, else -1 with errno.
int vmf_send_with_fd(int socket, int fd, const void *data, size_t length);
/// A new pseudo-terminal, both ends close-on-exec and neither the caller's controlling
/// terminal. Returns 0, or -1 with errno.
int vmf_open_pty(int *master, int *slave);
/// Creates the tap device `name` (no packet information, with virtio-net headers) inside the
/// network namespace `netns` (a path such as /run/netns/NAME) and returns its descriptor,
/// close-on-exec; the calling thread is back in its own namespace when it returns. The tap
/// lives as long as the descriptor. Returns -1 with errno on failure.
int vmf_open_tap_in_netns(const char *netns, const char *name);
/// Waits until the child `pid` has ended without reaping it (waitid with WNOWAIT): it stays a
/// zombie, for the child subreaper that adopts it when the caller exits (conmon, containerd's
/// shim) to reap, status and all. Sets `*signaled` and `*code` (the exit code or the signal).
/// Returns 0, or -1 with errno.
int vmf_wait_leaving_zombie(pid_t pid, int *signaled, int *code);

#endif
