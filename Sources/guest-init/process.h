/*
 * The processes of a run: its command (stream 1) and its execs (2 and up),
 * each started as its user in the image's root with pipes or a terminal that
 * the init relays on the channel.
 */
#ifndef VMFACTORY_PROCESS_H
#define VMFACTORY_PROCESS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf.h"
#include "identity.h"

#define VMF_COMMAND_CGROUP "/sys/fs/cgroup/vmfactory-command"

struct vmf_process {
	uint32_t stream;
	pid_t pid;
	int tty;
	/* Read ends of stdout and stderr, or the terminal's master as out; -1 once closed. */
	int out;
	int err;
	/* Where stdin's bytes go (a pipe's write end, or the terminal's master); -1 without. */
	int in;
	/* The terminal's master, for window sizes; -1 without a terminal. */
	int master;
	int exited;
	int status;
	/* The exit frame went to the host: the slot is free. */
	int reported;
	unsigned long long out_bytes;
	unsigned long long err_bytes;
	/* Output bytes the host still accepts (it grants more with credit frames). */
	uint32_t credit;
	/* Input from the host waiting for room in the pipe, and whether its end of file came. */
	unsigned char *input;
	size_t input_length;
	int input_ended;
	/* The environment entries the init added (HOME, HOSTNAME, PATH, TERM). */
	char *added[4];
};

/* What a process runs with, beside its spec. */
struct vmf_process_context {
	/* The image's root, for the user's lookup. */
	int root_fd;
	const char *hostname;
	/* Whether processes join VMF_COMMAND_CGROUP (--pids-limit). */
	int in_cgroup;
	/* The signal mask processes start with. */
	sigset_t original_mask;
};

/*
 * Starts spec's process on process->stream. Returns 0, or the exit status the
 * run reports when it cannot start (125 for the init's trouble, 126 cannot run,
 * 127 not found) with docker's message in err.
 */
int vmf_process_start(struct vmf_process *process, struct vmf_process_spec *spec,
		      const struct vmf_process_context *context, char *err, size_t errlen);

/* Closes what the init holds of the process and frees its buffers. */
void vmf_process_release(struct vmf_process *process);

/* The command's cgroup with pids.max (--pids-limit); 0, or -1 with a message. */
int vmf_make_command_cgroup(unsigned long long pids_limit, char *err, size_t errlen);

/* How many processes the OOM killer ended, from the kernel's log, when status says SIGKILL. */
unsigned long vmf_oom_kills(int status);

#endif
