/*
 * Tar streams in and out of the container's root (copy.h): ustar headers, with
 * pax records for what ustar cannot hold (long names, large sizes); GNU long
 * names are read too.
 */
#define _GNU_SOURCE
#include "copy.h"

#include "container.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 512
/* The most a pax or GNU long-name record may hold. */
#define LONGEST_RECORD (1u << 20)

/* Says "BEFORE NAME: the error" (or "BEFORE NAME AFTER" with after given) on stderr; returns 1. */
static int complain(const char *before, const char *name, int error, const char *after)
{
	char line[1200];
	int n = after ? snprintf(line, sizeof(line), "%s %s %s\n", before, name, after)
		      : snprintf(line, sizeof(line), "%s %s: %s\n", before, name, strerror(error));
	if (n > 0) {
		ssize_t ignored = write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
		(void)ignored;
	}
	return 1;
}

/* The init's vmf_write_all, as 0 or -1. */
static int write_all(int fd, const void *data, size_t length)
{
	return vmf_write_all(fd, data, length) == length ? 0 : -1;
}

static int read_all(int fd, void *data, size_t length)
{
	char *at = data;
	while (length > 0) {
		ssize_t n = read(fd, at, length);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		at += n;
		length -= (size_t)n;
	}
	return 0;
}

/* ---- out ---- */

struct link_seen {
	dev_t dev;
	ino_t ino;
	char *name;
};

struct tar_out {
	int fd;
	struct link_seen *links;
	size_t count;
	size_t capacity;
};

/* A header field: width - 1 octal digits, zero-padded, and a NUL (the callers keep values in range). */
static void octal(char *field, size_t width, unsigned long long value)
{
	field[width - 1] = '\0';
	for (size_t i = width - 1; i-- > 0; value >>= 3)
		field[i] = (char)('0' + (value & 7));
}

static size_t digits(size_t value)
{
	size_t count = 1;
	while (value >= 10) {
		value /= 10;
		count++;
	}
	return count;
}

/* One pax record, "LENGTH key=value\n", where LENGTH counts itself. */
static int pax_record(char **text, size_t *length, const char *key, const char *value)
{
	size_t body = strlen(key) + strlen(value) + 3;
	size_t total = body + digits(body);
	while (total != body + digits(total))
		total = body + digits(total);
	char *grown = realloc(*text, *length + total + 1);
	if (!grown)
		return -1;
	*text = grown;
	snprintf(*text + *length, total + 1, "%zu %s=%s\n", total, key, value);
	*length += total;
	return 0;
}

static int put_header(struct tar_out *out, const char *name, const struct stat *st, char type, const char *link, unsigned long long size);

/* The block of a header; a pax header first when name, link or size do not fit ustar's. */
static int put_header(struct tar_out *out, const char *name, const struct stat *st, char type, const char *link, unsigned long long size)
{
	if (type != 'x' && (strlen(name) > 100 || strlen(link) > 100 || size > 077777777777ULL)) {
		char *records = NULL, number[32];
		size_t length = 0;
		int failed = strlen(name) > 100 && pax_record(&records, &length, "path", name);
		failed |= strlen(link) > 100 && pax_record(&records, &length, "linkpath", link);
		snprintf(number, sizeof(number), "%llu", size);
		failed |= size > 077777777777ULL && pax_record(&records, &length, "size", number);
		if (failed || put_header(out, "././@PaxHeader", st, 'x', "", length) != 0 || write_all(out->fd, records, length) != 0) {
			free(records);
			return -1;
		}
		free(records);
		static const char zeros[BLOCK];
		if (length % BLOCK && write_all(out->fd, zeros, BLOCK - length % BLOCK) != 0)
			return -1;
	}
	char block[BLOCK];
	memset(block, 0, sizeof(block));
	strncpy(block, name, 100);
	octal(block + 100, 8, st->st_mode & 07777);
	octal(block + 108, 8, st->st_uid);
	octal(block + 116, 8, st->st_gid);
	octal(block + 124, 12, size > 077777777777ULL ? 0 : size);
	octal(block + 136, 12, st->st_mtim.tv_sec < 0 ? 0 : (unsigned long long)st->st_mtim.tv_sec);
	block[156] = type;
	strncpy(block + 157, link, 100);
	memcpy(block + 257, "ustar", 6);
	memcpy(block + 263, "00", 2);
	if (type == '3' || type == '4') {
		octal(block + 329, 8, major(st->st_rdev));
		octal(block + 337, 8, minor(st->st_rdev));
	}
	memset(block + 148, ' ', 8);
	unsigned sum = 0;
	for (int i = 0; i < BLOCK; i++)
		sum += (unsigned char)block[i];
	snprintf(block + 148, 8, "%06o", sum);
	block[155] = ' ';
	return write_all(out->fd, block, BLOCK);
}

