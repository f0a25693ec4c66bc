/*
 * The init's loop while the run's command lives: it relays every process's
 * output and input as frames, starts the execs the host asks for, forwards
 * signals and window sizes, reaps every process, and reports each exit.
 */
#ifndef VMFACTORY_SUPERVISE_H
#define VMFACTORY_SUPERVISE_H

#include "conf.h"
#include "process.h"
#include "protocol.h"

/* The command and at most this many execs at once. */
#define VMF_MAX_PROCESSES 64

struct vmf_supervisor {
	int channel;
	struct vmf_decoder *decoder;
	/* SIGCHLD, SIGTERM, SIGINT and SIGHUP, blocked and read here. */
	int signals;
	const struct vmf_run *run;
	struct vmf_process_context context;
	struct vmf_process processes[VMF_MAX_PROCESSES];
	/* The host said bye. */
	int bye;
	/* The channel's reads still work. */
	int channel_open;
	/* Processes reaped that were none of the run's own (orphans). */
	int orphans;
	/* The command ended; its wait status. */
	int command_done;
	int command_status;
};

/*
 * Relays and supervises until the command (processes[0], started) has ended,
 * every other process is gone and every exit went to the host. Returns the
 * command's wait status.
 */
int vmf_supervise(struct vmf_supervisor *supervisor);

/* Reads the channel until the host says bye, at most ms; ignores everything else. */
void vmf_wait_for_bye(struct vmf_supervisor *supervisor, long ms);

/*
 * Acts on one frame from the host (exported for the host's tests, which feed it
 * malformed frames). Returns 0, or -1 when the frame was refused (a message in err).
 */
int vmf_host_frame(struct vmf_supervisor *supervisor, const struct vmf_frame *frame, char *err, size_t errlen);

#endif
