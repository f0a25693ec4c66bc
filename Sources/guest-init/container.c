/*
 * Container mode: PID 1 of a `vmfactory run` machine.
 *
 * The host and the init speak the run protocol (protocol.h,
 * docs/run-protocol.md) on one virtio-serial port: the init says hello, the
 * host sends the run's settings, and the init mounts the image's disk, switches
 * into it, sets up the volumes and the network, starts the command and
 * supervises it and the host's execs (supervise.c) until the command ends.
 */
#define _GNU_SOURCE
#include "container.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "process.h"
#include "protocol.h"
#include "supervise.h"

#define NEWROOT "/newroot"
/* How long devices and ports may take to appear after init starts. */
#define DEVICE_WAIT_MS 10000

/* ---- the channel to the host ---- */

/* The run's supervisor: the channel, its decoder and the processes. One per machine. */
static struct vmf_supervisor session = {.channel = -1, .signals = -1};
static struct vmf_decoder decoder;

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
	if (session.channel >= 0) {
		vmf_send_number(session.channel, VMF_ERROR, 1, (uint32_t)code, message);
		vmf_send(session.channel, VMF_END, 0, NULL, 0);
		vmf_wait_for_bye(&session, 5000);
	}
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


/* ---- the run ---- */

/*
 * Says hello and waits for the run's settings; refuses settings of another
 * version. The settings' text is kept for the life of the run.
 */
static void receive_settings(struct vmf_run *run)
{
	const char *names[1] = {VMF_CHANNEL_PORT};
	const int flags[1] = {O_RDWR};
	if (open_ports(names, flags, &session.channel, 1) != 0)
		fail(125, "the run's channel (%s) did not appear within %d s", VMF_CHANNEL_PORT, DEVICE_WAIT_MS / 1000);
	session.channel_open = 1;
	vmf_decoder_init(&decoder);
	session.decoder = &decoder;
	if (vmf_send_number(session.channel, VMF_HELLO, 0, VMF_PROTOCOL_VERSION, "vmfactory-init") != 0)
		fail(125, "cannot write to the run's channel: %s", strerror(errno));
	for (;;) {
		struct vmf_frame frame;
		int got = vmf_decoder_next(&decoder, &frame);
		if (got < 0)
			fail(125, "the host's frames are malformed: %s", decoder.error);
		if (got == 0) {
			size_t room;
			unsigned char *space = vmf_decoder_space(&decoder, &room);
			ssize_t n = space ? read(session.channel, space, room) : -1;
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				fail(125, "the run's channel ended before the settings came");
			vmf_decoder_wrote(&decoder, (size_t)n);
			continue;
		}
		if (frame.type != VMF_SETTINGS)
			continue;
		if (frame.length < 4)
			fail(125, "the settings frame is too short");
		uint32_t version = vmf_get32(frame.payload);
		if (version != VMF_PROTOCOL_VERSION)
			fail(125, "vmfactory sent settings of run protocol %u; this init speaks version %d: use a kernel and initrd built by the same vmfactory",
			     version, VMF_PROTOCOL_VERSION);
		char *text = malloc(frame.length - 4 + 1);
		if (!text)
			fail(125, "out of memory for the settings");
		memcpy(text, frame.payload + 4, frame.length - 4);
		text[frame.length - 4] = '\0';
		char err[256];
		if (strlen(text) != frame.length - 4)
			fail(125, "the settings hold a NUL byte");
		if (vmf_run_parse(run, text, err, sizeof(err)) != 0)
			fail(125, "%s", err);
		return;
	}
}

void vmf_run_container(void)
{
	struct vmf_run run;
	receive_settings(&run);
	step(&run, "settings received");
	mount_root(&run);
	step(&run, "root mounted");
	int initramfs = switch_root();
	step(&run, "switched root");
	mount_container_filesystems(&run);
	if (sethostname(run.hostname, strlen(run.hostname)) != 0)
		vmf_say(VMF_TAG "cannot set the hostname %s: %s\n", run.hostname, strerror(errno));
	write_host_files(&run);
	mount_volumes(&run);
	configure_network(&run);
	container_defaults();
	step(&run, "volumes and network ready");
	if (make_path(run.command.workdir, 0755) != 0 && errno != EROFS && run.verbose)
		vmf_say(VMF_TAG "cannot create %s: %s\n", run.command.workdir, strerror(errno));

	sigset_t handled;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigaddset(&handled, SIGHUP);
	sigprocmask(SIG_BLOCK, &handled, &session.context.original_mask);
	session.signals = signalfd(-1, &handled, SFD_CLOEXEC);
	if (session.signals < 0)
		fail(125, "signalfd: %s", strerror(errno));
	session.run = &run;
	session.context.hostname = run.hostname;
	session.context.root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	char err[900];
	if (run.pids_limit) {
		if (vmf_make_command_cgroup(run.pids_limit, err, sizeof(err)) != 0)
			fail(125, "%s", err);
		session.context.in_cgroup = 1;
	}
	struct vmf_process *command = &session.processes[0];
	command->stream = 1;
	command->credit = VMF_WINDOW;
	int code = vmf_process_start(command, &run.command, &session.context, err, sizeof(err));
	if (code != 0)
		fail(code, "%s", err);
	vmf_send_number(session.channel, VMF_STARTED, 1, (uint32_t)command->pid, NULL);
	step(&run, "command started");
	free_initramfs(initramfs);
	int status = vmf_supervise(&session);
	step(&run, "command ended");
	if (run.verbose)
		vmf_say(VMF_TAG "reaped %d orphaned processes\n", session.orphans);
	/* What volumes were written reaches the host; a kept run's overlay holds a clean file
	   system. A removed run's overlay needs neither. */
	if (run.keep || run.volume_count > 0)
		sync();
	else
		vmf_sync_at_end = 0;
	if (run.keep)
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	/* The last bytes may still be in QEMU's queues: the host says bye once they arrived. */
	vmf_send(session.channel, VMF_END, 0, NULL, 0);
	vmf_wait_for_bye(&session, 60000);
	vmf_end_machine(vmf_exit_code(status));
}
