/*
 * vmfactory-init: PID 1 of a vmfactory microVM. It makes the machine behave
 * like a container: it says it is ready, sets up the usual mounts, runs one
 * entrypoint, reaps every process, forwards SIGTERM and SIGINT, reports how the
 * entrypoint ended and ends the machine. With `quiet` on the kernel command
 * line, its two lines are all the console shows.
 *
 * With vmf.run on the kernel command line (vmfactory run puts it there), it runs
 * in container mode instead (container.c): it takes the run's settings over the
 * run's channel, mounts the image's disk, switches into it and runs the command
 * and the host's execs there.
 *
 * Run as any other PID, for tests on the build host:
 *   init --explain [--conf FILE] [--cmdline TEXT] [-- ARGS...]  what it would run
 *   init --explain-run FILE      what a run's settings ask for
 *   init --decode-frames         the frames on stdin, as the init reads them (selftest.c)
 *   init --sample-frames         frames of every kind the init sends, on stdout
 *   init --resolve-user ROOT SPEC   a user looked up in the folder ROOT
 *   init --copy-out PATH         PATH as vmfactory cp's tar stream, on stdout (copy.c)
 *   init --copy-in PATH [TOP]    vmfactory cp's tar stream on stdin, extracted at PATH
 */
#define _GNU_SOURCE
#include "container.h"
#include "launch.h"
#include "selftest.h"
#include "copy.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <sys/io.h>
#endif

#define TAG VMF_TAG
#define CONF_PATH "/etc/vmfactory/init.conf"
/* QEMU's isa-debug-exit device, as vmfactory boot adds it: iobase=0xf4,iosize=4. */
#define DEBUG_EXIT_PORT 0xf4

char *vmf_read_fd(int fd, size_t limit)
{
	size_t size = 0, capacity = 4096;
	char *text = malloc(capacity);
	while (text && size < limit) {
		ssize_t n = read(fd, text + size, capacity - size - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size += (size_t)n;
		if (size + 1 == capacity) {
			char *grown = realloc(text, capacity *= 2);
			if (!grown)
				free(text);
			text = grown;
		}
	}
	close(fd);
	if (text)
		text[size] = '\0';
	return text;
}

char *vmf_read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? NULL : vmf_read_fd(fd, SIZE_MAX);
}

int vmf_fail(struct vmf_error *e, int code, const char *format, ...)
{
	va_list args;
	va_start(args, format);
	vsnprintf(e->message, sizeof(e->message), format, args);
	va_end(args);
	e->code = code;
	return -1;
}

size_t vmf_write_all(int fd, const char *data, size_t length)
{
	size_t written = 0;
	while (written < length) {
		ssize_t n = write(fd, data + written, length - written);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		written += (size_t)n;
	}
	return written;
}

void vmf_say(const char *format, ...)
{
	char line[512];
	va_list args;
	va_start(args, format);
	int n = vsnprintf(line, sizeof(line), format, args);
	va_end(args);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	/* One write per line, so that the workload's output does not split it. */
	ssize_t ignored = write(STDOUT_FILENO, line, (size_t)n);
	(void)ignored;
}

static void make_dir(const char *path, mode_t mode)
{
	if (mkdir(path, mode) != 0 && errno != EEXIST)
		vmf_say(TAG "cannot create %s: %s\n", path, strerror(errno));
}

static void mount_one(const char *source, const char *target, const char *type,
		      unsigned long flags, const char *options, mode_t mode)
{
	make_dir(target, mode);
	if (mount(source, target, type, flags, options) != 0 && errno != EBUSY)
		vmf_say(TAG "cannot mount %s on %s: %s\n", type, target, strerror(errno));
}

static void setup_filesystems(void)
{
	const unsigned long hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mount_one("sysfs", "/sys", "sysfs", hardened, NULL, 0555);
	mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", 0755);
	mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", 0755);
	mount_one("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777);
	mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777);
	mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0755);
	/* The links a container's /dev has; devtmpfs does not make them. */
	const char *links[][2] = {
		{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
		{"pts/ptmx", "/dev/ptmx"},
	};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
		if (symlink(links[i][0], links[i][1]) != 0 && errno != EEXIST)
			vmf_say(TAG "cannot link %s: %s\n", links[i][1], strerror(errno));
}

