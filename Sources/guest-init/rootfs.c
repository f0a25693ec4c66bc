/*
 * The image's root in container mode (rootfs.h). Every step returns 0, or -1
 * with what went wrong in the error, for the run's step list to report.
 */
#define _GNU_SOURCE
#include "rootfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define NEWROOT "/newroot"

long vmf_elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

void vmf_pause_ms(long ms)
{
	struct timespec pause = {0, ms * 1000 * 1000};
	nanosleep(&pause, NULL);
}

int vmf_wait_for(const char *path, struct vmf_error *e)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (access(path, F_OK) != 0) {
		if (vmf_elapsed_ms(&start) > VMF_DEVICE_WAIT_MS)
			return vmf_fail(e, 125, "%s did not appear within %d s", path, VMF_DEVICE_WAIT_MS / 1000);
		vmf_pause_ms(1);
	}
	return 0;
}

int vmf_make_path(const char *path, mode_t mode)
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
static int mount_in(const char *source, const char *target, const char *type, unsigned long flags,
		    const char *options, mode_t mode, int required, struct vmf_error *e)
{
	if (vmf_make_path(target, mode) != 0 || mount(source, target, type, flags, options) != 0) {
		if (required)
			return vmf_fail(e, 125, "cannot mount %s on %s: %s", type, target, strerror(errno));
		vmf_say(VMF_TAG "cannot mount %s on %s: %s\n", type, target, strerror(errno));
	}
	return 0;
}

