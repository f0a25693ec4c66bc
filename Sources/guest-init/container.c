/*
 * Container mode: PID 1 of a `vmfactory run` machine.
 *
 * The host and the init talk over named virtio-serial ports: vmf.control
 * (both ways: "started", "exit N", "error CODE TEXT" from here; "signal N" and
 * "winsize ROWS COLS" from the host), vmf.stdout, vmf.stderr, vmf.stdin (-i)
 * and vmf.tty (-t). The command's descriptors are the ports themselves, so its
 * bytes reach the host unchanged and a write returns only once QEMU has taken
 * it; the kernel console never carries them.
 */
#define _GNU_SOURCE
#include "container.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/klog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define NEWROOT "/newroot"
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* How long devices and ports may take to appear after init starts. */
#define DEVICE_WAIT_MS 10000

extern char **environ;

/* ---- run.conf ---- */

static int words_add(struct vmf_words *words, char *word)
{
	if (words->count + 2 > words->capacity) {
		int capacity = words->capacity ? words->capacity * 2 : 16;
		char **items = realloc(words->items, (size_t)capacity * sizeof(char *));
		if (!items)
			return -1;
		words->items = items;
		words->capacity = capacity;
	}
	words->items[words->count++] = word;
	words->items[words->count] = NULL;
	return 0;
}

/* NAME=VALUE into the environment, replacing an entry of the same name. */
static int env_set(struct vmf_words *env, char *entry)
{
	const char *equals = strchr(entry, '=');
	if (!equals || equals == entry)
		return -1;
	size_t name = (size_t)(equals - entry) + 1;
	for (int i = 0; i < env->count; i++) {
		if (strncmp(env->items[i], entry, name) == 0) {
			env->items[i] = entry;
			return 0;
		}
	}
	return words_add(env, entry);
}

static int env_has(const struct vmf_words *env, const char *name)
{
	size_t length = strlen(name);
	for (int i = 0; i < env->count; i++)
		if (strncmp(env->items[i], name, length) == 0 && env->items[i][length] == '=')
			return 1;
	return 0;
}

/* Undoes the host's escaping in place: \n is a line break, \\ a backslash. */
static int unescape(char *value)
{
	char *out = value;
	for (char *in = value; *in; in++) {
		if (*in != '\\') {
			*out++ = *in;
			continue;
		}
		in++;
		if (*in == 'n')
			*out++ = '\n';
		else if (*in == '\\')
			*out++ = '\\';
		else
			return -1;
	}
	*out = '\0';
	return 0;
}

static int parse_volume(struct vmf_run *run, char *value)
{
	if (run->volume_count >= VMF_MAX_VOLUMES)
		return -1;
	struct vmf_volume *volume = &run->volumes[run->volume_count];
	char *fields[3];
	for (int i = 0; i < 3; i++) {
		fields[i] = value;
		value = strchr(value, ' ');
		if (!value)
			return -1;
		*value++ = '\0';
	}
	if (strcmp(fields[0], "9p") != 0 && strcmp(fields[0], "virtiofs") != 0)
		return -1;
	if (strcmp(fields[2], "ro") != 0 && strcmp(fields[2], "rw") != 0)
		return -1;
	if (value[0] != '/')
		return -1;
	volume->type = fields[0];
	volume->tag = fields[1];
	volume->readonly = strcmp(fields[2], "ro") == 0;
	volume->path = value;
	run->volume_count++;
	return 0;
}

/* One tmpfs option is a mount flag or one of tmpfs's own; anything else is refused. */
static int tmpfs_option(struct vmf_tmpfs *tmpfs, char *option, char *data, size_t *used, size_t room)
{
	static const struct {
		const char *name;
		unsigned long set, clear;
	} flags[] = {
		{"ro", MS_RDONLY, 0}, {"rw", 0, MS_RDONLY}, {"noexec", MS_NOEXEC, 0}, {"exec", 0, MS_NOEXEC},
		{"nosuid", MS_NOSUID, 0}, {"suid", 0, MS_NOSUID}, {"nodev", MS_NODEV, 0}, {"dev", 0, MS_NODEV},
	};
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		if (strcmp(option, flags[i].name) == 0) {
			tmpfs->flags = (tmpfs->flags | flags[i].set) & ~flags[i].clear;
			return 0;
		}
	}
	static const char *const own[] = {"size=", "mode=", "uid=", "gid=", "nr_inodes="};
	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		size_t prefix = strlen(own[i]), length = strlen(option);
		if (strncmp(option, own[i], prefix) != 0 || length == prefix)
			continue;
		for (const char *c = option + prefix; *c; c++)
			if (!isalnum((unsigned char)*c) && *c != '%')
				return -1;
		/* The option, a comma before it unless it is the first, and the NUL. */
		if (*used + length + (*used ? 1 : 0) + 1 > room)
			return -1;
		if (*used)
			data[(*used)++] = ',';
		memcpy(data + *used, option, length + 1);
		*used += length;
		return 0;
	}
	return -1;
}

/* "OPTIONS PATH": OPTIONS comma-separated, or "-" for none. */
static int parse_tmpfs(struct vmf_run *run, char *value)
{
	if (run->tmpfs_count >= VMF_MAX_TMPFS)
		return -1;
	struct vmf_tmpfs *tmpfs = &run->tmpfs[run->tmpfs_count];
	char *path = strchr(value, ' ');
	if (!path || path[1] != '/')
		return -1;
	*path++ = '\0';
	/* The data is never longer than the options it comes from. */
	size_t room = strlen(value) + 1, used = 0;
	char *data = malloc(room);
	if (!data)
		return -1;
	data[0] = '\0';
	tmpfs->flags = 0;
	if (strcmp(value, "-") != 0) {
		for (char *option = strtok(value, ","); option; option = strtok(NULL, ","))
			if (tmpfs_option(tmpfs, option, data, &used, room) != 0) {
				free(data);
				return -1;
			}
	}
	tmpfs->data = data;
	tmpfs->path = path;
	run->tmpfs_count++;
	return 0;
}