/* Starts the entrypoint with default signal handling and its own session. */
static pid_t start(struct vmf_launch *launch, const sigset_t *original)
{
	pid_t child = fork();
	if (child != 0)
		return child;
	sigprocmask(SIG_SETMASK, original, NULL);
	setsid();
	execvpe(launch->argv.items[0], launch->argv.items, launch->envp.items);
	int error = errno;
	vmf_say(TAG "cannot run %s: %s\n", launch->argv.items[0], strerror(error));
	_exit(error == ENOENT ? 127 : 126);
}

int vmf_exit_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

/* Reaps what has ended; returns how many, and the entrypoint's status once seen. */
static int reap(pid_t entrypoint, int *status, int *done)
{
	int reaped = 0, st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == entrypoint) {
			*status = st;
			*done = 1;
		} else {
			reaped++;
		}
	}
	return reaped;
}

/* Ends every process that is left, and collects them all. */
int vmf_end_the_rest(int *orphans)
{
	int left = 0;
	if (kill(-1, SIGTERM) == 0) {
		struct timespec pause = {0, 10 * 1000 * 1000};
		for (int i = 0; i < 100; i++) {
			pid_t pid;
			while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
				(*orphans)++;
			if (pid < 0 && errno == ECHILD)
				return 0;
			nanosleep(&pause, NULL);
		}
		kill(-1, SIGKILL);
	}
	for (;;) {
		pid_t pid = waitpid(-1, NULL, 0);
		if (pid > 0) {
			(*orphans)++;
			left++;
			continue;
		}
		if (errno == EINTR)
			continue;
		break;
	}
	return left;
}

int vmf_sync_at_end = 1;

void vmf_end_machine(int code)
{
	if (vmf_sync_at_end)
		sync();
#if defined(__x86_64__)
	/*
	 * With isa-debug-exit present, QEMU exits at once with status (code << 1) | 1.
	 * The device reads as zero; a port nobody claims reads as all ones.
	 */
	if (ioperm(DEBUG_EXIT_PORT, 4, 1) == 0 && inb(DEBUG_EXIT_PORT) == 0)
		outl((unsigned)code, DEBUG_EXIT_PORT);
	/* reboot=t with QEMU's -no-reboot turns the restart into QEMU's exit. */
	reboot(RB_AUTOBOOT);
#else
	reboot(RB_POWER_OFF);
#endif
	/* Only reached when the kernel refused: exiting lets the kernel end it. */
	_exit(code);
}

static int explain(int argc, char **argv, char **envp)
{
	char *conf = NULL, *cmdline = NULL;
	int i = 2;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--conf") == 0 && i + 1 < argc) {
			free(conf);
			conf = vmf_read_file(argv[++i]);
			if (!conf) {
				fprintf(stderr, "cannot read %s: %s\n", argv[i], strerror(errno));
				free(cmdline);
				return 2;
			}
		} else if (strcmp(argv[i], "--cmdline") == 0 && i + 1 < argc) {
			free(cmdline);
			cmdline = strdup(argv[++i]);
		} else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else {
			fprintf(stderr, "usage: init --explain [--conf FILE] [--cmdline TEXT] [-- ARGS...]\n");
			free(conf);
			free(cmdline);
			return 2;
		}
	}
	struct vmf_launch launch;
	char err[256];
	int status = 0;
	if (vmf_launch_parse(&launch, conf, cmdline, argc - i, argv + i, envp, err, sizeof(err)) != 0) {
		printf("error: %s\n", err);
		status = 1;
	} else {
		printf("hostname: %s\n", launch.hostname);
		printf("verbose: %d\n", launch.verbose);
		for (int a = 0; a < launch.argv.count; a++)
			printf("argv: %s\n", launch.argv.items[a]);
		for (int e = 0; e < launch.envp.count; e++)
			printf("env: %s\n", launch.envp.items[e]);
		vmf_launch_free(&launch);
	}
	free(conf);
	free(cmdline);
	return status;
}

/* `init --explain-run FILE`: what a run's settings ask for. */
static int explain_run(const char *path)
{
	char *text = vmf_read_file(path);
	if (!text) {
		fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno));
		return 2;
	}
	struct vmf_run run;
	char err[256];
	if (vmf_run_parse(&run, text, err, sizeof(err)) != 0) {
		printf("error: %s\n", err);
		return 1;
	}
	vmf_run_explain(&run);
	return 0;
}

