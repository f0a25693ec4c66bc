/*
 * Users and groups of the image (identity.h), read from its /etc/passwd and
 * /etc/group with every path resolved inside the image's root.
 */
#define _GNU_SOURCE
#include "identity.h"

#include "container.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The whole of a file under root, its links resolved inside root; NULL when it cannot be read. */
static char *read_in_root(int root_fd, const char *path)
{
	/* Non-blocking, and a regular file only: the init reads this itself, and an image whose
	   /etc/passwd is a fifo or a link to a terminal must not stop it. */
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	int fd = (int)syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return NULL;
	}
	/* An account database larger than this is not one. */
	return vmf_read_fd(fd, 16u << 20);
}

static int all_digits(const char *text)
{
	if (!*text)
		return 0;
	for (; *text; text++)
		if (!isdigit((unsigned char)*text))
			return 0;
	return 1;
}

/* A uid or gid in decimal: at most 2^32 - 2 (-1 means "no change" to the kernel). */
static int parse_id(const char *text, unsigned *id)
{
	if (!all_digits(text) || strlen(text) > 10)
		return -1;
	unsigned long long value = strtoull(text, NULL, 10);
	if (value >= 0xffffffffULL)
		return -1;
	*id = (unsigned)value;
	return 0;
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
static int find_user(int root_fd, const char *wanted, struct vmf_identity *who)
{
	char *text = read_in_root(root_fd, "/etc/passwd");
	int found = -1;
	unsigned wanted_id = 0;
	int by_number = parse_id(wanted, &wanted_id) == 0;
	for (char *line = text, *next; found != 0 && line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *f[7];
		unsigned uid, gid;
		if (fields_of(line, f, 7) < 7 || parse_id(f[2], &uid) != 0 || parse_id(f[3], &gid) != 0)
			continue;
		if (by_number ? uid != wanted_id : strcmp(f[0], wanted) != 0)
			continue;
		who->uid = uid;
		who->gid = gid;
		snprintf(who->name, sizeof(who->name), "%s", f[0]);
		snprintf(who->home, sizeof(who->home), "%s", f[5]);
		found = 0;
	}
	free(text);
	return found;
}

/* A group's number by name or number; the supplementary groups of `who` too. */
static int scan_groups(int root_fd, const char *wanted, gid_t *gid, struct vmf_identity *who)
{
	char *text = read_in_root(root_fd, "/etc/group");
	int found = wanted ? -1 : 0;
	unsigned wanted_id = 0;
	int by_number = wanted && parse_id(wanted, &wanted_id) == 0;
	for (char *line = text, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *f[4];
		unsigned number;
		if (fields_of(line, f, 4) < 4 || parse_id(f[2], &number) != 0)
			continue;
		if (wanted && found != 0 && (by_number ? number == wanted_id : strcmp(f[0], wanted) == 0)) {
			*gid = number;
			found = 0;
		}
		if (!who->name[0])
			continue;
		char *save = NULL;
		for (char *member = strtok_r(f[3], ",", &save); member; member = strtok_r(NULL, ",", &save))
			if (strcmp(member, who->name) == 0 && who->group_count < VMF_MAX_GROUPS)
				who->groups[who->group_count++] = number;
	}
	free(text);
	return found;
}

int vmf_resolve_user(int root_fd, const char *spec, struct vmf_identity *who, char *err, size_t errlen)
{
	memset(who, 0, sizeof(*who));
	char user[256], *group = NULL;
	if (snprintf(user, sizeof(user), "%s", *spec ? spec : "0") >= (int)sizeof(user)) {
		snprintf(err, errlen, "the user %.64s… is too long", spec);
		return -1;
	}
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = '\0';
		group = colon + 1;
	}
	if (find_user(root_fd, user, who) != 0) {
		unsigned uid;
		if (parse_id(user, &uid) != 0) {
			snprintf(err, errlen, "unable to find user %s: no matching entries in the image's /etc/passwd", user);
			return -1;
		}
		who->uid = uid;
		who->gid = 0;
		snprintf(who->home, sizeof(who->home), "%s", who->uid == 0 ? "/root" : "/");
	}
	gid_t gid = who->gid;
	if (scan_groups(root_fd, group, &gid, who) != 0) {
		unsigned number;
		if (parse_id(group, &number) != 0) {
			snprintf(err, errlen, "unable to find group %s: no matching entries in the image's /etc/group", group);
			return -1;
		}
		gid = number;
	}
	who->gid = gid;
	/* The primary group comes first, once. */
	gid_t groups[VMF_MAX_GROUPS + 1] = {gid};
	int count = 1;
	for (int i = 0; i < who->group_count && count < VMF_MAX_GROUPS; i++) {
		int seen = 0;
		for (int j = 0; j < count; j++)
			seen |= groups[j] == who->groups[i];
		if (!seen)
			groups[count++] = who->groups[i];
	}
	memcpy(who->groups, groups, sizeof(gid_t) * (size_t)count);
	who->group_count = count;
	return 0;
}