static int parse_number(const char *value, int *number)
{
	char *end;
	errno = 0;
	long parsed = strtol(value, &end, 10);
	if (errno || end == value || *end || parsed < 0 || parsed > 65535)
		return -1;
	*number = (int)parsed;
	return 0;
}

static int parse_size(const char *value, unsigned long long *size)
{
	char *end;
	errno = 0;
	unsigned long long parsed = strtoull(value, &end, 10);
	if (errno || end == value || *end || value[0] == '-' || parsed == 0 || parsed > (1ULL << 50))
		return -1;
	*size = parsed;
	return 0;
}

static int parse_setting(struct vmf_run *run, const char *key, char *value)
{
	if (strcmp(key, "arg") == 0)
		return words_add(&run->argv, value);
	if (strcmp(key, "env") == 0)
		return env_set(&run->envp, value);
	if (strcmp(key, "user") == 0)
		run->user = value;
	else if (strcmp(key, "workdir") == 0)
		run->workdir = value;
	else if (strcmp(key, "hostname") == 0)
		run->hostname = value;
	else if (strcmp(key, "address") == 0)
		run->address = value;
	else if (strcmp(key, "netmask") == 0)
		run->netmask = value;
	else if (strcmp(key, "gateway") == 0)
		run->gateway = value;
	else if (strcmp(key, "dns") == 0)
		run->dns = value;
	else if (strcmp(key, "network") == 0) {
		if (strcmp(value, "user") != 0 && strcmp(value, "none") != 0)
			return -1;
		run->network = strcmp(value, "user") == 0;
	} else if (strcmp(key, "volume") == 0)
		return parse_volume(run, value);
	else if (strcmp(key, "tmpfs") == 0)
		return parse_tmpfs(run, value);
	else if (strcmp(key, "shmsize") == 0)
		return parse_size(value, &run->shm_bytes);
	else if (strcmp(key, "pidslimit") == 0)
		return parse_size(value, &run->pids_limit);
	else if (strcmp(key, "readonly") == 0)
		return parse_number(value, &run->readonly);
	else if (strcmp(key, "stdin") == 0)
		return parse_number(value, &run->stdin_open);
	else if (strcmp(key, "tty") == 0)
		return parse_number(value, &run->tty);
	else if (strcmp(key, "rows") == 0)
		return parse_number(value, &run->rows);
	else if (strcmp(key, "cols") == 0)
		return parse_number(value, &run->cols);
	else if (strcmp(key, "stopsignal") == 0)
		return parse_number(value, &run->stop_signal);
	else if (strcmp(key, "verbose") == 0)
		return parse_number(value, &run->verbose);
	else if (strcmp(key, "keep") == 0)
		return parse_number(value, &run->keep);
	else
		return -2;
	return 0;
}

int vmf_run_parse(struct vmf_run *run, char *text, char *err, size_t errlen)
{
	memset(run, 0, sizeof(*run));
	run->user = "";
	run->workdir = "/";
	run->hostname = "vmfactory";
	run->stop_signal = SIGTERM;
	run->shm_bytes = 64ULL << 20;
	int line_number = 0;
	char *line = text;
	while (line) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		line_number++;
		if (*line == '\0' || *line == '#') {
			line = next;
			continue;
		}
		char *value = strchr(line, '=');
		if (!value || unescape(value + 1) != 0) {
			snprintf(err, errlen, "run.conf:%d: expected key=value", line_number);
			return -1;
		}
		*value++ = '\0';
		int result = parse_setting(run, line, value);
		if (result == -2) {
			snprintf(err, errlen, "run.conf:%d: unknown key '%s'", line_number, line);
			return -1;
		}
		if (result != 0) {
			snprintf(err, errlen, "run.conf:%d: bad value for %s", line_number, line);
			return -1;
		}
		line = next;
	}
	if (run->argv.count == 0) {
		snprintf(err, errlen, "run.conf: no command");
		return -1;
	}
	if (run->stop_signal < 1 || run->stop_signal >= NSIG) {
		snprintf(err, errlen, "run.conf: stop signal %d is not a signal", run->stop_signal);
		return -1;
	}
	return 0;
}

void vmf_run_explain(const struct vmf_run *run)
{
	for (int i = 0; i < run->argv.count; i++)
		printf("argv: %s\n", run->argv.items[i]);
	for (int i = 0; i < run->envp.count; i++)
		printf("env: %s\n", run->envp.items[i]);
	printf("user: %s\nworkdir: %s\nhostname: %s\n", run->user, run->workdir, run->hostname);
	printf("readonly: %d\nstdin: %d\ntty: %d\nstop-signal: %d\nshm-size: %llu\npids-limit: %llu\n", run->readonly, run->stdin_open, run->tty, run->stop_signal, run->shm_bytes, run->pids_limit);
	printf("network: %s\n", run->network ? "user" : "none");
	for (int i = 0; i < run->volume_count; i++)
		printf("volume: %s %s %s %s\n", run->volumes[i].type, run->volumes[i].tag,
		       run->volumes[i].readonly ? "ro" : "rw", run->volumes[i].path);
	for (int i = 0; i < run->tmpfs_count; i++)
		printf("tmpfs: %s%s%s%s [%s] %s\n", run->tmpfs[i].flags & MS_RDONLY ? "ro" : "rw",
		       run->tmpfs[i].flags & MS_NOEXEC ? ",noexec" : "", run->tmpfs[i].flags & MS_NOSUID ? ",nosuid" : "",
		       run->tmpfs[i].flags & MS_NODEV ? ",nodev" : "", run->tmpfs[i].data, run->tmpfs[i].path);
}

/* ---- the channel to the host ---- */

static int control_fd = -1;

/* Writes everything it can; returns how much was written. */
static size_t write_all(int fd, const char *data, size_t length)
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