/* Whether the kernel command line asks for container mode (/proc is mounted). */
static int asked_for_run(void)
{
	char *cmdline = vmf_read_file("/proc/cmdline");
	if (!cmdline)
		return 0;
	struct vmf_words words = {0};
	int found = 0;
	if (vmf_split_cmdline(cmdline, &words) == 0) {
		for (int i = 0; i < words.count && !found; i++) {
			if (strcmp(words.items[i], "--") == 0)
				break;
			found = strcmp(words.items[i], VMF_RUN_WORD) == 0;
		}
	}
	vmf_words_free(&words);
	free(cmdline);
	return found;
}

/* Container mode: the run's settings come over its channel. */
static void run_container(void)
{
	const unsigned long hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	/* Only what finding the devices needs; the rest is mounted inside the image. */
	mount_one("sysfs", "/sys", "sysfs", hardened, NULL, 0555);
	mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", 0755);
	vmf_run_container();
}

int main(int argc, char **argv, char **envp)
{
	if (getpid() != 1) {
		if (argc > 1 && strcmp(argv[1], "--explain") == 0)
			return explain(argc, argv, envp);
		if (argc == 3 && strcmp(argv[1], "--explain-run") == 0)
			return explain_run(argv[2]);
		if (argc == 2 && strcmp(argv[1], "--decode-frames") == 0)
			return vmf_decode_frames();
		if (argc == 2 && strcmp(argv[1], "--sample-frames") == 0)
			return vmf_sample_frames();
		if (argc == 4 && strcmp(argv[1], "--resolve-user") == 0)
			return vmf_resolve_user_at(argv[2], argv[3]);
		if (argc == 3 && strcmp(argv[1], "--copy-out") == 0)
			return vmf_copy_out(argv[2], STDOUT_FILENO);
		if ((argc == 3 || argc == 4) && strcmp(argv[1], "--copy-in") == 0)
			return vmf_copy_in(argv[2], argc == 4 ? argv[3] : NULL, STDIN_FILENO);
		fprintf(stderr, "vmfactory-init runs as PID 1 of a microVM; `%s --explain` shows what it would run\n", argv[0]);
		return 2;
	}

	struct timespec boot;
	clock_gettime(CLOCK_BOOTTIME, &boot);
	/* Without a /dev/console in the initrd the kernel gives init no stdout. */
	if (fcntl(STDOUT_FILENO, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR | O_NOCTTY);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
	vmf_say(TAG "ready %ld.%06ld\n", (long)boot.tv_sec, boot.tv_nsec / 1000);

	mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555);
	if (asked_for_run())
		run_container();
	setup_filesystems();

	struct vmf_launch launch;
	char err[256];
	char *conf = vmf_read_file(CONF_PATH);
	char *cmdline = vmf_read_file("/proc/cmdline");
	if (vmf_launch_parse(&launch, conf, cmdline, argc - 1, argv + 1, envp, err, sizeof(err)) != 0) {
		vmf_say(TAG "%s\n", err);
		vmf_say(TAG "exit 2\n");
		vmf_end_machine(2);
	}
	if (sethostname(launch.hostname, strlen(launch.hostname)) != 0)
		vmf_say(TAG "cannot set the hostname %s: %s\n", launch.hostname, strerror(errno));
	if (chdir("/") != 0)
		vmf_say(TAG "cannot enter /: %s\n", strerror(errno));

	/* Signals arrive through sigwaitinfo, never between a check and a wait. */
	sigset_t handled, original;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigprocmask(SIG_BLOCK, &handled, &original);

	int status = 0, done = 1, orphans = 0;
	pid_t entrypoint = -1;
	if (launch.argv.count > 0) {
		entrypoint = start(&launch, &original);
		if (entrypoint < 0) {
			vmf_say(TAG "cannot start %s: %s\n", launch.argv.items[0], strerror(errno));
			status = 127 << 8;
		} else {
			done = 0;
		}
	}
	while (!done) {
		orphans += reap(entrypoint, &status, &done);
		if (done)
			break;
		siginfo_t info;
		int signal_number = sigwaitinfo(&handled, &info);
		if (signal_number == SIGTERM || signal_number == SIGINT)
			kill(entrypoint, signal_number);
	}
	int code = vmf_exit_code(status);
	int stubborn = vmf_end_the_rest(&orphans);
	if (launch.verbose)
		vmf_say(TAG "reaped %d orphaned processes (%d needed SIGKILL); none left\n", orphans, stubborn);
	vmf_say(TAG "exit %d\n", code);
	vmf_end_machine(code);
	return code;
}
