/*
 * Starting a run's processes (process.h): the pipes or the terminal, the
 * cgroup, the user, the working folder and the environment; a child that cannot
 * start says why through a close-on-exec pipe.
 */
#define _GNU_SOURCE
#include "process.h"

#include "copy.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

/* What the child reports through its close-on-exec pipe when it cannot start. */
struct start_failure {
	int stage;
	int error;
};
enum { STAGE_TERMINAL = 1, STAGE_IDENTITY, STAGE_WORKDIR, STAGE_EXEC, STAGE_CGROUP };

static void child_fails(int pipe_fd, int stage)
{
	struct start_failure failure = {stage, errno};
	ssize_t ignored = write(pipe_fd, &failure, sizeof(failure));
	(void)ignored;
	_exit(127);
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
	if (setgroups((size_t)who->group_count, who->groups) != 0 || setgid(who->gid) != 0 || setuid(who->uid) != 0)
		child_fails(report, STAGE_IDENTITY);
	if (chdir(spec->workdir) != 0)
		child_fails(report, STAGE_WORKDIR);
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
	default:
		snprintf(err, errlen, "cannot give the process its terminal: %s", strerror(failure.error));
		return 125;
	}
}