static void tell_host(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void tell_host(const char *format, ...)
{
	char line[1024];
	va_list args;
	va_start(args, format);
	int n = vsnprintf(line, sizeof(line) - 1, format, args);
	va_end(args);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	/* One line, whatever the message held. */
	for (int i = 0; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	if (control_fd >= 0)
		write_all(control_fd, line, (size_t)n);
	else
		vmf_say(VMF_TAG "%.*s", n, line);
}

static void wait_for_bye(long ms);

/* Fails the run before the command started: vmfactory exits with code. */
static void fail(int code, const char *format, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(int code, const char *format, ...)
{
	char message[900];
	va_list args;
	va_start(args, format);
	vsnprintf(message, sizeof(message), format, args);
	va_end(args);
	vmf_say(VMF_TAG "%s\n", message);
	tell_host("error %d %s", code, message);
	wait_for_bye(5000);
	vmf_end_the_rest(&(int){0});
	vmf_end_machine(code);
}

static long elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

static void pause_ms(long ms)
{
	struct timespec pause = {0, ms * 1000 * 1000};
	nanosleep(&pause, NULL);
}

/*
 * Opens the ports named in `names` into `fds` (-1 for a NULL name) with one scan of
 * sysfs a round; ports are announced by the host shortly after the driver starts.
 * Returns 0 once all are open, -1 after DEVICE_WAIT_MS.
 */
static int open_ports(const char *const *names, const int *flags, int *fds, int count)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < count; i++)
		fds[i] = -1;
	for (;;) {
		int missing = 0;
		DIR *ports = opendir("/sys/class/virtio-ports");
		struct dirent *entry;
		while (ports && (entry = readdir(ports))) {
			if (entry->d_name[0] == '.')
				continue;
			char path[300];
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", entry->d_name);
			char *text = vmf_read_file(path);
			if (!text)
				continue;
			text[strcspn(text, "\n")] = '\0';
			for (int i = 0; i < count; i++) {
				if (names[i] && fds[i] < 0 && strcmp(text, names[i]) == 0) {
					snprintf(path, sizeof(path), "/dev/%s", entry->d_name);
					fds[i] = open(path, flags[i] | O_CLOEXEC | O_NOCTTY);
				}
			}
			free(text);
		}
		if (ports)
			closedir(ports);
		for (int i = 0; i < count; i++)
			missing += names[i] && fds[i] < 0;
		if (!missing)
			return 0;
		if (elapsed_ms(&start) > DEVICE_WAIT_MS)
			return -1;
		pause_ms(1);
	}
}

static void wait_for(const char *path)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (access(path, F_OK) != 0) {
		if (elapsed_ms(&start) > DEVICE_WAIT_MS)
			fail(125, "%s did not appear within %d s", path, DEVICE_WAIT_MS / 1000);
		pause_ms(1);
	}
}

/* With verbose: how far the run got, in seconds since boot, on the console. */
static void step(const struct vmf_run *run, const char *what)
{
	if (!run->verbose)
		return;
	struct timespec now;
	clock_gettime(CLOCK_BOOTTIME, &now);
	vmf_say(VMF_TAG "%ld.%06ld %s\n", (long)now.tv_sec, now.tv_nsec / 1000, what);
}

/* ---- the root and what is mounted in it ---- */