/* A regular file's bytes, exactly `size` of them (padded or cut when it changed meanwhile). */
static int put_data(struct tar_out *out, int fd, unsigned long long size)
{
	static char buffer[65536];
	unsigned long long left = size;
	while (left > 0) {
		size_t want = left < sizeof(buffer) ? (size_t)left : sizeof(buffer);
		ssize_t n = read(fd, buffer, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			memset(buffer, 0, want);
			n = (ssize_t)want;
		}
		if (write_all(out->fd, buffer, (size_t)n) != 0)
			return -1;
		left -= (unsigned long long)n;
	}
	static const char zeros[BLOCK];
	return size % BLOCK ? write_all(out->fd, zeros, BLOCK - size % BLOCK) : 0;
}

static int put_tree(struct tar_out *out, int dirfd, const char *entry, const char *name);

static int put_folder(struct tar_out *out, int fd, const char *name)
{
	DIR *dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return complain("cannot read the folder", name, errno, NULL);
	}
	int failed = 0;
	struct dirent *child;
	while (!failed && (child = readdir(dir))) {
		if (strcmp(child->d_name, ".") == 0 || strcmp(child->d_name, "..") == 0)
			continue;
		char *path = NULL;
		if (asprintf(&path, "%s/%s", name, child->d_name) < 0)
			return closedir(dir), 1;
		failed = put_tree(out, dirfd(dir), child->d_name, path);
		free(path);
	}
	closedir(dir);
	return failed;
}

