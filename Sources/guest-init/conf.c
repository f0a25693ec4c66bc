/*
 * The settings the host sends, as key=value lines (conf.h): the run's and an
 * exec's, with the same process keys.
 */
#define _GNU_SOURCE
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/resource.h>

int vmf_words_add(struct vmf_words *words, char *word)
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
int vmf_env_set(struct vmf_words *env, char *entry)
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
	return vmf_words_add(env, entry);
}

int vmf_env_has(const struct vmf_words *env, const char *name)
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

int vmf_conf_next(struct vmf_conf_lines *lines, char **key, char **value, char *err, size_t errlen)
{
	while (lines->rest) {
		char *line = lines->rest;
		char *end = strchr(line, '\n');
		if (end)
			*end++ = '\0';
		lines->rest = end;
		lines->line++;
		if (*line == '\0' || *line == '#')
			continue;
		char *equals = strchr(line, '=');
		if (!equals) {
			snprintf(err, errlen, "%s:%d: expected key=value", lines->name, lines->line);
			lines->rest = NULL;
			return -1;
		}
		*equals = '\0';
		if (unescape(equals + 1) != 0) {
			snprintf(err, errlen, "%s:%d: bad escape in the value of %.64s (only \\n and \\\\ are known)",
				 lines->name, lines->line, line);
			lines->rest = NULL;
			return -1;
		}
		*key = line;
		*value = equals + 1;
		return 1;
	}
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

/* "ro|rw PATH", a line break, then the file's text. */
static int parse_file(struct vmf_run *run, char *value)
{
	if (run->file_count >= VMF_MAX_FILES)
		return -1;
	char *content = strchr(value, '\n');
	if (!content)
		return -1;
	*content++ = '\0';
	char *path = strchr(value, ' ');
	if (!path || path[1] != '/' || strchr(path + 1, ' '))
		return -1;
	*path++ = '\0';
	if (strcmp(value, "ro") != 0 && strcmp(value, "rw") != 0)
		return -1;
	struct vmf_file *file = &run->files[run->file_count++];
	file->readonly = strcmp(value, "ro") == 0;
	file->path = path;
	file->content = content;
	return 0;
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

/*
 * Decimal digits from *at on, up to the first character that is not one: at
 * least one digit and at most max, without strtoull's sign, spaces or overflow
 * to clamp. *at moves past them.
 */
static int take_decimal(const char **at, unsigned long long max, unsigned long long *number)
{
	const char *c = *at;
	unsigned long long value = 0;
	if (!isdigit((unsigned char)*c))
		return -1;
	for (; isdigit((unsigned char)*c); c++) {
		unsigned digit = (unsigned)(*c - '0');
		if (value > (max - digit) / 10)
			return -1;
		value = value * 10 + digit;
	}
	*at = c;
	*number = value;
	return 0;
}

/* "G1,G2,...": decimal gids, replacing any given before; empty for no supplementary group. */
static int parse_groups(struct vmf_process_spec *spec, const char *value)
{
	gid_t groups[VMF_MAX_PROCESS_GROUPS];
	int count = 0;
	for (const char *at = value; *at; at++) {
		unsigned long long gid;
		/* (gid_t)-1 is "no change" to the kernel, no group. */
		if (count == VMF_MAX_PROCESS_GROUPS || take_decimal(&at, 0xfffffffeULL, &gid) != 0)
			return -1;
		groups[count++] = (gid_t)gid;
		if (*at == '\0')
			break;
		if (*at != ',' || at[1] == '\0')
			return -1;
	}
	memcpy(spec->groups, groups, sizeof(groups[0]) * (size_t)count);
	spec->group_count = count;
	spec->groups_given = 1;
	return 0;
}

static const struct {
	const char *name;
	int resource;
} rlimit_names[] = {
	{"CPU", RLIMIT_CPU}, {"FSIZE", RLIMIT_FSIZE}, {"DATA", RLIMIT_DATA}, {"STACK", RLIMIT_STACK},
	{"CORE", RLIMIT_CORE}, {"RSS", RLIMIT_RSS}, {"NPROC", RLIMIT_NPROC}, {"NOFILE", RLIMIT_NOFILE},
	{"MEMLOCK", RLIMIT_MEMLOCK}, {"AS", RLIMIT_AS}, {"LOCKS", RLIMIT_LOCKS}, {"SIGPENDING", RLIMIT_SIGPENDING},
	{"MSGQUEUE", RLIMIT_MSGQUEUE}, {"NICE", RLIMIT_NICE}, {"RTPRIO", RLIMIT_RTPRIO}, {"RTTIME", RLIMIT_RTTIME},
};

const char *vmf_rlimit_name(int resource)
{
	for (size_t i = 0; i < sizeof(rlimit_names) / sizeof(rlimit_names[0]); i++)
		if (rlimit_names[i].resource == resource)
			return rlimit_names[i].name;
	return "?";
}

/* A resource named by the length bytes at name, in any case, with or without RLIMIT_; -1 for none. */
static int rlimit_resource(const char *name, size_t length)
{
	if (length > strlen("RLIMIT_") && strncasecmp(name, "RLIMIT_", strlen("RLIMIT_")) == 0) {
		name += strlen("RLIMIT_");
		length -= strlen("RLIMIT_");
	}
	for (size_t i = 0; i < sizeof(rlimit_names) / sizeof(rlimit_names[0]); i++)
		if (strlen(rlimit_names[i].name) == length && strncasecmp(name, rlimit_names[i].name, length) == 0)
			return rlimit_names[i].resource;
	return -1;
}

/* A limit from *at on: decimal or "unlimited" (RLIM_INFINITY). */
static int take_limit(const char **at, unsigned long long *limit)
{
	if (strncmp(*at, "unlimited", strlen("unlimited")) == 0) {
		*at += strlen("unlimited");
		*limit = RLIM_INFINITY;
		return 0;
	}
	return take_decimal(at, RLIM_INFINITY, limit);
}

/* "NAME SOFT HARD", one resource once. */
static int parse_rlimit(struct vmf_process_spec *spec, const char *value)
{
	const char *space = strchr(value, ' ');
	if (!space || spec->rlimit_count == VMF_MAX_RLIMITS)
		return -1;
	struct vmf_rlimit limit;
	limit.resource = rlimit_resource(value, (size_t)(space - value));
	const char *at = space + 1;
	if (limit.resource < 0 || take_limit(&at, &limit.soft) != 0 || *at++ != ' ' ||
	    take_limit(&at, &limit.hard) != 0 || *at != '\0' || limit.soft > limit.hard)
		return -1;
	for (int i = 0; i < spec->rlimit_count; i++)
		if (spec->rlimits[i].resource == limit.resource)
			return -1;
	spec->rlimits[spec->rlimit_count++] = limit;
	return 0;
}

/* The set a cap* key names, or NULL for another key. */
static uint64_t *capability_set(struct vmf_capabilities *caps, const char *key)
{
	if (strcmp(key, "capbounding") == 0)
		return &caps->bounding;
	if (strcmp(key, "capeffective") == 0)
		return &caps->effective;
	if (strcmp(key, "cappermitted") == 0)
		return &caps->permitted;
	if (strcmp(key, "capinheritable") == 0)
		return &caps->inheritable;
	if (strcmp(key, "capambient") == 0)
		return &caps->ambient;
	return NULL;
}

/* A 64-bit mask in hex: one to sixteen digits, no prefix. */
static int parse_mask(const char *value, uint64_t *mask)
{
	size_t length = strlen(value);
	if (length == 0 || length > 16)
		return -1;
	uint64_t parsed = 0;
	for (const char *c = value; *c; c++) {
		if (!isxdigit((unsigned char)*c))
			return -1;
		int digit = isdigit((unsigned char)*c) ? *c - '0' : tolower((unsigned char)*c) - 'a' + 10;
		parsed = parsed << 4 | (uint64_t)digit;
	}
	*mask = parsed;
	return 0;
}

/* An octal file mode mask, 0 to 0777. */
static int parse_umask(struct vmf_process_spec *spec, const char *value)
{
	size_t length = strlen(value);
	if (length == 0 || length > 4)
		return -1;
	unsigned mask = 0;
	for (const char *c = value; *c; c++) {
		if (*c < '0' || *c > '7')
			return -1;
		mask = mask * 8 + (unsigned)(*c - '0');
	}
	if (mask > 0777)
		return -1;
	spec->umask = (mode_t)mask;
	spec->umask_given = 1;
	return 0;
}

/* What a process may do: its groups, limits, capabilities, no_new_privs and umask; as parse_process_key. */
static int parse_privilege_key(struct vmf_process_spec *spec, const char *key, const char *value)
{
	uint64_t *set = capability_set(&spec->caps, key);
	if (set) {
		spec->caps_given = 1;
		return parse_mask(value, set);
	}
	if (strcmp(key, "groups") == 0)
		return parse_groups(spec, value);
	if (strcmp(key, "rlimit") == 0)
		return parse_rlimit(spec, value);
	if (strcmp(key, "umask") == 0)
		return parse_umask(spec, value);
	if (strcmp(key, "nonewprivs") == 0) {
		if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0)
			return -1;
		spec->no_new_privs = value[0] == '1';
		return 0;
	}
	return -2;
}

/* The keys of a process, the run's command's or an exec's: 0, -1 for a bad value, -2 for another key. */
static int parse_process_key(struct vmf_process_spec *spec, const char *key, char *value)
{
	if (strcmp(key, "arg") == 0)
		return vmf_words_add(&spec->argv, value);
	if (strcmp(key, "env") == 0)
		return vmf_env_set(&spec->envp, value);
	if (strcmp(key, "user") == 0)
		spec->user = value;
	else if (strcmp(key, "workdir") == 0)
		spec->workdir = value;
	else if (strcmp(key, "stdin") == 0)
		return parse_number(value, &spec->stdin_open);
	else if (strcmp(key, "tty") == 0)
		return parse_number(value, &spec->tty);
	else if (strcmp(key, "rows") == 0)
		return parse_number(value, &spec->rows);
	else if (strcmp(key, "cols") == 0)
		return parse_number(value, &spec->cols);
	else
		return parse_privilege_key(spec, key, value);
	return 0;
}

/* "seed": 2 to 2 * VMF_MAX_SEED hex digits, an even count. */
static int parse_seed(struct vmf_run *run, const char *value)
{
	size_t length = strlen(value);
	if (length == 0 || length % 2 != 0 || length / 2 > VMF_MAX_SEED)
		return -1;
	for (size_t i = 0; i < length / 2; i++) {
		unsigned int byte = 0;
		for (int half = 0; half < 2; half++) {
			char c = value[2 * i + half];
			int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
			if (digit < 0)
				return -1;
			byte = byte << 4 | (unsigned int)digit;
		}
		run->seed[i] = (unsigned char)byte;
	}
	run->seed_length = length / 2;
	return 0;
}

static int parse_setting(struct vmf_run *run, const char *key, char *value)
{
	int process = parse_process_key(&run->command, key, value);
	if (process != -2)
		return process;
	if (strcmp(key, "hostname") == 0)
		run->hostname = value;
	else if (strcmp(key, "root") == 0) {
		/* "virtiofs TAG" or "9p TAG": a folder root. */
		char *tag = strchr(value, ' ');
		if (!tag || tag[1] == '\0' || strchr(tag + 1, ' '))
			return -1;
		*tag++ = '\0';
		if (strcmp(value, "virtiofs") != 0 && strcmp(value, "9p") != 0)
			return -1;
		run->root_type = value;
		run->root_tag = tag;
	} else if (strcmp(key, "address") == 0)
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
	else if (strcmp(key, "file") == 0)
		return parse_file(run, value);
	else if (strcmp(key, "shmsize") == 0)
		return parse_size(value, &run->shm_bytes);
	else if (strcmp(key, "pidslimit") == 0)
		return parse_size(value, &run->pids_limit);
	else if (strcmp(key, "readonly") == 0)
		return parse_number(value, &run->readonly);
	else if (strcmp(key, "stopsignal") == 0)
		return parse_number(value, &run->stop_signal);
	else if (strcmp(key, "verbose") == 0)
		return parse_number(value, &run->verbose);
	else if (strcmp(key, "keep") == 0)
		return parse_number(value, &run->keep);
	else if (strcmp(key, "disksize") == 0)
		return parse_size(value, &run->disk_size);
	else if (strcmp(key, "seed") == 0)
		return parse_seed(run, value);
	else
		return -2;
	return 0;
}

/*
 * Hands each key=value line to `setting` (0 taken, -1 a bad value, -2 an unknown
 * key). Returns 0, or -1 with a message in err.
 */
static int parse_lines(char *text, const char *what, int (*setting)(void *, const char *, char *), void *into,
		       char *err, size_t errlen)
{
	struct vmf_conf_lines lines = {.rest = text, .name = what};
	char *key, *value;
	int got;
	while ((got = vmf_conf_next(&lines, &key, &value, err, errlen)) > 0) {
		int result = setting(into, key, value);
		if (result == -2) {
			snprintf(err, errlen, "%s:%d: unknown key '%.64s'", what, lines.line, key);
			return -1;
		}
		if (result != 0) {
			snprintf(err, errlen, "%s:%d: bad value for %.64s", what, lines.line, key);
			return -1;
		}
	}
	return got;
}

static int run_setting(void *into, const char *key, char *value)
{
	return parse_setting(into, key, value);
}

static int exec_setting(void *into, const char *key, char *value)
{
	struct vmf_process_spec *spec = into;
	if (strcmp(key, "copyout") == 0 && value[0] == '/')
		spec->copy_out = value;
	else if (strcmp(key, "copyin") == 0 && value[0] == '/')
		spec->copy_in = value;
	else if (strcmp(key, "copytop") == 0 && !strchr(value, '/') && strcmp(value, "..") != 0)
		spec->copy_top = value;
	else if (strcmp(key, "copyout") == 0 || strcmp(key, "copyin") == 0 || strcmp(key, "copytop") == 0)
		return -1;
	else
		return parse_process_key(into, key, value);
	return 0;
}

/* What both kinds of process must have. */
static int check_process(const struct vmf_process_spec *spec, const char *what, char *err, size_t errlen)
{
	if (spec->argv.count == 0) {
		snprintf(err, errlen, "%s: no command", what);
		return -1;
	}
	if (spec->rows < 0 || spec->cols < 0 || spec->rows > 65535 || spec->cols > 65535) {
		snprintf(err, errlen, "%s: the window size is out of range", what);
		return -1;
	}
	return 0;
}

int vmf_run_parse(struct vmf_run *run, char *text, char *err, size_t errlen)
{
	memset(run, 0, sizeof(*run));
	run->command.user = "";
	run->command.workdir = "/";
	run->hostname = "vmfactory";
	run->stop_signal = SIGTERM;
	run->shm_bytes = 64ULL << 20;
	if (parse_lines(text, "settings", run_setting, run, err, errlen) != 0 || check_process(&run->command, "settings", err, errlen) != 0) {
		vmf_run_free(run);
		return -1;
	}
	if (run->stop_signal < 1 || run->stop_signal >= NSIG) {
		snprintf(err, errlen, "settings: stop signal %d is not a signal", run->stop_signal);
		vmf_run_free(run);
		return -1;
	}
	return 0;
}

void vmf_run_free(struct vmf_run *run)
{
	vmf_process_spec_free(&run->command);
	for (int i = 0; i < run->tmpfs_count; i++)
		free((char *)run->tmpfs[i].data);
	run->tmpfs_count = 0;
}

int vmf_exec_parse(struct vmf_process_spec *spec, char *text, char *err, size_t errlen)
{
	memset(spec, 0, sizeof(*spec));
	spec->user = "";
	spec->workdir = "/";
	if (parse_lines(text, "exec", exec_setting, spec, err, errlen) != 0 || check_process(spec, "exec", err, errlen) != 0) {
		vmf_process_spec_free(spec);
		return -1;
	}
	return 0;
}

void vmf_words_free(struct vmf_words *words)
{
	free(words->items);
	memset(words, 0, sizeof(*words));
}

void vmf_process_spec_free(struct vmf_process_spec *spec)
{
	vmf_words_free(&spec->argv);
	vmf_words_free(&spec->envp);
}

static void explain_limit(unsigned long long limit)
{
	if (limit == RLIM_INFINITY)
		printf("unlimited");
	else
		printf("%llu", limit);
}

/* Only what was given: settings without these keys read as before. */
static void explain_privileges(const struct vmf_process_spec *spec)
{
	if (spec->groups_given) {
		printf("groups: %s", spec->group_count ? "" : "none");
		for (int i = 0; i < spec->group_count; i++)
			printf("%s%u", i ? "," : "", (unsigned)spec->groups[i]);
		printf("\n");
	}
	for (int i = 0; i < spec->rlimit_count; i++) {
		printf("rlimit: %s ", vmf_rlimit_name(spec->rlimits[i].resource));
		explain_limit(spec->rlimits[i].soft);
		printf(" ");
		explain_limit(spec->rlimits[i].hard);
		printf("\n");
	}
	if (spec->caps_given)
		printf("caps: bounding=%llx effective=%llx permitted=%llx inheritable=%llx ambient=%llx\n",
		       (unsigned long long)spec->caps.bounding, (unsigned long long)spec->caps.effective,
		       (unsigned long long)spec->caps.permitted, (unsigned long long)spec->caps.inheritable,
		       (unsigned long long)spec->caps.ambient);
	if (spec->no_new_privs)
		printf("nonewprivs: 1\n");
	if (spec->umask_given)
		printf("umask: %04o\n", (unsigned)spec->umask);
}

static void explain_process(const struct vmf_process_spec *spec)
{
	for (int i = 0; i < spec->argv.count; i++)
		printf("argv: %s\n", spec->argv.items[i]);
	for (int i = 0; i < spec->envp.count; i++)
		printf("env: %s\n", spec->envp.items[i]);
	printf("user: %s\nworkdir: %s\nstdin: %d\ntty: %d\n", spec->user, spec->workdir, spec->stdin_open, spec->tty);
	if (spec->rows || spec->cols)
		printf("window: %d %d\n", spec->rows, spec->cols);
	explain_privileges(spec);
	if (spec->copy_out)
		printf("copy out: %s\n", spec->copy_out);
	if (spec->copy_in)
		printf("copy in: %s (%s)\n", spec->copy_in, spec->copy_top ? spec->copy_top : "");
}

void vmf_exec_explain(const struct vmf_process_spec *spec)
{
	explain_process(spec);
}

void vmf_run_explain(const struct vmf_run *run)
{
	explain_process(&run->command);
	printf("hostname: %s\n", run->hostname);
	if (run->root_tag)
		printf("root: %s %s\n", run->root_type, run->root_tag);
	else
		printf("root: /dev/vda\n");
	printf("readonly: %d\nstop-signal: %d\nshm-size: %llu\npids-limit: %llu\n", run->readonly, run->stop_signal, run->shm_bytes, run->pids_limit);
	printf("network: %s\n", run->network ? "user" : "none");
	printf("disk-size: %llu\nseed: %zu bytes\n", run->disk_size, run->seed_length);
	if (run->clock_set)
		printf("clock: %lld.%09ld\n", (long long)run->clock.tv_sec, run->clock.tv_nsec);
	for (int i = 0; i < run->volume_count; i++)
		printf("volume: %s %s %s %s\n", run->volumes[i].type, run->volumes[i].tag,
		       run->volumes[i].readonly ? "ro" : "rw", run->volumes[i].path);
	for (int i = 0; i < run->tmpfs_count; i++)
		printf("tmpfs: %s%s%s%s [%s] %s\n", run->tmpfs[i].flags & MS_RDONLY ? "ro" : "rw",
		       run->tmpfs[i].flags & MS_NOEXEC ? ",noexec" : "", run->tmpfs[i].flags & MS_NOSUID ? ",nosuid" : "",
		       run->tmpfs[i].flags & MS_NODEV ? ",nodev" : "", run->tmpfs[i].data, run->tmpfs[i].path);
	for (int i = 0; i < run->file_count; i++)
		printf("file: %s %s %zu bytes\n", run->files[i].readonly ? "ro" : "rw", run->files[i].path, strlen(run->files[i].content));
}

