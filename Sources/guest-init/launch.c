/*
 * What boot mode runs (launch.h): init.conf read with the run's settings reader
 * (conf.c), the kernel command line's vmf.* words, and init's argv and envp, all
 * into growing lists, so that no count of arguments or variables is too many.
 */
#include "launch.h"

#include <stdio.h>
#include <string.h>

#define DEFAULT_HOSTNAME "vmfactory"

static int is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int vmf_split_cmdline(char *buf, struct vmf_words *words)
{
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
		if (vmf_words_add(words, start) != 0)
			return -1;
	}
	return 0;
}

/* init.conf's keys; the lines themselves are read as the run's settings are. */
static int read_conf(struct vmf_launch *launch, char *conf, char *err, size_t errlen)
{
	struct vmf_conf_lines lines = {.rest = conf, .name = "init.conf"};
	char *key, *value;
	int got;

	while ((got = vmf_conf_next(&lines, &key, &value, err, errlen)) > 0) {
		int bad = 0;
		if (strcmp(key, "hostname") == 0)
			launch->hostname = value;
		else if (strcmp(key, "entrypoint") == 0) {
			launch->argv.count = 0;
			bad = vmf_words_add(&launch->argv, value);
		} else if (strcmp(key, "arg") == 0) {
			if (launch->argv.count == 0) {
				snprintf(err, errlen, "init.conf:%d: arg before entrypoint", lines.line);
				return -1;
			}
			bad = vmf_words_add(&launch->argv, value);
		} else if (strcmp(key, "env") == 0) {
			if (vmf_env_set(&launch->envp, value) != 0) {
				snprintf(err, errlen, "init.conf:%d: expected env=NAME=VALUE", lines.line);
				return -1;
			}
		} else if (strcmp(key, "verbose") == 0)
			launch->verbose = strcmp(value, "0") != 0;
		else {
			snprintf(err, errlen, "init.conf:%d: unknown key '%.64s'", lines.line, key);
			return -1;
		}
		if (bad) {
			snprintf(err, errlen, "init.conf:%d: out of memory", lines.line);
			return -1;
		}
	}
	return got;
}

static int parse_cmdline(struct vmf_launch *launch, char *cmdline, char *err, size_t errlen)
{
	struct vmf_words words = {0};
	if (vmf_split_cmdline(cmdline, &words) != 0) {
		vmf_words_free(&words);
		snprintf(err, errlen, "kernel command line: out of memory");
		return -1;
	}

	int result = 0;
	for (int i = 0; i < words.count && result == 0; i++) {
		char *word = words.items[i];
		/* Everything after "--" belongs to init, not to the kernel. */
		if (strcmp(word, "--") == 0)
			break;
		if (strncmp(word, "vmf.", 4) != 0)
			continue;
		if (strncmp(word, "vmf.hostname=", 13) == 0) {
			launch->hostname = word + 13;
		} else if (strncmp(word, "vmf.env=", 8) == 0) {
			if (vmf_env_set(&launch->envp, word + 8) != 0) {
				snprintf(err, errlen, "kernel command line: %s: expected vmf.env=NAME=VALUE", word);
				result = -1;
			}
		} else if (strcmp(word, "vmf.verbose") == 0 || strcmp(word, "vmf.verbose=1") == 0) {
			launch->verbose = 1;
		} else if (strcmp(word, "vmf.verbose=0") == 0) {
			launch->verbose = 0;
		} else {
			snprintf(err, errlen, "kernel command line: unknown setting %s (known: vmf.hostname=, vmf.env=, vmf.verbose)", word);
			result = -1;
		}
	}
	vmf_words_free(&words);
	return result;
}

static int parse_all(struct vmf_launch *launch, char *conf, char *cmdline,
		     int argc, char **argv, char **envp, char *err, size_t errlen)
{
	for (char **e = envp; e && *e; e++) {
		if (vmf_env_set(&launch->envp, *e) != 0) {
			snprintf(err, errlen, "environment: cannot take '%s'", *e);
			return -1;
		}
	}
	if (conf && read_conf(launch, conf, err, errlen) != 0)
		return -1;
	if (cmdline && parse_cmdline(launch, cmdline, err, errlen) != 0)
		return -1;
	if (argc > 0) {
		launch->argv.count = 0;
		for (int i = 0; i < argc; i++) {
			if (vmf_words_add(&launch->argv, argv[i]) != 0) {
				snprintf(err, errlen, "arguments: out of memory");
				return -1;
			}
		}
	}
	if (!vmf_env_has(&launch->envp, "PATH") && vmf_env_set(&launch->envp, (char *)VMF_DEFAULT_PATH) != 0) {
		snprintf(err, errlen, "environment: out of memory");
		return -1;
	}
	return 0;
}

int vmf_launch_parse(struct vmf_launch *launch, char *conf, char *cmdline,
		     int argc, char **argv, char **envp, char *err, size_t errlen)
{
	memset(launch, 0, sizeof(*launch));
	launch->hostname = DEFAULT_HOSTNAME;
	if (parse_all(launch, conf, cmdline, argc, argv, envp, err, errlen) != 0) {
		vmf_launch_free(launch);
		return -1;
	}
	return 0;
}

void vmf_launch_free(struct vmf_launch *launch)
{
	vmf_words_free(&launch->argv);
	vmf_words_free(&launch->envp);
}