static int put_tree(struct tar_out *out, int dirfd, const char *entry, const char *name)
{
	struct stat st;
	if (fstatat(dirfd, entry, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return complain("cannot read", name, errno, NULL);
	if (S_ISDIR(st.st_mode)) {
		char *folder = NULL;
		if (asprintf(&folder, "%s/", name) < 0)
			return 1;
		int failed = put_header(out, folder, &st, '5', "", 0) != 0;
		free(folder);
		if (failed)
			return 1;
		int fd = openat(dirfd, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return complain("cannot open the folder", name, errno, NULL);
		return put_folder(out, fd, name);
	}
	if (S_ISLNK(st.st_mode)) {
		char target[4097];
		ssize_t n = readlinkat(dirfd, entry, target, sizeof(target) - 1);
		if (n < 0)
			return complain("cannot read the link", name, errno, NULL);
		target[n] = '\0';
		return put_header(out, name, &st, '2', target, 0) != 0;
	}
	if (S_ISREG(st.st_mode)) {
		for (size_t i = 0; st.st_nlink > 1 && i < out->count; i++)
			if (out->links[i].dev == st.st_dev && out->links[i].ino == st.st_ino)
				return put_header(out, name, &st, '1', out->links[i].name, 0) != 0;
		if (st.st_nlink > 1) {
			if (out->count == out->capacity) {
				size_t capacity = out->capacity ? out->capacity * 2 : 64;
				struct link_seen *grown = realloc(out->links, capacity * sizeof(*grown));
				if (!grown)
					return 1;
				out->links = grown;
				out->capacity = capacity;
			}
			out->links[out->count++] = (struct link_seen){st.st_dev, st.st_ino, strdup(name)};
		}
		int fd = openat(dirfd, entry, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return complain("cannot open", name, errno, NULL);
		int failed = put_header(out, name, &st, '0', "", (unsigned long long)st.st_size) != 0
			|| put_data(out, fd, (unsigned long long)st.st_size) != 0;
		close(fd);
		return failed;
	}
	char type = S_ISFIFO(st.st_mode) ? '6' : S_ISCHR(st.st_mode) ? '3' : S_ISBLK(st.st_mode) ? '4' : 0;
	/* Sockets have no tar form: left out, as tar leaves them out. */
	return type ? put_header(out, name, &st, type, "", 0) != 0 : 0;
}

int vmf_copy_out(const char *path, int fd)
{
	char *copy = strdup(path), *parent = strdup(path);
	if (!copy || !parent)
		return 1;
	/* "/a/b/" names b; "/" names the whole root, as ".". */
	size_t length = strlen(copy);
	while (length > 1 && copy[length - 1] == '/')
		copy[--length] = '\0';
	char *slash = strrchr(copy, '/');
	const char *base = slash ? slash + 1 : copy;
	if (!*base || strcmp(copy, "/") == 0)
		base = ".";
	snprintf(parent, strlen(path) + 1, "%.*s", slash ? (int)(slash - copy) : 0, copy);
	if (!*parent)
		strcpy(parent, slash ? "/" : ".");
	int dirfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return complain("cannot open", parent, errno, NULL);
	struct tar_out out = {.fd = fd};
	int failed = put_tree(&out, dirfd, strcmp(base, ".") == 0 ? "." : base, base);
	static const char end[2 * BLOCK];
	if (!failed && write_all(fd, end, sizeof(end)) != 0)
		failed = complain("cannot write", "the stream", errno, NULL);
	for (size_t i = 0; i < out.count; i++)
		free(out.links[i].name);
	free(out.links);
	close(dirfd);
	free(copy);
	free(parent);
	return failed;
}

/* ---- in ---- */

/* openat2 below `root`: nothing that resolves outside it (absolute links, "..", /proc's magic links). */
static int open_beneath(int root, const char *path, int flags, mode_t mode)
{
	struct open_how how = {.flags = (unsigned long long)(flags | O_CLOEXEC), .mode = mode, .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
	return (int)syscall(SYS_openat2, root, path, &how, sizeof(how));
}

/* Whether an entry's name stays below the folder: not absolute, no ".." component. */
static int name_is_safe(const char *name)
{
	if (name[0] == '/')
		return 0;
	for (const char *at = name; *at;) {
		const char *end = strchr(at, '/');
		size_t length = end ? (size_t)(end - at) : strlen(at);
		if (length == 2 && at[0] == '.' && at[1] == '.')
			return 0;
		at += length + (end ? 1 : 0);
	}
	return 1;
}

/* Splits name into its folder (opened below root, made when missing) and its last component. */
static int open_parent(int root, char *name, const char **base)
{
	char *slash = strrchr(name, '/');
	if (!slash) {
		*base = name;
		return fcntl(root, F_DUPFD_CLOEXEC, 3);
	}
	*slash = '\0';
	*base = slash + 1;
	/* Every folder on the way, made when missing, each opened below root. */
	for (char *at = name;; at++) {
		if (*at != '/' && *at != '\0')
			continue;
		char saved = *at;
		*at = '\0';
		if (mkdirat(root, name, 0755) != 0 && errno != EEXIST) {
			*at = saved;
			*slash = '/';
			return -1;
		}
		*at = saved;
		if (!saved)
			break;
	}
	int fd = open_beneath(root, name, O_PATH | O_DIRECTORY, 0);
	*slash = '/';
	return fd;
}

struct entry {
	char name[4097];
	char link[4097];
	mode_t mode;
	uid_t uid;
	gid_t gid;
	unsigned long long size;
	long long mtime;
	char type;
	unsigned major;
	unsigned minor;
};

static unsigned long long number(const char *field, size_t width)
{
	/* Base 256 (GNU) for large values: the high bit of the first byte set. */
	if ((unsigned char)field[0] & 0x80) {
		unsigned long long value = (unsigned char)field[0] & 0x7f;
		for (size_t i = 1; i < width; i++)
			value = value << 8 | (unsigned char)field[i];
		return value;
	}
	unsigned long long value = 0;
	for (size_t i = 0; i < width && field[i]; i++) {
		if (field[i] == ' ')
			continue;
		if (field[i] < '0' || field[i] > '7')
			break;
		value = value * 8 + (unsigned long long)(field[i] - '0');
	}
	return value;
}

static int skip(int fd, unsigned long long size)
{
	char buffer[BLOCK];
	unsigned long long blocks = (size + BLOCK - 1) / BLOCK;
	for (unsigned long long i = 0; i < blocks; i++)
		if (read_all(fd, buffer, BLOCK) != 0)
			return -1;
	return 0;
}

/* A pax or GNU record's payload, whole and NUL-terminated; NULL when too large or cut short. */
static char *read_record(int fd, unsigned long long size)
{
	if (size > LONGEST_RECORD)
		return NULL;
	size_t padded = (size_t)((size + BLOCK - 1) / BLOCK * BLOCK);
	char *text = malloc(padded + 1);
	if (!text || read_all(fd, text, padded) != 0) {
		free(text);
		return NULL;
	}
	text[size] = '\0';
	return text;
}

/* Applies pax records to the next entry: path, linkpath, size, mtime. */
static int apply_pax(struct entry *next, int *has, char *text, unsigned long long size)
{
	char *at = text, *end = text + size;
	while (at < end) {
		char *space = memchr(at, ' ', (size_t)(end - at));
		if (!space)
			return -1;
		unsigned long long length = strtoull(at, NULL, 10);
		if (length == 0 || length > (unsigned long long)(end - at) || at[length - 1] != '\n')
			return -1;
		at[length - 1] = '\0';
		char *key = space + 1, *equals = strchr(key, '=');
		if (!equals)
			return -1;
		*equals = '\0';
		char *value = equals + 1;
		if (strcmp(key, "path") == 0 && strlen(value) < sizeof(next->name)) {
			strcpy(next->name, value);
			has[0] = 1;
		} else if (strcmp(key, "linkpath") == 0 && strlen(value) < sizeof(next->link)) {
			strcpy(next->link, value);
			has[1] = 1;
		} else if (strcmp(key, "size") == 0) {
			next->size = strtoull(value, NULL, 10);
			has[2] = 1;
		} else if (strcmp(key, "mtime") == 0) {
			next->mtime = strtoll(value, NULL, 10);
			has[3] = 1;
		}
		at += length;
	}
	return 0;
}

/* Reads the next entry's headers (pax and GNU records first); 1 for an entry, 0 at the end, -1 on an error. */
static int next_entry(int fd, struct entry *entry)
{
	struct entry pending;
	int has[4] = {0, 0, 0, 0};
	int zeros = 0;
	for (;;) {
		unsigned char block[BLOCK];
		if (read_all(fd, block, BLOCK) != 0)
			return zeros ? 0 : -1;
		int empty = 1;
		for (int i = 0; i < BLOCK && empty; i++)
			empty = block[i] == 0;
		if (empty) {
			if (++zeros == 2)
				return 0;
			continue;
		}
		zeros = 0;
		unsigned sum = 0;
		for (int i = 0; i < BLOCK; i++)
			sum += i >= 148 && i < 156 ? ' ' : block[i];
		if (sum != number((char *)block + 148, 8))
			return -1;
		char type = (char)block[156];
		unsigned long long size = number((char *)block + 124, 12);
		if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
			char *text = read_record(fd, size);
			if (!text)
				return -1;
			int failed = 0;
			if (type == 'x')
				failed = apply_pax(&pending, has, text, size);
			else if (type == 'L' && strlen(text) < sizeof(pending.name))
				strcpy(pending.name, text), has[0] = 1;
			else if (type == 'K' && strlen(text) < sizeof(pending.link))
				strcpy(pending.link, text), has[1] = 1;
			free(text);
			if (failed)
				return -1;
			continue;
		}
		memset(entry, 0, sizeof(*entry));
		if (block[345] && memcmp(block + 257, "ustar", 5) == 0)
			snprintf(entry->name, sizeof(entry->name), "%.155s/%.100s", (char *)block + 345, (char *)block);
		else
			snprintf(entry->name, sizeof(entry->name), "%.100s", (char *)block);
		snprintf(entry->link, sizeof(entry->link), "%.100s", (char *)block + 157);
		entry->mode = (mode_t)(number((char *)block + 100, 8) & 07777);
		entry->uid = (uid_t)number((char *)block + 108, 8);
		entry->gid = (gid_t)number((char *)block + 116, 8);
		entry->size = size;
		entry->mtime = (long long)number((char *)block + 136, 12);
		entry->type = type ? type : '0';
		entry->major = (unsigned)number((char *)block + 329, 8);
		entry->minor = (unsigned)number((char *)block + 337, 8);
		if (has[0])
			strcpy(entry->name, pending.name);
		if (has[1])
			strcpy(entry->link, pending.link);
		if (has[2])
			entry->size = pending.size;
		if (has[3])
			entry->mtime = pending.mtime;
		return 1;
	}
}

/* "./a/b/" becomes "a/b"; "." and "./" become "". */
static void tidy(char *name)
{
	while (name[0] == '.' && name[1] == '/')
		memmove(name, name + 2, strlen(name + 2) + 1);
	if (strcmp(name, ".") == 0)
		name[0] = '\0';
	size_t length = strlen(name);
	while (length > 0 && name[length - 1] == '/')
		name[--length] = '\0';
}

/* With `top`: the stream's top entry becomes `as` (PATH's last component). */
static int rename_top(char *name, size_t room, const char *top, const char *as)
{
	if (!top || !*top)
		return 0;
	size_t length = strlen(top);
	if (strncmp(name, top, length) != 0 || (name[length] != '\0' && name[length] != '/'))
		return -1;
	char rest[4097];
	snprintf(rest, sizeof(rest), "%s", name + length);
	return snprintf(name, room, "%s%s", as, rest) < (int)room ? 0 : -1;
}

struct folder_time {
	char *name;
	struct timespec times[2];
};

int vmf_copy_in(const char *path, const char *top, int fd)
{
	/* Into PATH when it is a folder; as PATH (in its folder) otherwise. */
	struct stat st;
	char *folder = strdup(path), *as = NULL;
	if (!folder)
		return 1;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		top = NULL;
	} else {
		if (!top || !*top)
			return complain("cannot copy into", path, ENOTDIR, NULL);
		char *slash = strrchr(folder, '/');
		as = strdup(slash ? slash + 1 : folder);
		if (slash)
			*(slash == folder ? slash + 1 : slash) = '\0';
		else
			strcpy(folder, ".");
		if (!as || !*as || strcmp(as, ".") == 0 || strcmp(as, "..") == 0)
			return complain("cannot copy to", path, EINVAL, NULL);
	}
	int root = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root < 0)
		return complain("cannot open the folder", folder, errno, NULL);
	struct folder_time *folders = NULL;
	size_t folder_count = 0;
	struct entry entry;
	int got, failed = 0;
	while (!failed && (got = next_entry(fd, &entry)) == 1) {
		tidy(entry.name);
		int data = entry.type == '0' || entry.type == '7';
		if (!entry.name[0] || rename_top(entry.name, sizeof(entry.name), top, as) != 0) {
			if (data && skip(fd, entry.size) != 0)
				failed = complain("the stream ended inside", entry.name, 0, "");
			continue;
		}
		if (!name_is_safe(entry.name) || (entry.type == '1' && !name_is_safe(entry.link))) {
			failed = complain("refused", entry.name, 0, "(its name leads outside the destination)");
			break;
		}
		if (entry.type == '1') {
			tidy(entry.link);
			if (rename_top(entry.link, sizeof(entry.link), top, as) != 0) {
				failed = complain("refused", entry.name, 0, "(a hard link to a file outside what is copied)");
				break;
			}
		}
		const char *base;
		char name[4097];
		snprintf(name, sizeof(name), "%s", entry.name);
		int parent = open_parent(root, name, &base);
		if (parent < 0) {
			failed = complain("cannot make the folder of", entry.name, errno, NULL);
			break;
		}
		struct timespec times[2] = {{entry.mtime, 0}, {entry.mtime, 0}};
		int result = 0;
		switch (entry.type) {
		case '5':
			result = mkdirat(parent, base, 0700) != 0 && errno != EEXIST ? -1 : 0;
			if (result == 0) {
				fchownat(parent, base, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW);
				result = fchmodat(parent, base, entry.mode, 0);
				struct folder_time *grown = realloc(folders, (folder_count + 1) * sizeof(*folders));
				if (grown) {
					folders = grown;
					folders[folder_count++] = (struct folder_time){strdup(entry.name), {times[0], times[1]}};
				}
			}
			break;
		case '2':
			unlinkat(parent, base, 0);
			result = symlinkat(entry.link, parent, base);
			if (result == 0) {
				fchownat(parent, base, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW);
				utimensat(parent, base, times, AT_SYMLINK_NOFOLLOW);
			}
			break;
		case '1': {
			const char *target_base;
			char target[4097];
			snprintf(target, sizeof(target), "%s", entry.link);
			int target_parent = open_parent(root, target, &target_base);
			unlinkat(parent, base, 0);
			result = target_parent < 0 ? -1 : linkat(target_parent, target_base, parent, base, 0);
			if (target_parent >= 0)
				close(target_parent);
			break;
		}
		case '3':
		case '4':
		case '6':
			unlinkat(parent, base, 0);
			result = mknodat(parent, base, (entry.type == '3' ? S_IFCHR : entry.type == '4' ? S_IFBLK : S_IFIFO) | entry.mode,
					 makedev(entry.major, entry.minor));
			if (result == 0) {
				fchownat(parent, base, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW);
				utimensat(parent, base, times, AT_SYMLINK_NOFOLLOW);
			}
			break;
		case '0':
		case '7': {
			unlinkat(parent, base, 0);
			int out = openat(parent, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (out < 0) {
				result = -1;
				break;
			}
			static char buffer[65536];
			unsigned long long left = (entry.size + BLOCK - 1) / BLOCK * BLOCK, wanted = entry.size;
			while (left > 0 && result == 0) {
				size_t chunk = left < sizeof(buffer) ? (size_t)left : sizeof(buffer);
				if (read_all(fd, buffer, chunk) != 0) {
					errno = EPIPE;
					result = -1;
					break;
				}
				size_t keep = wanted < chunk ? (size_t)wanted : chunk;
				if (keep && write_all(out, buffer, keep) != 0)
					result = -1;
				wanted -= keep;
				left -= chunk;
			}
			data = 0;
			if (result == 0) {
				fchown(out, entry.uid, entry.gid);
				result = fchmod(out, entry.mode);
				futimens(out, times);
			}
			close(out);
			break;
		}
		default:
			/* Types tar readers skip (GNU sparse and the like): their data too, below. */
			data = 1;
			break;
		}
		close(parent);
		if (result != 0) {
			failed = complain("cannot write", entry.name, errno, NULL);
			break;
		}
		if (data && entry.type != '0' && skip(fd, entry.size) != 0)
			failed = complain("the stream ended inside", entry.name, 0, "");
	}
	if (!failed && got < 0)
		failed = complain("the stream", "is not a tar archive,", 0, "or it was cut short");
	/* Folders' times last: what was made in them changed them. */
	for (size_t i = folder_count; i-- > 0;) {
		if (!failed)
			utimensat(root, folders[i].name, folders[i].times, AT_SYMLINK_NOFOLLOW);
		free(folders[i].name);
	}
	free(folders);
	close(root);
	free(folder);
	free(as);
	return failed;
}
