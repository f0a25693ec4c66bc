/*
 * Container mode of vmfactory-init, for `vmfactory run`: the settings come
 * over the run's channel (protocol.h), then the image's root disk, the run's
 * volumes and network, and the command and the host's execs.
 */
#ifndef VMFACTORY_CONTAINER_H
#define VMFACTORY_CONTAINER_H

#include <stddef.h>

#include "conf.h"

/* The word on the kernel command line that asks for container mode. */
#define VMF_RUN_WORD "vmf.run"

/* Runs the container as PID 1 and ends the machine; never returns. */
void vmf_run_container(void) __attribute__((noreturn));

/* What went wrong in a step: the exit status vmfactory reports (125, 126, 127) and why. */
struct vmf_error {
	int code;
	char message[900];
};
/* Fills e; returns -1, for `return vmf_fail(e, ...)`. */
int vmf_fail(struct vmf_error *e, int code, const char *format, ...) __attribute__((format(printf, 3, 4)));

/* What init.c shares with container mode. */
#define VMF_TAG "vmfactory-init: "
/* Writes everything it can; returns how much was written. */
size_t vmf_write_all(int fd, const char *data, size_t length);
void vmf_say(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *vmf_read_file(const char *path);
/* What fd holds, up to about limit bytes, NUL-terminated; closes fd. NULL without memory. */
char *vmf_read_fd(int fd, size_t limit);
/* Ends every process but PID 1 (SIGTERM, then SIGKILL); returns how many needed SIGKILL. */
int vmf_end_the_rest(int *orphans);
/* A wait status as a shell's $? says it: the exit status, or 128 + the signal. */
int vmf_exit_code(int status);
void vmf_end_machine(int code) __attribute__((noreturn));
/* Whether vmf_end_machine syncs first (container mode knows when nothing needs it). */
extern int vmf_sync_at_end;

#endif
