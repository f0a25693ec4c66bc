/*
 * Starting a run's processes (process.h): the pipes or the terminal, the
 * cgroup, the limits, the user, the capabilities, the working folder and the
 * environment; a child that cannot start says why through a close-on-exec pipe.
 */
#define _GNU_SOURCE
#include "process.h"

#include "copy.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

_Static_assert(VMF_MAX_PROCESS_GROUPS <= VMF_MAX_GROUPS, "a process's groups= fit where its identity's groups go");

/* What the child reports through its close-on-exec pipe when it cannot start. */
struct start_failure {
	int stage;
	int error;
	/* Which rlimit (STAGE_RLIMIT) or capability (STAGE_BOUNDING, STAGE_AMBIENT). */
	int detail;
};
enum {
	STAGE_TERMINAL = 1,
	STAGE_IDENTITY,
	STAGE_WORKDIR,
	STAGE_EXEC,
	STAGE_CGROUP,
	STAGE_RLIMIT,
	STAGE_BOUNDING,
	STAGE_CAPABILITIES,
	STAGE_AMBIENT,
	STAGE_NO_NEW_PRIVS,
};

static void child_fails_at(int pipe_fd, int stage, int detail)
{
	struct start_failure failure = {stage, errno, detail};
	ssize_t ignored = write(pipe_fd, &failure, sizeof(failure));
	(void)ignored;
	_exit(127);
}

static void child_fails(int pipe_fd, int stage)
{
	child_fails_at(pipe_fd, stage, 0);
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, text, strlen(text));
	int saved = errno;
	close(fd);
	errno = saved;
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

int vmf_make_command_cgroup(unsigned long long pids_limit, char *err, size_t errlen)
{
	char limit[32];
	snprintf(limit, sizeof(limit), "%llu", pids_limit);
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) != 0) {
		snprintf(err, errlen, "cannot apply --pids-limit %llu: the guest kernel has no cgroup2", pids_limit);
		return -1;
	}
	if (write_text("/sys/fs/cgroup/cgroup.subtree_control", "+pids") != 0 ||
	    (mkdir(VMF_COMMAND_CGROUP, 0755) != 0 && errno != EEXIST) ||
	    write_text(VMF_COMMAND_CGROUP "/pids.max", limit) != 0) {
		snprintf(err, errlen, "cannot apply --pids-limit %llu: %s (the kernel needs the pids controller)",
			 pids_limit, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Counts "Out of memory: Killed process" and "Memory cgroup out of memory: Killed process"
 * in the kernel's log. Read only when the process died of SIGKILL, the OOM killer's signal:
 * nothing to pay otherwise.
 */
unsigned long vmf_oom_kills(int status)
{
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
		return 0;
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	if (size <= 0 || size > (64 << 20))
		return 0;
	char *log = malloc((size_t)size + 1);
	if (!log)
		return 0;
	int length = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, size);
	unsigned long count = 0;
	if (length > 0) {
		log[length] = '\0';
		for (const char *at = log; (at = strstr(at, "of memory: Killed process ")) != NULL; at++)
			count++;
	}
	free(log);
	return count;
}

/* NAME=VALUE made for the process, remembered so that it is freed with it. */
static void add_env(struct vmf_process *process, struct vmf_process_spec *spec, const char *name, const char *value)
{
	if (vmf_env_has(&spec->envp, name))
		return;
	for (int i = 0; i < 4; i++) {
		if (process->added[i])
			continue;
		if (asprintf(&process->added[i], "%s=%s", name, value) < 0) {
			process->added[i] = NULL;
			return;
		}
		vmf_env_set(&spec->envp, process->added[i]);
		return;
	}
}

/* The environment the host combined, then what engines add. */
static void complete_environment(struct vmf_process *process, struct vmf_process_spec *spec,
				 const struct vmf_identity *who, const char *hostname)
{
	add_env(process, spec, "PATH", VMF_DEFAULT_PATH + strlen("PATH="));
	add_env(process, spec, "HOSTNAME", hostname);
	add_env(process, spec, "HOME", who->home[0] ? who->home : "/");
	if (spec->tty)
		add_env(process, spec, "TERM", "xterm");
}

static int open_terminal(int *master, const struct vmf_process_spec *spec)
{
	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (*master < 0 || grantpt(*master) != 0 || unlockpt(*master) != 0)
		return -1;
	if (spec->rows > 0 && spec->cols > 0) {
		struct winsize size = {.ws_row = (unsigned short)spec->rows, .ws_col = (unsigned short)spec->cols};
		ioctl(*master, TIOCSWINSZ, &size);
	}
	return 0;
}

/* rlimit= keys, while the child is still root, so that a hard limit may be raised; -1 with *failed the one refused. */
static int set_limits(const struct vmf_process_spec *spec, int *failed)
{
	for (int i = 0; i < spec->rlimit_count; i++) {
		struct rlimit limit = {.rlim_cur = spec->rlimits[i].soft, .rlim_max = spec->rlimits[i].hard};
		if (setrlimit(spec->rlimits[i].resource, &limit) != 0) {
			*failed = i;
			return -1;
		}
	}
	return 0;
}

/* prctl reads its arguments as unsigned longs: an int among its varargs would leave the upper half unset. */
static int control(int option, unsigned long arg2, unsigned long arg3)
{
	return prctl(option, arg2, arg3, 0UL, 0UL);
}

/* The highest capability the kernel knows: cap_last_cap, or asked cap by cap when /proc cannot say. */
static int last_capability(void)
{
	char text[16];
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n > 0) {
		text[n] = '\0';
		char *end;
		long last = strtol(text, &end, 10);
		if (end != text && (*end == '\n' || *end == '\0') && last >= 0 && last < 64)
			return (int)last;
	}
	int last = 63;
	while (last > 0 && control(PR_CAPBSET_READ, (unsigned long)last, 0) < 0)
		last--;
	return last;
}