static int make_path(const char *path, mode_t mode)
{
	char buffer[4096];
	if (snprintf(buffer, sizeof(buffer), "%s", path) >= (int)sizeof(buffer))
		return -1;
	for (char *slash = buffer + 1; *slash; slash++) {
		if (*slash != '/')
			continue;
		*slash = '\0';
		if (mkdir(buffer, 0755) != 0 && errno != EEXIST)
			return -1;
		*slash = '/';
	}
	if (mkdir(buffer, mode) != 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* Mounts inside the new root; `required` mounts fail the run. */
static void mount_in(const char *source, const char *target, const char *type, unsigned long flags,
		     const char *options, mode_t mode, int required)
{
	if (make_path(target, mode) != 0 || mount(source, target, type, flags, options) != 0) {
		if (required)
			fail(125, "cannot mount %s on %s: %s", type, target, strerror(errno));
		vmf_say(VMF_TAG "cannot mount %s on %s: %s\n", type, target, strerror(errno));
	}
}

static void move_into_root(const char *from, const char *to)
{
	if (make_path(to, 0755) != 0)
		fail(125, "the image has no %s and it cannot be made: %s", to + strlen(NEWROOT), strerror(errno));
	if (mount(from, to, NULL, MS_MOVE, NULL) != 0)
		fail(125, "cannot move %s into the image: %s", from, strerror(errno));
}

/* Deletes the initramfs's files (not what is mounted on it) to free its memory. */
static void remove_tree(int dirfd, dev_t device)
{
	DIR *dir = fdopendir(dirfd);
	if (!dir) {
		close(dirfd);
		return;
	}
	struct dirent *entry;
	while ((entry = readdir(dir))) {
		if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dirfd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != device)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int child = openat(dirfd, entry->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (child >= 0)
				remove_tree(child, device);
			unlinkat(dirfd, entry->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd, entry->d_name, 0);
		}
	}
	closedir(dir);
}

/*
 * Moves the image's root over the initramfs and enters it. Returns a descriptor of the
 * initramfs's root, whose files free_initramfs deletes once the command runs: the command
 * need not wait for it.
 */
static int switch_root(void)
{
	move_into_root("/dev", NEWROOT "/dev");
	move_into_root("/proc", NEWROOT "/proc");
	move_into_root("/sys", NEWROOT "/sys");
	int initramfs = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (chdir(NEWROOT) != 0)
		fail(125, "cannot enter the image's root: %s", strerror(errno));
	if (mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
		fail(125, "cannot switch into the image's root: %s", strerror(errno));
	return initramfs;
}

/* Deletes the initramfs's files (not what is mounted on it), freeing its memory. */
static void free_initramfs(int initramfs)
{
	struct stat st;
	if (initramfs < 0)
		return;
	if (fstat(initramfs, &st) == 0)
		remove_tree(initramfs, st.st_dev);
	else
		close(initramfs);
}

static void mount_root(const struct vmf_run *run)
{
	wait_for("/dev/vda");
	if (mkdir(NEWROOT, 0755) != 0 && errno != EEXIST)
		fail(125, "cannot create " NEWROOT ": %s", strerror(errno));
	unsigned long flags = run->readonly ? MS_RDONLY : 0;
	/* A removed run's overlay is thrown away: its writes need no journal. */
	const char *options = run->keep ? NULL : "noload";
	if (mount("/dev/vda", NEWROOT, "ext4", flags, options) != 0)
		fail(125, "cannot mount the image's disk (/dev/vda, ext4): %s", strerror(errno));
}

/*
 * What a container has mounted besides its root, after the switch: what docker mounts. The
 * image's own /tmp and /run stay as the image has them (--tmpfs asks for more).
 */
static void mount_container_filesystems(const struct vmf_run *run)
{
	const unsigned long hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mount_in("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,gid=5,mode=0620,ptmxmode=0666", 0755, 1);
	char shm[64];
	snprintf(shm, sizeof(shm), "mode=1777,size=%llu", run->shm_bytes);
	mount_in("shm", "/dev/shm", "tmpfs", hardened, shm, 01777, 1);
	mount_in("mqueue", "/dev/mqueue", "mqueue", hardened, NULL, 0755, 0);
	if (access("/sys/fs/cgroup", F_OK) == 0)
		mount_in("cgroup2", "/sys/fs/cgroup", "cgroup2", hardened, NULL, 0555, 0);
	const char *links[][2] = {
		{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
	};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
		if (symlink(links[i][0], links[i][1]) != 0 && errno != EEXIST)
			vmf_say(VMF_TAG "cannot link %s: %s\n", links[i][1], strerror(errno));
	/* The new devpts instance's multiplexer. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") != 0)
		vmf_say(VMF_TAG "cannot link /dev/ptmx: %s\n", strerror(errno));
}

/*
 * Where a read-only root's host files are written before they are bind-mounted over the
 * image's: a tmpfs on a folder of the init's /dev, detached once the files are in place, so
 * that nothing of it shows in the image but the files themselves.
 */
#define STAGING "/dev/.vmfactory-staging"

/*
 * Puts `text` at `path` in the image: written in place on a writable root (the
 * writes land in the run's overlay), bind-mounted over an existing file on a
 * read-only one, as container engines do.
 */
static void place_file(const struct vmf_run *run, const char *path, const char *text)
{
	if (!run->readonly) {
		make_path("/etc", 0755);
		unlink(path);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			write_all(fd, text, strlen(text));
			close(fd);
			return;
		}
	}
	char staged[256];
	snprintf(staged, sizeof(staged), STAGING "/%s", strrchr(path, '/') + 1);
	int fd = open(staged, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		vmf_say(VMF_TAG "cannot write %s: %s\n", staged, strerror(errno));
		return;
	}
	write_all(fd, text, strlen(text));
	close(fd);
	struct stat st;
	if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && mount(staged, path, NULL, MS_BIND, NULL) == 0) {
		mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
		return;
	}
	if (run->verbose)
		vmf_say(VMF_TAG "%s is left as the image has it (read-only root)\n", path);
}

/* /etc/hosts as docker writes it: the loopback names of both families, then the host name. */
static void format_hosts(const struct vmf_run *run, char *text, size_t size)
{
	snprintf(text, size,
		 "127.0.0.1\tlocalhost\n"
		 "::1\tlocalhost ip6-localhost ip6-loopback\n"
		 "fe00::0\tip6-localnet\n"
		 "ff00::0\tip6-mcastprefix\n"
		 "ff02::1\tip6-allnodes\n"
		 "ff02::2\tip6-allrouters\n"
		 "%s\t%s\n",
		 run->network && run->address ? run->address : "127.0.1.1", run->hostname);
}

static void write_host_files(const struct vmf_run *run)
{
	int staging = run->readonly && make_path(STAGING, 0700) == 0
		&& mount("tmpfs", STAGING, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0700") == 0;
	if (run->readonly && !staging)
		vmf_say(VMF_TAG "cannot stage the host files: %s\n", strerror(errno));
	char text[1024];
	snprintf(text, sizeof(text), "%s\n", run->hostname);
	place_file(run, "/etc/hostname", text);
	format_hosts(run, text, sizeof(text));
	place_file(run, "/etc/hosts", text);
	if (run->network && run->dns) {
		snprintf(text, sizeof(text), "nameserver %s\n", run->dns);
		place_file(run, "/etc/resolv.conf", text);
	}
	if (staging)
		umount2(STAGING, MNT_DETACH);
	if (run->readonly)
		rmdir(STAGING);
}

static int path_depth(const char *path)
{
	int depth = 0;
	for (const char *c = path; *c; c++)
		depth += *c == '/' && c[1] && c[1] != '/';
	return depth;
}

/* A mount point the image lacks cannot be made on a read-only root (the disk is read-only in QEMU). */
static void make_mount_point(const char *path)
{
	if (make_path(path, 0755) == 0)
		return;
	if (errno == EROFS)
		fail(125, "cannot create the mount point %s: the image has no such folder and --read-only keeps its root read-only; "
			  "mount at a folder the image has, or drop --read-only", path);
	fail(125, "cannot create the mount point %s in the image: %s", path, strerror(errno));
}

static void mount_volume(const struct vmf_volume *volume)
{
	make_mount_point(volume->path);
	unsigned long flags = volume->readonly ? MS_RDONLY : 0;
	int mounted = strcmp(volume->type, "9p") == 0
		? mount(volume->tag, volume->path, "9p", flags, "trans=virtio,version=9p2000.L,msize=262144")
		: mount(volume->tag, volume->path, "virtiofs", flags, NULL);
	if (mounted != 0)
		fail(125, "cannot mount the %s volume %s on %s: %s", volume->type, volume->tag, volume->path, strerror(errno));
}

static void mount_tmpfs(const struct vmf_tmpfs *tmpfs)
{
	make_mount_point(tmpfs->path);
	if (mount("tmpfs", tmpfs->path, "tmpfs", tmpfs->flags, tmpfs->data[0] ? tmpfs->data : NULL) != 0)
		fail(125, "cannot mount a tmpfs on %s (%s): %s", tmpfs->path, tmpfs->data, strerror(errno));
}

/* Volumes and tmpfs mounts, shallower paths first, so that a mount inside another lands on it. */
static void mount_volumes(const struct vmf_run *run)
{
	for (int depth = 0; depth <= PATH_MAX / 2; depth++) {
		int deeper = 0;
		for (int i = 0; i < run->volume_count; i++) {
			int d = path_depth(run->volumes[i].path);
			if (d == depth)
				mount_volume(&run->volumes[i]);
			deeper |= d > depth;
		}
		for (int i = 0; i < run->tmpfs_count; i++) {
			int d = path_depth(run->tmpfs[i].path);
			if (d == depth)
				mount_tmpfs(&run->tmpfs[i]);
			deeper |= d > depth;
		}
		if (!deeper)
			break;
	}
}

/* ---- network ---- */

static int set_address(int sock, const char *interface, unsigned long request, const char *address)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	struct sockaddr_in *in = (struct sockaddr_in *)&ifr.ifr_addr;
	in->sin_family = AF_INET;
	if (inet_pton(AF_INET, address, &in->sin_addr) != 1) {
		errno = EINVAL;
		return -1;
	}
	return ioctl(sock, request, &ifr);
}

static int bring_up(int sock, const char *interface)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

static void configure_network(const struct vmf_run *run)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		vmf_say(VMF_TAG "no IPv4 sockets: %s\n", strerror(errno));
		return;
	}
	/* The kernel gives lo 127.0.0.1 when it comes up. */
	if (bring_up(sock, "lo") != 0)
		vmf_say(VMF_TAG "cannot bring lo up: %s\n", strerror(errno));
	if (run->network) {
		wait_for("/sys/class/net/eth0");
		if (set_address(sock, "eth0", SIOCSIFADDR, run->address) != 0
		    || set_address(sock, "eth0", SIOCSIFNETMASK, run->netmask) != 0
		    || bring_up(sock, "eth0") != 0)
			fail(125, "cannot configure eth0 as %s/%s: %s", run->address, run->netmask, strerror(errno));
		struct rtentry route;
		memset(&route, 0, sizeof(route));
		struct sockaddr_in *gateway = (struct sockaddr_in *)&route.rt_gateway;
		gateway->sin_family = AF_INET;
		inet_pton(AF_INET, run->gateway, &gateway->sin_addr);
		((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		if (ioctl(sock, SIOCADDRT, &route) != 0 && errno != EEXIST)
			fail(125, "cannot add the default route via %s: %s", run->gateway, strerror(errno));
	}
	close(sock);
}

/*
 * What docker gives every container beside its mounts: open files up to 1048576 (dockerd's own
 * limit, which its containers inherit), ports below 1024 and ping sockets for every user (the
 * two sysctls it sets unless the container shares the host's network).
 */
static void container_defaults(void)
{
	struct rlimit files = {1048576, 1048576};
	if (setrlimit(RLIMIT_NOFILE, &files) != 0)
		vmf_say(VMF_TAG "cannot raise the open-file limit: %s\n", strerror(errno));
	const char *settings[][2] = {
		{"/proc/sys/net/ipv4/ip_unprivileged_port_start", "0\n"},
		{"/proc/sys/net/ipv4/ping_group_range", "0 2147483647\n"},
	};
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		int fd = open(settings[i][0], O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write_all(fd, settings[i][1], strlen(settings[i][1])) != strlen(settings[i][1]))
			vmf_say(VMF_TAG "cannot set %s: %s\n", settings[i][0] + strlen("/proc/sys/"), strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}

/* ---- the command's user ---- */

struct identity {
	uid_t uid;
	gid_t gid;
	int group_count;
	gid_t groups[64];
	char home[512];
	char name[256];
};

static int all_digits(const char *text)
{
	if (!*text)
		return 0;
	for (; *text; text++)
		if (!isdigit((unsigned char)*text))
			return 0;
	return 1;
}

/* Splits an /etc/passwd or /etc/group line at ':' into at most max fields. */
static int fields_of(char *line, char **fields, int max)
{
	int count = 0;
	while (count < max) {
		fields[count++] = line;
		line = strchr(line, ':');
		if (!line)
			break;
		*line++ = '\0';
	}
	return count;
}

/* Finds a user by name or number in /etc/passwd; 0 when found. */
static int find_user(const char *wanted, struct identity *who)
{
	char *text = vmf_read_file("/etc/passwd");
	int found = -1;
	for (char *line = text, *next; found != 0 && line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *f[7];
		if (fields_of(line, f, 7) < 7)
			continue;
		int match = all_digits(wanted) ? (uid_t)strtoul(f[2], NULL, 10) == (uid_t)strtoul(wanted, NULL, 10)
					       : strcmp(f[0], wanted) == 0;
		if (!match)
			continue;
		who->uid = (uid_t)strtoul(f[2], NULL, 10);
		who->gid = (gid_t)strtoul(f[3], NULL, 10);
		snprintf(who->name, sizeof(who->name), "%s", f[0]);
		snprintf(who->home, sizeof(who->home), "%s", f[5]);
		found = 0;
	}
	free(text);
	return found;
}

/* A group's number by name or number; the supplementary groups of `user` too. */
static int scan_groups(const char *wanted, gid_t *gid, struct identity *who)
{
	char *text = vmf_read_file("/etc/group");
	int found = wanted ? -1 : 0;
	for (char *line = text, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *f[4];
		if (fields_of(line, f, 4) < 4)
			continue;
		gid_t number = (gid_t)strtoul(f[2], NULL, 10);
		if (wanted && (all_digits(wanted) ? number == (gid_t)strtoul(wanted, NULL, 10) : strcmp(f[0], wanted) == 0)) {
			*gid = number;
			found = 0;
		}
		if (!who->name[0])
			continue;
		for (char *member = strtok(f[3], ","); member; member = strtok(NULL, ","))
			if (strcmp(member, who->name) == 0 && who->group_count < 64)
				who->groups[who->group_count++] = number;
	}
	free(text);
	return found;
}

/* USER[:GROUP] as container engines read it, in the image's /etc/passwd and /etc/group. */
static void resolve_user(const char *spec, struct identity *who)
{
	memset(who, 0, sizeof(*who));
	char user[256], *group = NULL;
	snprintf(user, sizeof(user), "%s", *spec ? spec : "0");
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = '\0';
		group = colon + 1;
	}
	if (find_user(user, who) != 0) {
		if (!all_digits(user))
			fail(125, "unable to find user %s: no matching entries in the image's /etc/passwd", user);
		who->uid = (uid_t)strtoul(user, NULL, 10);
		who->gid = 0;
		snprintf(who->home, sizeof(who->home), "%s", who->uid == 0 ? "/root" : "/");
	}
	gid_t gid = who->gid;
	if (scan_groups(group, &gid, who) != 0) {
		if (!all_digits(group))
			fail(125, "unable to find group %s: no matching entries in the image's /etc/group", group);
		gid = (gid_t)strtoul(group, NULL, 10);
	}
	who->gid = gid;
	/* The primary group comes first, once. */
	gid_t groups[65] = {gid};
	int count = 1;
	for (int i = 0; i < who->group_count; i++) {
		int seen = 0;
		for (int j = 0; j < count; j++)
			seen |= groups[j] == who->groups[i];
		if (!seen)
			groups[count++] = who->groups[i];
	}
	memcpy(who->groups, groups, sizeof(gid_t) * (size_t)(count < 64 ? count : 64));
	who->group_count = count < 64 ? count : 64;
}

/* ---- the command ---- */

/* What the child reports through its close-on-exec pipe when it cannot start. */
struct start_failure {
	int stage;
	int error;
};
enum { STAGE_TERMINAL = 1, STAGE_IDENTITY, STAGE_WORKDIR, STAGE_EXEC, STAGE_CGROUP };

static void child_fails(int pipe_fd, int stage)
{
	struct start_failure failure = {stage, errno};
	write_all(pipe_fd, (const char *)&failure, sizeof(failure));
	_exit(127);
}

static int open_terminal(int *master, const struct vmf_run *run)
{
	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (*master < 0 || grantpt(*master) != 0 || unlockpt(*master) != 0)
		return -1;
	if (run->rows > 0 && run->cols > 0) {
		struct winsize size = {.ws_row = (unsigned short)run->rows, .ws_col = (unsigned short)run->cols};
		ioctl(*master, TIOCSWINSZ, &size);
	}
	return 0;
}

struct channels {
	int in;
	int out;
	int err;
	int tty;
	int master;
};

/* The command's cgroup, for --pids-limit (docker's): cgroup2 at /sys/fs/cgroup. */
#define COMMAND_CGROUP "/sys/fs/cgroup/vmfactory-command"

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

/*
 * The command's cgroup for --pids-limit (docker's): its pids.max. Made only when asked for:
 * under TCG even these few writes cost a boot several milliseconds. Returns whether the
 * command joins it (before exec).
 */
static int make_command_cgroup(const struct vmf_run *run)
{
	if (run->pids_limit == 0)
		return 0;
	char limit[32];
	snprintf(limit, sizeof(limit), "%llu", run->pids_limit);
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) != 0)
		fail(125, "cannot apply --pids-limit %llu: the guest kernel has no cgroup2", run->pids_limit);
	if (write_text("/sys/fs/cgroup/cgroup.subtree_control", "+pids") != 0 ||
	    (mkdir(COMMAND_CGROUP, 0755) != 0 && errno != EEXIST) ||
	    write_text(COMMAND_CGROUP "/pids.max", limit) != 0)
		fail(125, "cannot apply --pids-limit %llu: %s (the kernel needs the pids controller)",
		     run->pids_limit, strerror(errno));
	return 1;
}

