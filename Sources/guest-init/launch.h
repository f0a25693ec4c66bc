/*
 * How vmfactory-init decides what to run: the settings baked into the initrd
 * (/etc/vmfactory/init.conf), the kernel command line (/proc/cmdline) and the
 * arguments and environment the kernel hands to init. Kept apart from the PID 1
 * code so that it runs, and is tested, on the build host.
 */
#ifndef VMFACTORY_LAUNCH_H
#define VMFACTORY_LAUNCH_H

#include <stddef.h>

#include "conf.h"

struct vmf_launch {
	const char *hostname;
	/* The entrypoint and its arguments; count 0 when there is nothing to run. */
	struct vmf_words argv;
	struct vmf_words envp;
	int verbose;
};

/*
 * Splits a kernel command line into words the way the kernel does: runs of
 * blanks separate words, double quotes group blanks into a word and are dropped.
 * The words point into buf. Returns 0, or -1 when out of memory.
 */
int vmf_split_cmdline(char *buf, struct vmf_words *words);

/*
 * Fills launch from the three sources, in rising precedence:
 *   conf     the text of init.conf, or NULL: key=value lines (hostname,
 *            entrypoint, arg, env, verbose) in the format of the run's
 *            settings (conf.h), values escaped the same way: `\n` for a line
 *            break, `\\` for a backslash;
 *   cmdline  the text of /proc/cmdline, for vmf.hostname=, vmf.env=KEY=VALUE
 *            and vmf.verbose; or NULL;
 *   argv     init's own arguments after argv[0]: the kernel passes the words it
 *            does not know and everything after "--"; when there are any they
 *            replace the configured entrypoint and its arguments;
 *   envp     init's environment: HOME, TERM and the unknown key=value words.
 * Later environment entries replace earlier ones of the same name; PATH gets a
 * default when nothing sets it. Strings may point into conf (which is changed),
 * cmdline, argv and envp, which must outlive launch. Returns 0, or -1 with a
 * message in err when an input is malformed (launch then holds nothing to free).
 */
int vmf_launch_parse(struct vmf_launch *launch, char *conf, char *cmdline,
		     int argc, char **argv, char **envp, char *err, size_t errlen);

/* Frees the lists parsing made (the strings stay the caller's). */
void vmf_launch_free(struct vmf_launch *launch);

#endif