/* Drops from the bounding set every capability the kernel knows that `keep` lacks; -1 with *failed the one refused. */
static int drop_bounding(uint64_t keep, int last, int *failed)
{
	for (int cap = 0; cap <= last; cap++) {
		if ((keep >> cap & 1) || control(PR_CAPBSET_READ, (unsigned long)cap, 0) == 0)
			continue;
		if (control(PR_CAPBSET_DROP, (unsigned long)cap, 0) != 0) {
			*failed = cap;
			return -1;
		}
	}
	return 0;
}

/* Effective, permitted and inheritable at once, as two 32-bit words each (version 3). */
static int set_capability_sets(const struct vmf_capabilities *caps, uint64_t known)
{
	struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
	uint64_t effective = caps->effective & known, permitted = caps->permitted & known, inheritable = caps->inheritable & known;
	for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
		data[i].effective = (uint32_t)(effective >> (32 * i));
		data[i].permitted = (uint32_t)(permitted >> (32 * i));
		data[i].inheritable = (uint32_t)(inheritable >> (32 * i));
	}
	return (int)syscall(SYS_capset, &header, data);
}

/* The ambient set, exactly; each raised one must be permitted and inheritable already. */
static int raise_ambient(uint64_t ambient, int last, int *failed)
{
	*failed = -1;
	if (control(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0) != 0)
		return -1;
	for (int cap = 0; cap <= last; cap++) {
		if ((ambient >> cap & 1) && control(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)cap) != 0) {
			*failed = cap;
			return -1;
		}
	}
	return 0;
}

/*
 * What an OCI process asks for goes in runc's order. First, still as root: the
 * umask, the limits (so that a hard one may be raised), the bounding set, and
 * the permitted set kept across setuid (PR_SET_KEEPCAPS). 0, or the stage that
 * failed with errno and *detail.
 */
static int prepare_privileges(const struct vmf_process_spec *spec, int last, int *detail)
{
	if (spec->umask_given)
		umask(spec->umask);
	if (set_limits(spec, detail) != 0)
		return STAGE_RLIMIT;
	if (!spec->caps_given)
		return 0;
	if (drop_bounding(spec->caps.bounding, last, detail) != 0)
		return STAGE_BOUNDING;
	if (control(PR_SET_KEEPCAPS, 1, 0) != 0)
		return STAGE_CAPABILITIES;
	return 0;
}

/* Then, as the user: exactly the sets asked for, the ambient ones raised, and no_new_privs last; as prepare_privileges. */
static int finish_privileges(const struct vmf_process_spec *spec, int last, int *detail)
{
	if (spec->caps_given) {
		uint64_t known = last == 63 ? ~0ULL : (1ULL << (last + 1)) - 1;
		if (control(PR_SET_KEEPCAPS, 0, 0) != 0 || set_capability_sets(&spec->caps, known) != 0)
			return STAGE_CAPABILITIES;
		if (raise_ambient(spec->caps.ambient, last, detail) != 0)
			return STAGE_AMBIENT;
	}
	if (spec->no_new_privs && control(PR_SET_NO_NEW_PRIVS, 1, 0) != 0)
		return STAGE_NO_NEW_PRIVS;
	return 0;
}