/*
 * How many processes the OOM killer ended, from the kernel's log ("Out of memory: Killed
 * process", "Memory cgroup out of memory: Killed process"). Read only when the command died
 * of SIGKILL, the OOM killer's signal: nothing to pay otherwise.
 */
static unsigned long oom_kills(int status)
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

static pid_t start_command(struct vmf_run *run, const struct identity *who, const struct channels *ch,
			   const sigset_t *original)
{
	int report[2];
	if (pipe2(report, O_CLOEXEC) != 0)
		fail(125, "cannot make a pipe: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		fail(125, "cannot fork: %s", strerror(errno));
	if (child == 0) {
		close(report[0]);
		sigprocmask(SIG_SETMASK, original, NULL);
		setsid();
		if (run->tty) {
			char *name = ptsname(ch->master);
			int slave = name ? open(name, O_RDWR) : -1;
			if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0)
				child_fails(report[1], STAGE_TERMINAL);
			dup2(slave, 0);
			dup2(slave, 1);
			dup2(slave, 2);
			if (slave > 2)
				close(slave);
		} else {
			int in = ch->in >= 0 ? ch->in : open("/dev/null", O_RDONLY);
			dup2(in, 0);
			dup2(ch->out, 1);
			dup2(ch->err, 2);
		}
		if (run->in_cgroup && write_text(COMMAND_CGROUP "/cgroup.procs", "0") != 0)
			child_fails(report[1], STAGE_CGROUP);
		if (setgroups((size_t)who->group_count, who->groups) != 0 || setgid(who->gid) != 0 || setuid(who->uid) != 0)
			child_fails(report[1], STAGE_IDENTITY);
		if (chdir(run->workdir) != 0)
			child_fails(report[1], STAGE_WORKDIR);
		environ = run->envp.items;
		execvp(run->argv.items[0], run->argv.items);
		child_fails(report[1], STAGE_EXEC);
	}
	close(report[1]);
	struct start_failure failure;
	ssize_t n;
	do
		n = read(report[0], &failure, sizeof(failure));
	while (n < 0 && errno == EINTR);
	close(report[0]);
	if (n != (ssize_t)sizeof(failure))
		return child;
	waitpid(child, NULL, 0);
	const char *program = run->argv.items[0];
	switch (failure.stage) {
	case STAGE_EXEC:
		if (failure.error == ENOENT)
			fail(127, "exec: \"%s\": %s", program,
			     strchr(program, '/') ? "no such file or directory" : "executable file not found in $PATH");
		fail(126, "exec: \"%s\": %s", program, strerror(failure.error));
	case STAGE_WORKDIR:
		fail(126, "cannot enter the working directory %s: %s", run->workdir, strerror(failure.error));
	case STAGE_IDENTITY:
		fail(125, "cannot become uid %u gid %u: %s", (unsigned)who->uid, (unsigned)who->gid, strerror(failure.error));
	case STAGE_CGROUP:
		fail(125, "cannot join the --pids-limit cgroup: %s", strerror(failure.error));
	default:
		fail(125, "cannot give the command its terminal: %s", strerror(failure.error));
	}
}

