#define _GNU_SOURCE
#include <sys/socket.h>
#include "vmf_linux.h"
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <linux/if_tun.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// Between fork and execve the child calls only async-signal-safe functions.
static void report_and_exit(int pipe_fd) {
    int error = errno;
    ssize_t ignored = write(pipe_fd, &error, sizeof(error));
    (void)ignored;
    _exit(127);
}

static int bind_descriptor(int fd, int target) {
    if (fd < 0) {
        int null_fd = open("/dev/null", O_RDWR);
        if (null_fd < 0) return -1;
        if (null_fd != target) {
            if (dup2(null_fd, target) < 0) return -1;
            close(null_fd);
        }
        return 0;
    }
    if (fd == target) {
        // dup2 onto itself keeps a close-on-exec flag; clear it.
        int flags = fcntl(fd, F_GETFD);
        return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
    }
    return dup2(fd, target) < 0 ? -1 : 0;
}

/* The anchor's program, for the signal handler to forward to. */
static volatile pid_t anchored_program;

static void forward_to_program(int signal_number) {
    if (anchored_program > 0) kill(anchored_program, signal_number);
}

/*
 * The anchor, after it forked its program: nothing of the parent's open, the root folder as
 * its mount namespace's root (only async-signal-safe calls: this is a child of a threaded
 * process), then the program's status as its own.
 */
static void anchor(pid_t program, const char *root) {
    anchored_program = program;
    // The forking thread's name otherwise (a thread pool's): say what the process is.
    prctl(PR_SET_NAME, (unsigned long)"vmf-anchor", 0, 0, 0);
    struct sigaction forward;
    memset(&forward, 0, sizeof(forward));
    forward.sa_handler = forward_to_program;
    sigemptyset(&forward.sa_mask);
    const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t index = 0; index < sizeof(forwarded) / sizeof(forwarded[0]); index++) sigaction(forwarded[index], &forward, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (syscall(SYS_close_range, 0U, ~0U, 0) != 0) {
        for (int fd = 0; fd < 1024; fd++) close(fd);
    }
    // A namespace of its own, nothing propagating back, the folder bound onto itself and made
    // the root; the old root detached. Should any step fail, the anchor keeps the host's root.
    if (unshare(CLONE_NEWNS) == 0 && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0
        && mount(root, root, NULL, MS_BIND | MS_REC, NULL) == 0 && chdir(root) == 0
        && syscall(SYS_pivot_root, ".", ".") == 0) {
        umount2(".", MNT_DETACH);
        chdir("/");
    }
    int status = 0;
    for (;;) {
        pid_t got = waitpid(program, &status, 0);
        if (got == program) break;
        if (got < 0 && errno != EINTR) _exit(125);
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

int vmf_spawn(const vmf_spawn_attributes *attributes, pid_t *pid) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;

    // The parent's descriptors for the child must not be clobbered by the dup2 calls for
    // lower numbers: move any of them that sits at 0, 1 or 2 out of the way first.
    int fds[3] = {attributes->stdin_fd, attributes->stdout_fd, attributes->stderr_fd};
    pid_t parent = getpid();
    long open_max = sysconf(_SC_OPEN_MAX);
    if (open_max < 0 || open_max > (1L << 20)) open_max = 1L << 20;

    // Signals stay blocked from fork until the child has reset every handler, so that no
    // handler of the parent's runs in the child.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);

    pid_t child = fork();
    if (child < 0) {
        int error = errno;
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
        close(report[0]);
        close(report[1]);
        return error;
    }
    if (child == 0) {
        // Ignored signals stay ignored across execve: give every child the defaults, so
        // that SIGTERM and SIGINT reach make and QEMU even while vmfactory ignores them.
        for (int signal_number = 1; signal_number < NSIG; signal_number++) {
            if (signal_number == SIGKILL || signal_number == SIGSTOP) continue;
            signal(signal_number, SIG_DFL);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);

        // The identity first: a change of credentials clears the parent-death signal.
        if (attributes->change_identity) {
            if (setgroups((size_t)attributes->group_count, attributes->groups) != 0) report_and_exit(report[1]);
            if (setresgid(attributes->gid, attributes->gid, attributes->gid) != 0) report_and_exit(report[1]);
            if (setresuid(attributes->uid, attributes->uid, attributes->uid) != 0) report_and_exit(report[1]);
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) report_and_exit(report[1]);
        }
        if (attributes->parent_death_signal != 0) {
            if (prctl(PR_SET_PDEATHSIG, attributes->parent_death_signal, 0, 0, 0) != 0) report_and_exit(report[1]);
            // The parent may have died between fork and prctl: then nobody would signal us.
            if (getppid() != parent) _exit(127);
        }
        if (attributes->new_session) {
            if (setsid() < 0) report_and_exit(report[1]);
        } else if (attributes->new_process_group) {
            if (setpgid(0, 0) != 0) report_and_exit(report[1]);
        }
        if (attributes->anchor_root != NULL) {
            pid_t anchor_pid = getpid();
            pid_t program = fork();
            if (program < 0) report_and_exit(report[1]);
            if (program > 0) anchor(program, attributes->anchor_root);
            // The program: it ends with its anchor.
            if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) report_and_exit(report[1]);
            if (getppid() != anchor_pid) _exit(127);
        }
        for (int index = 0; index < 3; index++) {
            if (fds[index] >= 0 && fds[index] < 3 && fds[index] != index) {
                int moved = fcntl(fds[index], F_DUPFD_CLOEXEC, 3);
                if (moved < 0) report_and_exit(report[1]);
                fds[index] = moved;
            }
        }
        for (int index = 0; index < 3; index++) {
            if (bind_descriptor(fds[index], index) != 0) report_and_exit(report[1]);
        }
        // Nothing else of the parent's reaches the program: a stray pipe end would keep a
        // reader of another child waiting for an end of file.
        if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
            // Kernels before 5.11: mark them one by one, up to the limit read before fork.
            for (long fd = 3; fd < open_max; fd++) fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        }
        for (int index = 0; index < attributes->kept_fd_count; index++) {
            if (attributes->kept_fds[index] >= 3 && fcntl(attributes->kept_fds[index], F_SETFD, 0) != 0) report_and_exit(report[1]);
        }
        if (attributes->working_directory != NULL && chdir(attributes->working_directory) != 0) report_and_exit(report[1]);
        execve(attributes->path, attributes->argv, attributes->envp);
        report_and_exit(report[1]);
    }

    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    int child_error = 0;
    ssize_t count;
    do {
        count = read(report[0], &child_error, sizeof(child_error));
    } while (count < 0 && errno == EINTR);
    close(report[0]);
    if (count == (ssize_t)sizeof(child_error)) {
        // The child failed before execve and has exited: collect it here.
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        return child_error != 0 ? child_error : ECHILD;
    }
    *pid = child;
    return 0;
}

