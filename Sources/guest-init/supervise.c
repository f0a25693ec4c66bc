/*
 * The init's event loop (supervise.h). Output is read only while the host has
 * granted room for it, so that one slow reader on the host holds back its own
 * process and nobody else's; input is buffered up to the window the init
 * granted and written as the process takes it.
 */
#define _GNU_SOURCE
#include "supervise.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "container.h"

/* After the command ends, the rest get SIGTERM, and SIGKILL this much later. */
#define END_GRACE_MS 1000

static long now_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static struct vmf_process *find_stream(struct vmf_supervisor *s, uint32_t stream)
{
	for (int i = 0; i < VMF_MAX_PROCESSES; i++)
		if (s->processes[i].stream == stream)
			return &s->processes[i];
	return NULL;
}

static struct vmf_process *find_pid(struct vmf_supervisor *s, pid_t pid)
{
	for (int i = 0; i < VMF_MAX_PROCESSES; i++)
		if (s->processes[i].stream != 0 && s->processes[i].pid == pid && !s->processes[i].exited)
			return &s->processes[i];
	return NULL;
}

static void send_error(struct vmf_supervisor *s, uint32_t stream, int code, const char *message)
{
	vmf_send_number(s->channel, VMF_ERROR, stream, (uint32_t)code, message);
}

/* Writes what input is waiting into the process; grants the host as much room again. */
static void write_input(struct vmf_supervisor *s, struct vmf_process *p)
{
	if (p->in < 0)
		return;
	size_t written = 0;
	while (written < p->input_length) {
		ssize_t n = write(p->in, p->input + written, p->input_length - written);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			/* The process closed its stdin: what is left goes nowhere. */
			written = p->input_length;
			break;
		}
		written += (size_t)n;
	}
	if (written) {
		p->input_length -= written;
		memmove(p->input, p->input + written, p->input_length);
		unsigned char credit[4];
		vmf_put32(credit, (uint32_t)written);
		vmf_send(s->channel, VMF_CREDIT, p->stream, credit, sizeof(credit));
	}
	/* At the end of the host's input: the pipe closes (a terminal stays, as docker's does). */
	if (p->input_ended && p->input_length == 0 && !p->tty) {
		close(p->in);
		p->in = -1;
	}
}

static int start_exec(struct vmf_supervisor *s, const struct vmf_frame *frame, char *err, size_t errlen)
{
	if (frame->stream < 2) {
		snprintf(err, errlen, "an exec on stream %u, which is not an exec's", frame->stream);
		return -1;
	}
	if (find_stream(s, frame->stream)) {
		snprintf(err, errlen, "an exec on stream %u, which is in use", frame->stream);
		return -1;
	}
	if (s->command_done) {
		send_error(s, frame->stream, 125, "the container's command has ended");
		return 0;
	}
	struct vmf_process *p = find_stream(s, 0);
	if (!p) {
		send_error(s, frame->stream, 125, "too many processes run in this VM at once");
		return 0;
	}
	char *text = malloc(frame->length + 1);
	if (!text) {
		send_error(s, frame->stream, 125, "out of memory");
		return 0;
	}
	memcpy(text, frame->payload, frame->length);
	text[frame->length] = '\0';
	struct vmf_process_spec spec;
	char message[900];
	if (strlen(text) != frame->length || vmf_exec_parse(&spec, text, message, sizeof(message)) != 0) {
		if (strlen(text) != frame->length)
			snprintf(message, sizeof(message), "exec: the request holds a NUL byte");
		free(text);
		send_error(s, frame->stream, 125, message);
		return 0;
	}
	memset(p, 0, sizeof(*p));
	p->stream = frame->stream;
	p->credit = VMF_WINDOW;
	int code = vmf_process_start(p, &spec, &s->context, message, sizeof(message));
	vmf_process_spec_free(&spec);
	free(text);
	if (code != 0) {
		memset(p, 0, sizeof(*p));
		send_error(s, frame->stream, code, message);
		return 0;
	}
	vmf_send_number(s->channel, VMF_STARTED, p->stream, (uint32_t)p->pid, NULL);
	return 0;
}