static int move_into_root(const char *from, const char *to, struct vmf_error *e)
{
	if (vmf_make_path(to, 0755) != 0)
		return vmf_fail(e, 125, "the image has no %s and it cannot be made: %s", to + strlen(NEWROOT), strerror(errno));
	if (mount(from, to, NULL, MS_MOVE, NULL) != 0)
		return vmf_fail(e, 125, "cannot move %s into the image: %s", from, strerror(errno));
	return 0;
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
int vmf_switch_root(int *initramfs, struct vmf_error *e)
{
	if (move_into_root("/dev", NEWROOT "/dev", e) != 0 || move_into_root("/proc", NEWROOT "/proc", e) != 0
	    || move_into_root("/sys", NEWROOT "/sys", e) != 0)
		return -1;
	*initramfs = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (chdir(NEWROOT) != 0)
		return vmf_fail(e, 125, "cannot enter the image's root: %s", strerror(errno));
	if (mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
		return vmf_fail(e, 125, "cannot switch into the image's root: %s", strerror(errno));
	return 0;
}

/* Deletes the initramfs's files (not what is mounted on it), freeing its memory. */
void vmf_free_initramfs(int initramfs)
{
	struct stat st;
	if (initramfs < 0)
		return;
	if (fstat(initramfs, &st) == 0)
		remove_tree(initramfs, st.st_dev);
	else
		close(initramfs);
}

/*
 * A host folder over virtio-fs or 9p, written in place; its device may still be
 * starting. 9p's mmap cache keeps shared writable mappings working (databases).
 */
static int mount_folder_root(const struct vmf_run *run, struct vmf_error *e)
{
	int ninep = strcmp(run->root_type, "9p") == 0;
	const char *options = ninep ? "trans=virtio,version=9p2000.L,msize=262144,cache=mmap" : NULL;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (mount(run->root_tag, NEWROOT, ninep ? "9p" : "virtiofs", run->readonly ? MS_RDONLY : 0, options) != 0) {
		if ((errno != ENOENT && errno != ENODEV) || vmf_elapsed_ms(&start) > VMF_DEVICE_WAIT_MS)
			return vmf_fail(e, 125, "cannot mount the root folder (%s %s): %s", run->root_type, run->root_tag, strerror(errno));
		vmf_pause_ms(1);
	}
	return 0;
}

/* Waits until the kernel's size of /dev/vda is `bytes` (the run's disk, not a template's). */
static int wait_for_disk_size(unsigned long long bytes, struct vmf_error *e)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	unsigned long long sectors = 0;
	for (;;) {
		FILE *size = fopen("/sys/block/vda/size", "re");
		if (size) {
			if (fscanf(size, "%llu", &sectors) != 1)
				sectors = 0;
			fclose(size);
		}
		if (sectors * 512 == bytes)
			return 0;
		if (vmf_elapsed_ms(&start) > VMF_DEVICE_WAIT_MS)
			return vmf_fail(e, 125, "/dev/vda has %llu bytes, not the run's %llu, after %d s", sectors * 512, bytes, VMF_DEVICE_WAIT_MS / 1000);
		vmf_pause_ms(1);
	}
}

int vmf_mount_root(const struct vmf_run *run, struct vmf_error *e)
{
	if (mkdir(NEWROOT, 0755) != 0 && errno != EEXIST)
		return vmf_fail(e, 125, "cannot create " NEWROOT ": %s", strerror(errno));
	if (run->root_tag)
		return mount_folder_root(run, e);
	if (vmf_wait_for("/dev/vda", e) != 0)
		return -1;
	/*
	 * A VM restored from a template has the template's view of /dev/vda. Its size: the host
	 * told the device to say that it changed, and the kernel reads the new one in a moment.
	 * Its cache: the kernel read the first blocks (the partition scan, the ext4 superblock
	 * among them) when it probed the template's disk; they are dropped, so that the mount
	 * reads this run's disk.
	 */
	if (run->disk_size && wait_for_disk_size(run->disk_size, e) != 0)
		return -1;
	int disk = open("/dev/vda", O_RDONLY | O_CLOEXEC);
	if (disk < 0 || ioctl(disk, BLKFLSBUF, 0) != 0) {
		int saved = errno;
		if (disk >= 0)
			close(disk);
		return vmf_fail(e, 125, "cannot drop the cached blocks of /dev/vda: %s", strerror(saved));
	}
	close(disk);
	unsigned long flags = run->readonly ? MS_RDONLY : 0;
	/* A removed run's overlay is thrown away: its writes need no journal. */
	const char *options = run->keep ? NULL : "noload";
	if (mount("/dev/vda", NEWROOT, "ext4", flags, options) != 0)
		return vmf_fail(e, 125, "cannot mount the image's disk (/dev/vda, ext4): %s", strerror(errno));
	return 0;
}

/*
 * What a container has mounted besides its root, after the switch: what docker mounts. The
 * image's own /tmp and /run stay as the image has them (--tmpfs asks for more).
 */
int vmf_mount_container_filesystems(const struct vmf_run *run, struct vmf_error *e)
{
	const unsigned long hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	if (mount_in("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,gid=5,mode=0620,ptmxmode=0666", 0755, 1, e) != 0)
		return -1;
	char shm[64];
	snprintf(shm, sizeof(shm), "mode=1777,size=%llu", run->shm_bytes);
	if (mount_in("shm", "/dev/shm", "tmpfs", hardened, shm, 01777, 1, e) != 0)
		return -1;
	mount_in("mqueue", "/dev/mqueue", "mqueue", hardened, NULL, 0755, 0, e);
	if (access("/sys/fs/cgroup", F_OK) == 0)
		mount_in("cgroup2", "/sys/fs/cgroup", "cgroup2", hardened, NULL, 0555, 0, e);
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
	return 0;
}

/*
 * Where a read-only root's host files are written before they are bind-mounted over the
 * image's: a tmpfs on a folder of the init's /dev, detached once the files are in place, so
 * that nothing of it shows in the image but the files themselves.
 */
#define STAGING "/dev/.vmfactory-staging"

/* Whether the host files are bind-mounted rather than written: a read-only root, or a folder root (the host's own files). */
static int stages_host_files(const struct vmf_run *run)
{
	return run->readonly || run->root_tag;
}

/*
 * Binds `text` over `path` from a file of the staging tmpfs named `name`: the
 * mount point made (an empty file, and its folders) where the image has none,
 * unless the root is read-only; the bind read-only when asked.
 */
static int bind_file(const char *path, const char *name, const char *text, int make_point, int readonly)
{
	char staged[256];
	snprintf(staged, sizeof(staged), STAGING "/%s", name);
	int fd = open(staged, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		vmf_say(VMF_TAG "cannot write %s: %s\n", staged, strerror(errno));
		return -1;
	}
	vmf_write_all(fd, text, strlen(text));
	close(fd);
	struct stat st;
	if (make_point && lstat(path, &st) != 0 && errno == ENOENT) {
		char parent[4096];
		snprintf(parent, sizeof(parent), "%s", path);
		char *slash = strrchr(parent, '/');
		if (slash && slash != parent) {
			*slash = '\0';
			vmf_make_path(parent, 0755);
		}
		int point = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (point >= 0)
			close(point);
	}
	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || mount(staged, path, NULL, MS_BIND, NULL) != 0)
		return -1;
	if (readonly)
		mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
	return 0;
}

