/*
 * How vmfactory-init decides what to run: the settings baked into the initrd
 * (/etc/vmfactory/init.conf), the kernel command line (/proc/cmdline) and the
 * arguments and environment the kernel hands to init. Kept apart from the PID 1
 * code so that it runs, and is tested, on the build host.
 */
#ifndef VMFACTORY_LAUNCH_H
#define VMFACTORY_LAUNCH_H

#include <stddef.h>

#define VMF_MAX_WORDS 256

struct vmf_launch {
	const char *hostname;
	/* The entrypoint and its arguments; argc 0 when there is nothing to run. */
	int argc;
	char *argv[VMF_MAX_WORDS + 1];
	int envc;
	char *envp[VMF_MAX_WORDS + 1];
	int verbose;
};

/*
 * Splits a kernel command line into words the way the kernel does: runs of
 * blanks separate words, double quotes group blanks into a word and are dropped.
 * Returns the number of words, at most max; the words point into buf.
 */
int vmf_split_cmdline(char *buf, char **words, int max);

/*
 * Fills launch from the three sources, in rising precedence:
 *   conf     the text of init.conf ("key=value" lines: hostname, entrypoint,
 *            arg, env), or NULL;
 *   cmdline  the text of /proc/cmdline, for vmf.hostname=, vmf.env=KEY=VALUE
 *            and vmf.verbose; or NULL;
 *   argv     init's own arguments after argv[0]: the kernel passes the words it
 *            does not know and everything after "--"; when there are any they
 *            replace the configured entrypoint and its arguments;
 *   envp     init's environment: HOME, TERM and the unknown key=value words.
 * Later environment entries replace earlier ones of the same name; PATH gets a
 * default when nothing sets it. Strings may point into conf and cmdline, which
 * must outlive launch. Returns 0, or -1 with a message in err when an input is
 * malformed.
 */
int vmf_launch_parse(struct vmf_launch *launch, char *conf, char *cmdline,
		     int argc, char **argv, char **envp, char *err, size_t errlen);

#endif