/* The command's environment: the host's combination, then what engines add. */
static void complete_environment(struct vmf_run *run, const struct identity *who)
{
	static char home[600], hostname[300];
	if (!env_has(&run->envp, "PATH"))
		env_set(&run->envp, DEFAULT_PATH);
	if (!env_has(&run->envp, "HOSTNAME")) {
		snprintf(hostname, sizeof(hostname), "HOSTNAME=%s", run->hostname);
		env_set(&run->envp, hostname);
	}
	if (!env_has(&run->envp, "HOME")) {
		snprintf(home, sizeof(home), "HOME=%s", who->home[0] ? who->home : "/");
		env_set(&run->envp, home);
	}
	if (run->tty && !env_has(&run->envp, "TERM"))
		env_set(&run->envp, "TERM=xterm");
}

/* A stream the init copies from the command to a port, counting the bytes. */
struct stream {
	int from;
	int to;
	unsigned long long bytes;
};

/* Copies what is ready: 1 when it copied, -1 when nothing was ready, 0 at the end (closed). */
static int pump(struct stream *stream)
{
	char buffer[65536];
	ssize_t n = read(stream->from, buffer, sizeof(buffer));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return -1;
	if (n <= 0) {
		close(stream->from);
		stream->from = -1;
		return 0;
	}
	stream->bytes += write_all(stream->to, buffer, (size_t)n);
	return 1;
}

