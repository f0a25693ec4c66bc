#include "launch.h"

#include <stdio.h>
#include <string.h>

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_HOSTNAME "vmfactory"

static int is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int vmf_split_cmdline(char *buf, char **words, int max)
{
	int count = 0;
	char *in = buf;

	while (*in) {
		while (is_blank(*in))
			in++;
		if (!*in)
			break;
		/* Copy the word onto itself, dropping quotes. */
		char *out = in, *start = in;
		int quoted = 0;
		while (*in && (quoted || !is_blank(*in))) {
			if (*in == '"')
				quoted = !quoted;
			else
				*out++ = *in;
			in++;
		}
		int more = *in != '\0';
		*out = '\0';
		if (more)
			in++;
		if (count < max)
			words[count++] = start;
	}
	return count;
}

/* Puts NAME=VALUE into the environment, replacing an entry of the same name. */
static int set_env(struct vmf_launch *launch, char *entry)
{
	const char *equals = strchr(entry, '=');
	if (!equals || equals == entry)
		return -1;
	size_t name = (size_t)(equals - entry) + 1;
	for (int i = 0; i < launch->envc; i++) {
		if (strncmp(launch->envp[i], entry, name) == 0) {
			launch->envp[i] = entry;
			return 0;
		}
	}
	if (launch->envc >= VMF_MAX_WORDS)
		return -1;
	launch->envp[launch->envc++] = entry;
	launch->envp[launch->envc] = NULL;
	return 0;
}

static int add_arg(struct vmf_launch *launch, char *word)
{
	if (launch->argc >= VMF_MAX_WORDS)
		return -1;
	launch->argv[launch->argc++] = word;
	launch->argv[launch->argc] = NULL;
	return 0;
}

static int parse_conf(struct vmf_launch *launch, char *conf, char *err, size_t errlen)
{
	int line_number = 0;
	char *line = conf;

	while (line && *line) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		line_number++;
		if (*line == '\0' || *line == '#') {
			line = next;
			continue;
		}
		char *value = strchr(line, '=');
		if (!value) {
			snprintf(err, errlen, "init.conf:%d: expected key=value", line_number);
			return -1;
		}
		*value++ = '\0';
		int bad = 0;
		if (strcmp(line, "hostname") == 0)
			launch->hostname = value;
		else if (strcmp(line, "entrypoint") == 0) {
			launch->argc = 0;
			bad = add_arg(launch, value);
		} else if (strcmp(line, "arg") == 0) {
			if (launch->argc == 0) {
				snprintf(err, errlen, "init.conf:%d: arg before entrypoint", line_number);
				return -1;
			}
			bad = add_arg(launch, value);
		} else if (strcmp(line, "env") == 0)
			bad = set_env(launch, value);
		else if (strcmp(line, "verbose") == 0)
			launch->verbose = strcmp(value, "0") != 0;
		else {
			snprintf(err, errlen, "init.conf:%d: unknown key '%s'", line_number, line);
			return -1;
		}
		if (bad) {
			snprintf(err, errlen, "init.conf:%d: bad or too many values", line_number);
			return -1;
		}
		line = next;
	}
	return 0;
}

static int parse_cmdline(struct vmf_launch *launch, char *cmdline, char *err, size_t errlen)
{
	char *words[VMF_MAX_WORDS];
	int count = vmf_split_cmdline(cmdline, words, VMF_MAX_WORDS);

	for (int i = 0; i < count; i++) {
		char *word = words[i];
		/* Everything after "--" belongs to init, not to the kernel. */
		if (strcmp(word, "--") == 0)
			break;
		if (strncmp(word, "vmf.", 4) != 0)
			continue;
		if (strncmp(word, "vmf.hostname=", 13) == 0) {
			launch->hostname = word + 13;
		} else if (strncmp(word, "vmf.env=", 8) == 0) {
			if (set_env(launch, word + 8) != 0) {
				snprintf(err, errlen, "kernel command line: %s: expected vmf.env=NAME=VALUE", word);
				return -1;
			}
		} else if (strcmp(word, "vmf.verbose") == 0 || strcmp(word, "vmf.verbose=1") == 0) {
			launch->verbose = 1;
		} else if (strcmp(word, "vmf.verbose=0") == 0) {
			launch->verbose = 0;
		} else {
			snprintf(err, errlen, "kernel command line: unknown setting %s (known: vmf.hostname=, vmf.env=, vmf.verbose)", word);
			return -1;
		}
	}
	return 0;
}

int vmf_launch_parse(struct vmf_launch *launch, char *conf, char *cmdline,
		     int argc, char **argv, char **envp, char *err, size_t errlen)
{
	memset(launch, 0, sizeof(*launch));
	launch->hostname = DEFAULT_HOSTNAME;
	for (char **e = envp; e && *e; e++) {
		if (set_env(launch, *e) != 0) {
			snprintf(err, errlen, "environment: cannot take '%s'", *e);
			return -1;
		}
	}
	if (conf && parse_conf(launch, conf, err, errlen) != 0)
		return -1;
	if (cmdline && parse_cmdline(launch, cmdline, err, errlen) != 0)
		return -1;
	if (argc > 0) {
		launch->argc = 0;
		for (int i = 0; i < argc; i++) {
			if (add_arg(launch, argv[i]) != 0) {
				snprintf(err, errlen, "too many arguments");
				return -1;
			}
		}
	}
	int has_path = 0;
	for (int i = 0; i < launch->envc; i++)
		has_path |= strncmp(launch->envp[i], "PATH=", 5) == 0;
	if (!has_path)
		set_env(launch, (char *)DEFAULT_PATH);
	return 0;
}
