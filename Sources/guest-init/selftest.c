/*
 * The init's parsers on the build host (selftest.h).
 */
#define _GNU_SOURCE
#include "selftest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "identity.h"
#include "protocol.h"
#include "supervise.h"

/* A host frame as the init takes it: parsed, then acted on by a supervisor with no processes. */
static void take(struct vmf_supervisor *supervisor, const struct vmf_frame *frame)
{
	char err[900];
	printf("frame %s stream=%u length=%u\n", vmf_frame_name(frame->type), frame->stream, frame->length);
	if (frame->type == VMF_SETTINGS || frame->type == VMF_EXEC) {
		size_t skip = frame->type == VMF_SETTINGS ? 4 : 0;
		if (frame->length < skip) {
			printf("refused: too short\n");
			return;
		}
		if (skip)
			printf("version: %u\n", vmf_get32(frame->payload));
		size_t length = frame->length - skip;
		char *text = malloc(length + 1);
		memcpy(text, frame->payload + skip, length);
		text[length] = '\0';
		if (strlen(text) != length) {
			printf("refused: a NUL byte\n");
		} else if (frame->type == VMF_SETTINGS) {
			struct vmf_run run;
			if (vmf_run_parse(&run, text, err, sizeof(err)) != 0)
				printf("refused: %s\n", err);
			else {
				vmf_run_explain(&run);
				vmf_run_free(&run);
			}
		} else {
			struct vmf_process_spec spec;
			if (vmf_exec_parse(&spec, text, err, sizeof(err)) != 0) {
				printf("refused: %s\n", err);
			} else {
				vmf_exec_explain(&spec);
				vmf_process_spec_free(&spec);
			}
		}
		free(text);
		return;
	}
	if (vmf_host_frame(supervisor, frame, err, sizeof(err)) != 0)
		printf("refused: %s\n", err);
	else
		printf("taken\n");
}

int vmf_decode_frames(void)
{
	/* Line by line: a sanitizer's abort must not lose what was said before it. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct vmf_decoder decoder;
	vmf_decoder_init(&decoder);
	struct vmf_supervisor supervisor;
	memset(&supervisor, 0, sizeof(supervisor));
	supervisor.channel = -1;
	supervisor.decoder = &decoder;
	for (;;) {
		struct vmf_frame frame;
		int got;
		while ((got = vmf_decoder_next(&decoder, &frame)) == 1)
			take(&supervisor, &frame);
		if (got < 0) {
			printf("error: %s\n", decoder.error);
			vmf_decoder_free(&decoder);
			return 1;
		}
		size_t room;
		unsigned char *space = vmf_decoder_space(&decoder, &room);
		if (!space) {
			printf("error: no room\n");
			vmf_decoder_free(&decoder);
			return 1;
		}
		ssize_t n = read(STDIN_FILENO, space, room);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		vmf_decoder_wrote(&decoder, (size_t)n);
	}
	if (decoder.used > decoder.consumed) {
		printf("truncated: %zu bytes\n", decoder.used - decoder.consumed);
		vmf_decoder_free(&decoder);
		return 1;
	}
	printf("bye: %d\n", supervisor.bye);
	vmf_decoder_free(&decoder);
	return 0;
}

int vmf_sample_frames(void)
{
	const char *exit_text = "code=3 signal=0 out=4 err=4 oom=0";
	int fd = STDOUT_FILENO;
	int failed = vmf_send_number(fd, VMF_HELLO, 0, VMF_PROTOCOL_VERSION, "vmfactory-init")
		|| vmf_send_number(fd, VMF_STARTED, 1, 42, NULL)
		|| vmf_send(fd, VMF_STDOUT, 1, "out\n", 4)
		|| vmf_send(fd, VMF_STDERR, 1, "err\n", 4)
		|| vmf_send_number(fd, VMF_CREDIT, 2, 4096, NULL)
		|| vmf_send(fd, VMF_EXIT, 1, exit_text, strlen(exit_text))
		|| vmf_send_number(fd, VMF_ERROR, 2, 127, "exec: \"nothing\": executable file not found in $PATH")
		|| vmf_send(fd, VMF_END, 0, NULL, 0);
	return failed ? 1 : 0;
}

int vmf_resolve_user_at(const char *root, const char *spec)
{
	int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		printf("error: cannot open %s: %s\n", root, strerror(errno));
		return 2;
	}
	struct vmf_identity who;
	char err[300];
	if (vmf_resolve_user(fd, spec, &who, err, sizeof(err)) != 0) {
		printf("error: %s\n", err);
		return 1;
	}
	printf("uid=%u gid=%u groups=", (unsigned)who.uid, (unsigned)who.gid);
	for (int i = 0; i < who.group_count; i++)
		printf("%s%u", i ? "," : "", (unsigned)who.groups[i]);
	printf(" home=%s name=%s\n", who.home, who.name);
	return 0;
}