/* The child's side: never returns. */
static void become(const struct vmf_process *process, const struct vmf_process_spec *spec, const struct vmf_identity *who,
		   const struct vmf_process_context *context, int report, int in, int out, int err)
{
	sigprocmask(SIG_SETMASK, &context->original_mask, NULL);
	setsid();
	if (process->tty) {
		char *name = ptsname(process->master);
		int slave = name ? open(name, O_RDWR) : -1;
		if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0)
			child_fails(report, STAGE_TERMINAL);
		in = out = err = slave;
	} else if (in < 0) {
		in = open("/dev/null", O_RDONLY);
	}
	/* Above 2 first, so that the dup2s below cannot overwrite one another's sources. */
	int fds[3] = {in, out, err};
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0 && fds[i] <= 2)
			fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], i) < 0)
			child_fails(report, STAGE_TERMINAL);
	if (context->in_cgroup && write_text(VMF_COMMAND_CGROUP "/cgroup.procs", "0") != 0)
		child_fails(report, STAGE_CGROUP);
	int last = spec->caps_given ? last_capability() : 0, detail = 0;
	int stage = prepare_privileges(spec, last, &detail);
	if (stage)
		child_fails_at(report, stage, detail);
	/* groups= replaces the supplementary groups /etc/group gives the user. */
	const gid_t *groups = spec->groups_given ? spec->groups : who->groups;
	int group_count = spec->groups_given ? spec->group_count : who->group_count;
	if (setgroups((size_t)group_count, groups) != 0 || setgid(who->gid) != 0 || setuid(who->uid) != 0)
		child_fails(report, STAGE_IDENTITY);
	if (chdir(spec->workdir) != 0)
		child_fails(report, STAGE_WORKDIR);
	stage = finish_privileges(spec, last, &detail);
	if (stage)
		child_fails_at(report, stage, detail);
	/* vmfactory cp: the init's own tar, in this child; the report pipe closes as exec would. */
	if (spec->copy_out || spec->copy_in) {
		close(report);
		_exit(spec->copy_out ? vmf_copy_out(spec->copy_out, STDOUT_FILENO) : vmf_copy_in(spec->copy_in, spec->copy_top, STDIN_FILENO));
	}
	environ = spec->envp.items;
	execvp(spec->argv.items[0], spec->argv.items);
	child_fails(report, STAGE_EXEC);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void vmf_process_release(struct vmf_process *process)
{
	close_fd(&process->out);
	close_fd(&process->err);
	if (process->in != process->master)
		close_fd(&process->in);
	close_fd(&process->master);
	process->in = -1;
	free(process->input);
	process->input = NULL;
	process->input_length = 0;
	for (int i = 0; i < 4; i++) {
		free(process->added[i]);
		process->added[i] = NULL;
	}
}

/* "cannot set the limit NOFILE to 1024/4096: ..." for the rlimit the child could not set. */
static int limit_failure(const struct vmf_process_spec *spec, int index, int error, char *err, size_t errlen)
{
	if (index < 0 || index >= spec->rlimit_count) {
		snprintf(err, errlen, "cannot set a limit: %s", strerror(error));
		return 125;
	}
	const struct vmf_rlimit *limit = &spec->rlimits[index];
	char soft[24] = "unlimited", hard[24] = "unlimited";
	if (limit->soft != RLIM_INFINITY)
		snprintf(soft, sizeof(soft), "%llu", limit->soft);
	if (limit->hard != RLIM_INFINITY)
		snprintf(hard, sizeof(hard), "%llu", limit->hard);
	snprintf(err, errlen, "cannot set the limit %s to %s/%s: %s", vmf_rlimit_name(limit->resource), soft, hard, strerror(error));
	return 125;
}