int vmf_host_frame(struct vmf_supervisor *s, const struct vmf_frame *frame, char *err, size_t errlen)
{
	if (frame->type == VMF_EXEC)
		return start_exec(s, frame, err, errlen);
	if (frame->type == VMF_BYE) {
		s->bye = 1;
		return 0;
	}
	struct vmf_process *p = frame->stream ? find_stream(s, frame->stream) : NULL;
	switch (frame->type) {
	case VMF_STDIN:
		if (!p || p->in < 0 || p->input_ended) {
			/* Input for a process that is gone or closed its stdin: dropped. */
			return 0;
		}
		if (frame->length == 0) {
			p->input_ended = 1;
		} else {
			if (p->input_length + frame->length > VMF_WINDOW) {
				snprintf(err, errlen, "stdin beyond the window on stream %u", frame->stream);
				return -1;
			}
			unsigned char *grown = realloc(p->input, p->input_length + frame->length);
			if (!grown) {
				snprintf(err, errlen, "out of memory for stdin");
				return -1;
			}
			p->input = grown;
			memcpy(p->input + p->input_length, frame->payload, frame->length);
			p->input_length += frame->length;
		}
		write_input(s, p);
		return 0;
	case VMF_WINDOW_SIZE: {
		if (frame->length != 4) {
			snprintf(err, errlen, "a window size of %u bytes", frame->length);
			return -1;
		}
		struct winsize size = {.ws_row = vmf_get16(frame->payload), .ws_col = vmf_get16(frame->payload + 2)};
		if (p && p->master >= 0)
			ioctl(p->master, TIOCSWINSZ, &size);
		return 0;
	}
	case VMF_SIGNAL: {
		uint32_t number = frame->length == 4 ? vmf_get32(frame->payload) : 0;
		if (number < 1 || number >= NSIG) {
			snprintf(err, errlen, "a signal frame that names no signal");
			return -1;
		}
		if (p && !p->exited && p->pid > 0)
			kill(p->pid, p->stream == 1 && number == SIGTERM ? s->run->stop_signal : (int)number);
		return 0;
	}
	case VMF_CREDIT: {
		if (frame->length != 4) {
			snprintf(err, errlen, "a credit of %u bytes", frame->length);
			return -1;
		}
		uint32_t more = vmf_get32(frame->payload);
		if (p)
			p->credit = more > 4 * VMF_WINDOW - p->credit ? 4 * VMF_WINDOW : p->credit + more;
		return 0;
	}
	default:
		snprintf(err, errlen, "a frame of type %u (%s), which the init does not take now", frame->type, vmf_frame_name(frame->type));
		return -1;
	}
}

/* Acts on every whole frame the decoder holds. */
static void take_frames(struct vmf_supervisor *s)
{
	struct vmf_frame frame;
	int got;
	char err[200];
	while ((got = vmf_decoder_next(s->decoder, &frame)) == 1)
		if (vmf_host_frame(s, &frame, err, sizeof(err)) != 0)
			vmf_say(VMF_TAG "refused a frame from the host: %s\n", err);
	if (got < 0) {
		vmf_say(VMF_TAG "the host's frames are malformed (%s); the channel is not read any more\n", s->decoder->error);
		s->channel_open = 0;
	}
}

/* Reads what the channel has and acts on each frame. */
static void read_channel(struct vmf_supervisor *s)
{
	size_t room;
	unsigned char *space = vmf_decoder_space(s->decoder, &room);
	if (!space) {
		s->channel_open = 0;
		return;
	}
	ssize_t n = read(s->channel, space, room);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		s->channel_open = 0;
		return;
	}
	vmf_decoder_wrote(s->decoder, (size_t)n);
	take_frames(s);
}

/* Copies one ready output into a frame; closes it at its end, or once drained after the exit. */
static void pump(struct vmf_supervisor *s, struct vmf_process *p, int *fd, uint16_t type, unsigned long long *bytes)
{
	static unsigned char buffer[VMF_DATA_MAX];
	if (*fd < 0 || p->credit == 0)
		return;
	size_t want = p->credit < VMF_DATA_MAX ? p->credit : VMF_DATA_MAX;
	ssize_t n = read(*fd, buffer, want);
	if (n < 0 && errno == EINTR)
		return;
	if (n < 0 && errno == EAGAIN) {
		if (!p->exited)
			return;
	} else if (n > 0) {
		p->credit -= (uint32_t)n;
		*bytes += (unsigned long long)n;
		vmf_send(s->channel, type, p->stream, buffer, (size_t)n);
		return;
	}
	/* The end of file (EIO from a terminal whose last holder left), or drained after the exit. */
	close(*fd);
	*fd = -1;
}

/* A process's exit, once its output is out: code=, signal=, out=, err=, oom=. */
static void report_exit(struct vmf_supervisor *s, struct vmf_process *p)
{
	char text[200];
	int status = p->status;
	snprintf(text, sizeof(text), "code=%d signal=%d out=%llu err=%llu oom=%lu", vmf_exit_code(status),
		 WIFSIGNALED(status) ? WTERMSIG(status) : 0, p->out_bytes, p->err_bytes, vmf_oom_kills(status));
	vmf_send(s->channel, VMF_EXIT, p->stream, text, strlen(text));
	p->reported = 1;
	if (p->master >= 0 && p->in == p->master)
		p->in = -1;
	vmf_process_release(p);
}

/* Reaps every child that ended; returns 1 while children are left. */
static int reap(struct vmf_supervisor *s)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid == 0)
			return 1;
		if (pid < 0)
			return errno != ECHILD;
		struct vmf_process *p = find_pid(s, pid);
		if (!p) {
			s->orphans++;
			continue;
		}
		p->exited = 1;
		p->status = status;
		if (p->stream == 1) {
			s->command_done = 1;
			s->command_status = status;
		}
	}
}