/* Acts on one line from the host: "signal N", "winsize ROWS COLS", "bye". */
static int host_says(char *line, pid_t command, int command_done, const struct vmf_run *run, int master)
{
	int number, rows, cols;
	if (sscanf(line, "signal %d", &number) == 1 && number > 0 && number < NSIG) {
		if (!command_done)
			kill(command, number == SIGTERM ? run->stop_signal : number);
	} else if (sscanf(line, "winsize %d %d", &rows, &cols) == 2 && master >= 0) {
		struct winsize size = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
		ioctl(master, TIOCSWINSZ, &size);
	} else if (strcmp(line, "bye") == 0) {
		return 1;
	}
	return 0;
}

/* Reads the host's lines; returns 1 once the host said bye. */
static int read_control(pid_t command, int command_done, const struct vmf_run *run, int master, int *open)
{
	static char pending[512];
	static size_t length;
	int bye = 0;
	ssize_t n = read(control_fd, pending + length, sizeof(pending) - length - 1);
	if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
		*open = 0;
	if (n <= 0)
		return 0;
	length += (size_t)n;
	pending[length] = '\0';
	char *newline;
	while ((newline = strchr(pending, '\n'))) {
		*newline = '\0';
		bye |= host_says(pending, command, command_done, run, master);
		length -= (size_t)(newline + 1 - pending);
		memmove(pending, newline + 1, length + 1);
	}
	if (length == sizeof(pending) - 1)
		length = 0;
	return bye;
}

/*
 * Runs until the command has ended, everything it left behind is gone and all
 * of its output is out: relays its output and terminal, forwards signals and
 * the host's requests. Returns the command's wait status.
 */