int vmf_process_start(struct vmf_process *process, struct vmf_process_spec *spec,
		      const struct vmf_process_context *context, char *err, size_t errlen)
{
	process->pid = -1;
	process->out = process->err = process->in = process->master = -1;
	process->tty = spec->tty;
	struct vmf_identity who;
	if (vmf_resolve_user(context->root_fd, spec->user, &who, err, errlen) != 0)
		return 125;
	complete_environment(process, spec, &who, context->hostname);

	/* The child's ends: stdin's read end, stdout's and stderr's write ends. */
	int child_in = -1, child_out = -1, child_err = -1, report[2] = {-1, -1};
	int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
	int failed = 0;
	if (spec->tty) {
		failed = open_terminal(&process->master, spec) != 0;
		process->out = fcntl(process->master, F_DUPFD_CLOEXEC, 3);
		process->in = spec->stdin_open ? process->master : -1;
		failed |= process->out < 0;
	} else {
		failed |= pipe2(pipes[1], O_CLOEXEC) != 0 || pipe2(pipes[2], O_CLOEXEC) != 0;
		if (spec->stdin_open)
			failed |= pipe2(pipes[0], O_CLOEXEC) != 0;
		process->out = pipes[1][0];
		process->err = pipes[2][0];
		process->in = pipes[0][1];
		child_out = pipes[1][1];
		child_err = pipes[2][1];
		child_in = pipes[0][0];
	}
	failed |= pipe2(report, O_CLOEXEC) != 0;
	if (failed) {
		snprintf(err, errlen, "cannot make the process's pipes or terminal: %s", strerror(errno));
		close_fd(&child_in);
		close_fd(&child_out);
		close_fd(&child_err);
		close_fd(&report[0]);
		close_fd(&report[1]);
		vmf_process_release(process);
		return 125;
	}
	pid_t child = fork();
	if (child == 0) {
		close(report[0]);
		become(process, spec, &who, context, report[1], child_in, child_out, child_err);
	}
	int fork_error = errno;
	close_fd(&child_in);
	close_fd(&child_out);
	close_fd(&child_err);
	close_fd(&report[1]);
	if (child < 0) {
		close_fd(&report[0]);
		vmf_process_release(process);
		snprintf(err, errlen, "cannot fork: %s", strerror(fork_error));
		return 125;
	}
	struct start_failure failure;
	ssize_t n;
	do
		n = read(report[0], &failure, sizeof(failure));
	while (n < 0 && errno == EINTR);
	close_fd(&report[0]);
	if (n != (ssize_t)sizeof(failure)) {
		process->pid = child;
		/* The init never waits on one process: every end it keeps is non-blocking. */
		int kept[3] = {process->out, process->err, process->in};
		for (int i = 0; i < 3; i++)
			if (kept[i] >= 0)
				fcntl(kept[i], F_SETFL, O_NONBLOCK);
		return 0;
	}
	waitpid(child, NULL, 0);
	vmf_process_release(process);
	const char *program = spec->argv.items[0];
	switch (failure.stage) {
	case STAGE_EXEC:
		if (failure.error == ENOENT) {
			snprintf(err, errlen, "exec: \"%s\": %s", program,
				 strchr(program, '/') ? "no such file or directory" : "executable file not found in $PATH");
			return 127;
		}
		snprintf(err, errlen, "exec: \"%s\": %s", program, strerror(failure.error));
		return 126;
	case STAGE_WORKDIR:
		snprintf(err, errlen, "cannot enter the working directory %s: %s", spec->workdir, strerror(failure.error));
		return 126;
	case STAGE_IDENTITY:
		snprintf(err, errlen, "cannot become uid %u gid %u: %s", (unsigned)who.uid, (unsigned)who.gid, strerror(failure.error));
		return 125;
	case STAGE_CGROUP:
		snprintf(err, errlen, "cannot join the --pids-limit cgroup: %s", strerror(failure.error));
		return 125;
	case STAGE_RLIMIT:
		return limit_failure(spec, failure.detail, failure.error, err, errlen);
	case STAGE_BOUNDING:
		snprintf(err, errlen, "cannot drop the capability %d from the bounding set: %s", failure.detail, strerror(failure.error));
		return 125;
	case STAGE_CAPABILITIES:
		snprintf(err, errlen, "cannot set the capabilities (effective %llx, permitted %llx, inheritable %llx): %s",
			 (unsigned long long)spec->caps.effective, (unsigned long long)spec->caps.permitted,
			 (unsigned long long)spec->caps.inheritable, strerror(failure.error));
		return 125;
	case STAGE_AMBIENT:
		if (failure.detail < 0)
			snprintf(err, errlen, "cannot clear the ambient capabilities: %s", strerror(failure.error));
		else
			snprintf(err, errlen, "cannot raise the ambient capability %d: %s", failure.detail, strerror(failure.error));
		return 125;
	case STAGE_NO_NEW_PRIVS:
		snprintf(err, errlen, "cannot set no_new_privs: %s", strerror(failure.error));
		return 125;
	default:
		snprintf(err, errlen, "cannot give the process its terminal: %s", strerror(failure.error));
		return 125;
	}
}