int vmf_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

ssize_t vmf_copy_file_range(int from, int to, size_t length) {
    return copy_file_range(from, NULL, to, NULL, length, 0);
}

int vmf_accept_cloexec(int fd)
{
	return accept4(fd, NULL, NULL, SOCK_CLOEXEC);
}

static volatile int signal_pipe = -1;

static void signal_to_pipe(int signal_number)
{
	int saved = errno;
	unsigned char byte = (unsigned char)signal_number;
	if (signal_pipe >= 0 && write(signal_pipe, &byte, 1) < 0) {
		// Nothing to do in a handler: the pipe is full or gone.
	}
	errno = saved;
}

int vmf_signals_to_pipe(const int *signals, int count, int write_fd)
{
	signal_pipe = write_fd;
	struct sigaction action;
	memset(&action, 0, sizeof(action));
	action.sa_handler = signal_to_pipe;
	action.sa_flags = SA_RESTART;
	sigemptyset(&action.sa_mask);
	for (int i = 0; i < count; i++)
		if (sigaction(signals[i], &action, NULL) != 0)
			return errno;
	return 0;
}

void vmf_signals_default(const int *signals, int count)
{
	for (int i = 0; i < count; i++)
		signal(signals[i], SIG_DFL);
	signal_pipe = -1;
}

int vmf_send_fd(int socket, int fd)
{
	char byte = 0;
	return vmf_send_with_fd(socket, fd, &byte, 1);
}

int vmf_send_with_fd(int socket, int fd, const void *data, size_t length)
{
	struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
	union {
		char buffer[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	memset(&control, 0, sizeof(control));
	struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof(control.buffer)};
	struct cmsghdr *header = CMSG_FIRSTHDR(&message);
	header->cmsg_level = SOL_SOCKET;
	header->cmsg_type = SCM_RIGHTS;
	header->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(header), &fd, sizeof(int));
	ssize_t sent;
	do
		sent = sendmsg(socket, &message, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	return sent == (ssize_t)length ? 0 : -1;
}

int vmf_open_pty(int *master, int *slave)
{
	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0)
		return -1;
	char *name = grantpt(*master) == 0 && unlockpt(*master) == 0 ? ptsname(*master) : NULL;
	*slave = name ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
	if (*slave < 0) {
		int error = errno;
		close(*master);
		errno = error;
		return -1;
	}
	return 0;
}

int vmf_open_tap_in_netns(const char *netns, const char *name)
{
	int own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	int target = open(netns, O_RDONLY | O_CLOEXEC);
	if (own < 0 || target < 0) {
		int error = errno;
		if (own >= 0)
			close(own);
		if (target >= 0)
			close(target);
		errno = error;
		return -1;
	}
	int tap = -1, error = 0;
	if (setns(target, CLONE_NEWNET) != 0) {
		error = errno;
	} else {
		tap = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
		struct ifreq request;
		memset(&request, 0, sizeof(request));
		request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
		snprintf(request.ifr_name, sizeof(request.ifr_name), "%s", name);
		if (tap < 0 || ioctl(tap, TUNSETIFF, &request) != 0) {
			error = errno;
			if (tap >= 0)
				close(tap);
			tap = -1;
		}
		/* Back in our own namespace whatever happened; a thread left in the other would be worse than a failure. */
		if (setns(own, CLONE_NEWNET) != 0)
			abort();
	}
	close(own);
	close(target);
	errno = error;
	return tap;
}

int vmf_wait_leaving_zombie(pid_t pid, int *signaled, int *code) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int result;
    do
        result = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT);
    while (result < 0 && errno == EINTR);
    if (result != 0) return -1;
    *signaled = info.si_code != CLD_EXITED;
    *code = info.si_status;
    return 0;
}