static int supervise(pid_t command, const struct vmf_run *run, struct channels *ch, int signals,
		     struct stream *out, struct stream *err, struct stream *terminal)
{
	int control_open = 1, tty_open = ch->tty >= 0;
	int done = 0, status = 0, orphans = 0, first_output = 0;
	char keys[4096];
	size_t keys_length = 0;
	for (;;) {
		if (done && out->from < 0 && err->from < 0 && terminal->from < 0)
			break;
		struct pollfd fds[6] = {
			{.fd = signals, .events = POLLIN},
			{.fd = control_open ? control_fd : -1, .events = POLLIN},
			{.fd = out->from, .events = POLLIN},
			{.fd = err->from, .events = POLLIN},
			{.fd = terminal->from, .events = POLLIN},
			{.fd = tty_open && !done && keys_length < sizeof(keys) ? ch->tty : -1, .events = POLLIN},
		};
		/* Keys waiting for room in the pty: wake when there is some. */
		if (keys_length > 0 && ch->master >= 0)
			fds[4].events |= POLLOUT;
		if (poll(fds, 6, -1) < 0 && errno != EINTR)
			fail(125, "poll: %s", strerror(errno));
		const short ready = POLLIN | POLLHUP | POLLERR;
		if (fds[2].revents & ready)
			pump(out);
		if (fds[3].revents & ready)
			pump(err);
		if (fds[4].revents & ready)
			pump(terminal);
		if (!first_output && out->bytes + err->bytes + terminal->bytes > 0) {
			first_output = 1;
			step(run, "first output");
		}
		if (fds[5].revents & ready) {
			/* Keys from the host's terminal. The pty's master is non-blocking: keys it has no
			   room for wait here, and no more are read until they are in. */
			ssize_t n = read(ch->tty, keys + keys_length, sizeof(keys) - keys_length);
			if (n > 0)
				keys_length += (size_t)n;
			else if (n == 0 || (errno != EINTR && errno != EAGAIN))
				tty_open = 0;
		}
		if (keys_length > 0 && ch->master >= 0) {
			ssize_t n = write(ch->master, keys, keys_length);
			if (n > 0) {
				keys_length -= (size_t)n;
				memmove(keys, keys + n, keys_length);
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				keys_length = 0;
			}
		}
		if (terminal->from < 0)
			ch->master = -1;
		if (fds[1].revents & ready)
			read_control(command, done, run, ch->master, &control_open);
		if (!(fds[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo info;
		if (read(signals, &info, sizeof(info)) != (ssize_t)sizeof(info))
			continue;
		if (!done && info.ssi_signo == SIGTERM)
			kill(command, run->stop_signal);
		else if (!done && (info.ssi_signo == SIGINT || info.ssi_signo == SIGHUP))
			kill(command, (int)info.ssi_signo);
		int st;
		pid_t pid;
		while (!done && (pid = waitpid(-1, &st, WNOHANG)) > 0) {
			if (pid != command) {
				orphans++;
				continue;
			}
			status = st;
			done = 1;
			/* The container ends with its command: what it left running goes too. */
			int stubborn = vmf_end_the_rest(&orphans);
			if (run->verbose)
				vmf_say(VMF_TAG "reaped %d orphaned processes (%d needed SIGKILL)\n", orphans, stubborn);
			if (terminal->from >= 0)
				fcntl(terminal->from, F_SETFL, O_NONBLOCK);
		}
		/* With every writer gone, a terminal with nothing left to read is done. */
		if (done && terminal->from >= 0) {
			int copied;
			while ((copied = pump(terminal)) > 0)
				;
			if (copied < 0) {
				close(terminal->from);
				terminal->from = -1;
			}
		}
	}
	return status;
}

/* Tells the host how the command ended and waits until it has all the output. */
static void report_end(int status, const struct stream *out, const struct stream *err,
		       const struct stream *terminal, const struct vmf_run *run)
{
	int code = vmf_exit_code(status);
	char how[32] = "";
	if (WIFSIGNALED(status))
		snprintf(how, sizeof(how), " signal %d", WTERMSIG(status));
	tell_host("exit %d%s out=%llu err=%llu tty=%llu oom=%lu", code, how, out->bytes, err->bytes, terminal->bytes,
		  oom_kills(status));
	(void)run;
	/* The last bytes may still be in QEMU's queues: the host says bye once they arrived. */
	wait_for_bye(60000);
}

/* Waits until the host said bye (it has everything this machine sent), at most ms. */
static void wait_for_bye(long ms)
{
	if (control_fd < 0)
		return;
	static const struct vmf_run nothing;
	int open = 1;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (open && elapsed_ms(&start) < ms) {
		struct pollfd fd = {.fd = control_fd, .events = POLLIN};
		if (poll(&fd, 1, 100) > 0 && read_control(0, 1, &nothing, -1, &open))
			return;
	}
}

/* A pipe whose write end the command gets; the init keeps the read end. */
static int command_pipe(int *write_end)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) != 0)
		fail(125, "cannot make a pipe: %s", strerror(errno));
	*write_end = fds[1];
	return fds[0];
}

void vmf_run_container(struct vmf_run *run)
{
	const char *names[5] = {
		"vmf.control", run->tty ? "vmf.tty" : NULL, run->tty ? NULL : "vmf.stdout",
		run->tty ? NULL : "vmf.stderr", run->stdin_open && !run->tty ? "vmf.stdin" : NULL,
	};
	const int flags[5] = {O_RDWR, O_RDWR, O_WRONLY, O_WRONLY, O_RDONLY};
	int fds[5];
	int opened = open_ports(names, flags, fds, 5);
	control_fd = fds[0];
	if (opened != 0) {
		fail(125, "the run's virtio-serial ports did not all appear within %d s", DEVICE_WAIT_MS / 1000);
	}
	struct channels ch = {.in = fds[4], .out = -1, .err = -1, .tty = fds[1], .master = -1};
	struct stream out = {-1, fds[2], 0}, err = {-1, fds[3], 0}, terminal = {-1, -1, 0};
	if (!run->tty) {
		out.from = command_pipe(&ch.out);
		err.from = command_pipe(&ch.err);
	}

	step(run, "ports open");
	mount_root(run);
	step(run, "root mounted");
	int initramfs = switch_root();
	step(run, "switched root");
	mount_container_filesystems(run);
	if (run->tty) {
		/* The image's own devpts instance: the command's terminal is one of its ptys. */
		if (open_terminal(&ch.master, run) != 0)
			fail(125, "cannot set up the terminal: %s", strerror(errno));
		terminal = (struct stream){ch.master, ch.tty, 0};
	}
	if (sethostname(run->hostname, strlen(run->hostname)) != 0)
		vmf_say(VMF_TAG "cannot set the hostname %s: %s\n", run->hostname, strerror(errno));
	write_host_files(run);
	mount_volumes(run);
	configure_network(run);
	container_defaults();
	step(run, "volumes and network ready");

	struct identity who;
	resolve_user(run->user, &who);
	complete_environment(run, &who);
	if (make_path(run->workdir, 0755) != 0 && errno != EROFS && run->verbose)
		vmf_say(VMF_TAG "cannot create %s: %s\n", run->workdir, strerror(errno));

	sigset_t handled, original;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigaddset(&handled, SIGHUP);
	sigprocmask(SIG_BLOCK, &handled, &original);
	int signals = signalfd(-1, &handled, SFD_CLOEXEC);
	if (signals < 0)
		fail(125, "signalfd: %s", strerror(errno));

	run->in_cgroup = make_command_cgroup(run);
	pid_t command = start_command(run, &who, &ch, &original);
	/* Only the command holds the write ends: their end of file is its end. */
	if (ch.out >= 0)
		close(ch.out);
	if (ch.err >= 0)
		close(ch.err);
	if (ch.in >= 0)
		close(ch.in);
	tell_host("started %d", (int)command);
	step(run, "command started");
	free_initramfs(initramfs);
	int status = supervise(command, run, &ch, signals, &out, &err, &terminal);
	step(run, "command ended");
	/* What volumes were written reaches the host; a kept run's overlay holds a clean file
	   system. A removed run's overlay needs neither. */
	if (run->keep || run->volume_count > 0)
		sync();
	else
		vmf_sync_at_end = 0;
	if (run->keep)
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	report_end(status, &out, &err, &terminal, run);
	vmf_end_machine(vmf_exit_code(status));
}