/*
 * Puts `text` at `path` in the image: written in place on a writable disk root
 * (the writes land in the run's overlay), bind-mounted over the file otherwise,
 * as container engines do: read-only on a read-only root; on a folder root (the
 * host's folder) over an empty file made for it when the image has none.
 */
static void place_file(const struct vmf_run *run, const char *path, const char *text)
{
	if (!stages_host_files(run)) {
		vmf_make_path("/etc", 0755);
		unlink(path);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			vmf_write_all(fd, text, strlen(text));
			close(fd);
			return;
		}
	}
	if (bind_file(path, strrchr(path, '/') + 1, text, !run->readonly, run->readonly) == 0)
		return;
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

void vmf_write_host_files(const struct vmf_run *run)
{
	int stages = stages_host_files(run) || run->file_count > 0;
	int staging = stages && vmf_make_path(STAGING, 0700) == 0
		&& mount("tmpfs", STAGING, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=2m,mode=0700") == 0;
	if (stages && !staging)
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
	/* The engine's own files (its /etc/hosts, /etc/resolv.conf, /etc/hostname, ...), over ours. */
	for (int i = 0; staging && i < run->file_count; i++) {
		char name[32];
		snprintf(name, sizeof(name), "file-%d", i);
		if (bind_file(run->files[i].path, name, run->files[i].content, !run->readonly, run->files[i].readonly) != 0)
			vmf_say(VMF_TAG "cannot put the file %s in place: %s\n", run->files[i].path, strerror(errno));
	}
	if (staging)
		umount2(STAGING, MNT_DETACH);
	if (stages)
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
static int make_mount_point(const char *path, struct vmf_error *e)
{
	if (vmf_make_path(path, 0755) == 0)
		return 0;
	if (errno == EROFS)
		return vmf_fail(e, 125, "cannot create the mount point %s: the image has no such folder and --read-only keeps its root read-only; "
			  "mount at a folder the image has, or drop --read-only", path);
	return vmf_fail(e, 125, "cannot create the mount point %s in the image: %s", path, strerror(errno));
}

static int mount_volume(const struct vmf_volume *volume, struct vmf_error *e)
{
	if (make_mount_point(volume->path, e) != 0)
		return -1;
	unsigned long flags = volume->readonly ? MS_RDONLY : 0;
	int mounted = strcmp(volume->type, "9p") == 0
		? mount(volume->tag, volume->path, "9p", flags, "trans=virtio,version=9p2000.L,msize=262144")
		: mount(volume->tag, volume->path, "virtiofs", flags, NULL);
	if (mounted != 0)
		return vmf_fail(e, 125, "cannot mount the %s volume %s on %s: %s", volume->type, volume->tag, volume->path, strerror(errno));
	return 0;
}

static int mount_tmpfs(const struct vmf_tmpfs *tmpfs, struct vmf_error *e)
{
	if (make_mount_point(tmpfs->path, e) != 0)
		return -1;
	if (mount("tmpfs", tmpfs->path, "tmpfs", tmpfs->flags, tmpfs->data[0] ? tmpfs->data : NULL) != 0)
		return vmf_fail(e, 125, "cannot mount a tmpfs on %s (%s): %s", tmpfs->path, tmpfs->data, strerror(errno));
	return 0;
}

/* Volumes and tmpfs mounts, shallower paths first, so that a mount inside another lands on it. */
int vmf_mount_volumes(const struct vmf_run *run, struct vmf_error *e)
{
	for (int depth = 0; depth <= PATH_MAX / 2; depth++) {
		int deeper = 0;
		for (int i = 0; i < run->volume_count; i++) {
			int d = path_depth(run->volumes[i].path);
			if (d == depth)
				if (mount_volume(&run->volumes[i], e) != 0)
					return -1;
			deeper |= d > depth;
		}
		for (int i = 0; i < run->tmpfs_count; i++) {
			int d = path_depth(run->tmpfs[i].path);
			if (d == depth)
				if (mount_tmpfs(&run->tmpfs[i], e) != 0)
					return -1;
			deeper |= d > depth;
		}
		if (!deeper)
			break;
	}
	return 0;
}