int vmf_supervise(struct vmf_supervisor *s)
{
	long ending_since = -1;
	int killed = 0, children = 1;
	/* Frames that came with the settings, before there was a process to take them. */
	take_frames(s);
	for (;;) {
		int busy = 0, drain = 0;
		for (int i = 0; i < VMF_MAX_PROCESSES; i++) {
			struct vmf_process *p = &s->processes[i];
			if (p->stream == 0 || p->reported)
				continue;
			if (p->exited && p->out < 0 && p->err < 0)
				report_exit(s, p);
			else
				busy = 1;
			if (p->exited && p->credit > 0 && (p->out >= 0 || p->err >= 0))
				drain = 1;
		}
		for (int i = 0; i < VMF_MAX_PROCESSES; i++)
			if (s->processes[i].reported)
				memset(&s->processes[i], 0, sizeof(s->processes[i]));
		if (s->command_done && !busy && !children)
			break;
		/* The container ends with its command: what it left running goes too, execs included. */
		if (s->command_done && ending_since < 0) {
			ending_since = now_ms();
			kill(-1, SIGTERM);
		}
		if (ending_since >= 0 && !killed && now_ms() - ending_since > END_GRACE_MS) {
			killed = 1;
			kill(-1, SIGKILL);
		}

		struct pollfd fds[2 + 3 * VMF_MAX_PROCESSES];
		struct vmf_process *owners[2 + 3 * VMF_MAX_PROCESSES];
		int count = 0;
		fds[count] = (struct pollfd){.fd = s->signals, .events = POLLIN};
		owners[count++] = NULL;
		fds[count] = (struct pollfd){.fd = s->channel_open ? s->channel : -1, .events = POLLIN};
		owners[count++] = NULL;
		for (int i = 0; i < VMF_MAX_PROCESSES; i++) {
			struct vmf_process *p = &s->processes[i];
			if (p->stream == 0)
				continue;
			int ends[3] = {p->credit ? p->out : -1, p->credit ? p->err : -1, p->input_length ? p->in : -1};
			for (int e = 0; e < 3; e++) {
				if (ends[e] < 0)
					continue;
				fds[count] = (struct pollfd){.fd = ends[e], .events = e < 2 ? POLLIN : POLLOUT};
				owners[count++] = p;
			}
		}
		/* Drained at once; while the rest end, woken to send SIGKILL in time. */
		int timeout = drain ? 0 : ending_since >= 0 ? 20 : -1;
		if (poll(fds, (nfds_t)count, timeout) < 0 && errno != EINTR) {
			vmf_say(VMF_TAG "poll: %s\n", strerror(errno));
			struct timespec pause = {0, 10 * 1000 * 1000};
			nanosleep(&pause, NULL);
		}
		for (int i = 2; i < count; i++) {
			struct vmf_process *p = owners[i];
			if (fds[i].revents == 0 && !p->exited)
				continue;
			if (fds[i].fd == p->out)
				pump(s, p, &p->out, VMF_STDOUT, &p->out_bytes);
			else if (fds[i].fd == p->err)
				pump(s, p, &p->err, VMF_STDERR, &p->err_bytes);
			else if (fds[i].fd == p->in)
				write_input(s, p);
		}
		/* Exited processes whose output was not polled (no room granted then) drain here. */
		for (int i = 0; drain && i < VMF_MAX_PROCESSES; i++) {
			struct vmf_process *p = &s->processes[i];
			if (p->stream && p->exited) {
				pump(s, p, &p->out, VMF_STDOUT, &p->out_bytes);
				pump(s, p, &p->err, VMF_STDERR, &p->err_bytes);
			}
		}
		if (fds[1].revents)
			read_channel(s);
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			if (read(s->signals, &info, sizeof(info)) == (ssize_t)sizeof(info) && !s->command_done) {
				pid_t command = s->processes[0].pid;
				if (info.ssi_signo == SIGTERM)
					kill(command, s->run->stop_signal);
				else if (info.ssi_signo == SIGINT || info.ssi_signo == SIGHUP)
					kill(command, (int)info.ssi_signo);
			}
		}
		/* Reaped on every round, not only on SIGCHLD: one signal may stand for many exits. */
		children = reap(s);
	}
	return s->command_status;
}

void vmf_wait_for_bye(struct vmf_supervisor *s, long ms)
{
	long start = now_ms();
	while (s->channel_open && !s->bye && now_ms() - start < ms) {
		struct pollfd fd = {.fd = s->channel, .events = POLLIN};
		if (poll(&fd, 1, 100) <= 0)
			continue;
		size_t room;
		unsigned char *space = vmf_decoder_space(s->decoder, &room);
		ssize_t n = space ? read(s->channel, space, room) : -1;
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return;
		vmf_decoder_wrote(s->decoder, (size_t)n);
		struct vmf_frame frame;
		int got;
		while ((got = vmf_decoder_next(s->decoder, &frame)) == 1)
			if (frame.type == VMF_BYE)
				s->bye = 1;
		if (got < 0)
			return;
	}
}
