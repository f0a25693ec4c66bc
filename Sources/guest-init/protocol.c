/*
 * Frames of the run protocol (protocol.h): the header's byte order, the
 * decoder that cuts a byte stream into frames and refuses what no sender
 * following docs/run-protocol.md would write, and the one blocking send.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

uint32_t vmf_get32(const unsigned char *in)
{
	return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | (uint32_t)in[3];
}

uint16_t vmf_get16(const unsigned char *in)
{
	return (uint16_t)(in[0] << 8 | in[1]);
}

void vmf_put32(unsigned char *out, uint32_t value)
{
	out[0] = (unsigned char)(value >> 24);
	out[1] = (unsigned char)(value >> 16);
	out[2] = (unsigned char)(value >> 8);
	out[3] = (unsigned char)value;
}

void vmf_put16(unsigned char *out, uint16_t value)
{
	out[0] = (unsigned char)(value >> 8);
	out[1] = (unsigned char)value;
}

const char *vmf_frame_name(uint16_t type)
{
	static const char *const names[] = {
		NULL, "hello", "settings", "exec", "started", "stdin", "stdout", "stderr",
		"window-size", "signal", "credit", "exit", "error", "end", "bye",
	};
	if (type < sizeof(names) / sizeof(names[0]) && names[type])
		return names[type];
	return "unknown";
}

/* The decoder starts small and grows to the largest frame it is given. */
#define INITIAL_CAPACITY (VMF_FRAME_HEADER + VMF_DATA_MAX)

void vmf_decoder_init(struct vmf_decoder *decoder)
{
	memset(decoder, 0, sizeof(*decoder));
}

void vmf_decoder_free(struct vmf_decoder *decoder)
{
	free(decoder->buffer);
	memset(decoder, 0, sizeof(*decoder));
}

/* Drops the frame returned last. */
static void drop_consumed(struct vmf_decoder *decoder)
{
	if (!decoder->consumed)
		return;
	decoder->used -= decoder->consumed;
	memmove(decoder->buffer, decoder->buffer + decoder->consumed, decoder->used);
	decoder->consumed = 0;
}

/* How many bytes the frame at the front needs in all; the header alone until it is in. */
static size_t needed(const struct vmf_decoder *decoder)
{
	if (decoder->used < VMF_FRAME_HEADER)
		return VMF_FRAME_HEADER;
	uint32_t length = vmf_get32(decoder->buffer);
	if (length > VMF_FRAME_MAX)
		return VMF_FRAME_HEADER;
	return VMF_FRAME_HEADER + (size_t)length;
}

unsigned char *vmf_decoder_space(struct vmf_decoder *decoder, size_t *room)
{
	*room = 0;
	if (decoder->broken)
		return NULL;
	drop_consumed(decoder);
	/* Reads are not limited to one frame: room for what the current frame needs, at least
	   the initial capacity, so that many small frames arrive in one read. */
	size_t want = needed(decoder);
	if (want < INITIAL_CAPACITY)
		want = INITIAL_CAPACITY;
	if (want > decoder->capacity) {
		unsigned char *grown = realloc(decoder->buffer, want);
		if (!grown)
			return NULL;
		decoder->buffer = grown;
		decoder->capacity = want;
	}
	*room = decoder->capacity - decoder->used;
	return *room ? decoder->buffer + decoder->used : NULL;
}

void vmf_decoder_wrote(struct vmf_decoder *decoder, size_t count)
{
	decoder->used += count;
}

size_t vmf_decoder_feed(struct vmf_decoder *decoder, const void *data, size_t length)
{
	size_t taken = 0;
	while (taken < length) {
		size_t room;
		unsigned char *space = vmf_decoder_space(decoder, &room);
		if (!space || !room)
			break;
		size_t n = length - taken < room ? length - taken : room;
		memcpy(space, (const unsigned char *)data + taken, n);
		vmf_decoder_wrote(decoder, n);
		taken += n;
		/* Full: the caller takes frames out before feeding more. */
		if (decoder->used >= needed(decoder))
			break;
	}
	return taken;
}

/* The decoder refuses everything after a malformed frame: frames cannot be found again. */
static int broken(struct vmf_decoder *decoder)
{
	decoder->broken = 1;
	return -1;
}

int vmf_decoder_next(struct vmf_decoder *decoder, struct vmf_frame *frame)
{
	if (decoder->broken)
		return -1;
	drop_consumed(decoder);
	if (decoder->used < VMF_FRAME_HEADER)
		return 0;
	const unsigned char *header = decoder->buffer;
	uint32_t length = vmf_get32(header);
	uint16_t type = vmf_get16(header + 4), flags = vmf_get16(header + 6);
	if (length > VMF_FRAME_MAX) {
		snprintf(decoder->error, sizeof(decoder->error), "a frame of %u bytes, more than the protocol's %u", length, VMF_FRAME_MAX);
		return broken(decoder);
	}
	if (flags != 0) {
		snprintf(decoder->error, sizeof(decoder->error), "a frame with flags %#x, which version %d does not have", flags, VMF_PROTOCOL_VERSION);
		return broken(decoder);
	}
	if (type == 0) {
		snprintf(decoder->error, sizeof(decoder->error), "a frame of type 0");
		return broken(decoder);
	}
	if (decoder->used < VMF_FRAME_HEADER + (size_t)length)
		return 0;
	frame->length = length;
	frame->type = type;
	frame->flags = flags;
	frame->stream = vmf_get32(header + 8);
	frame->payload = header + VMF_FRAME_HEADER;
	decoder->consumed = VMF_FRAME_HEADER + (size_t)length;
	return 1;
}

void vmf_frame_header(unsigned char *out, uint16_t type, uint32_t stream, uint32_t length)
{
	vmf_put32(out, length);
	vmf_put16(out + 4, type);
	vmf_put16(out + 6, 0);
	vmf_put32(out + 8, stream);
}

int vmf_send(int fd, uint16_t type, uint32_t stream, const void *payload, size_t length)
{
	if (length > VMF_FRAME_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	unsigned char header[VMF_FRAME_HEADER];
	vmf_frame_header(header, type, stream, (uint32_t)length);
	struct iovec parts[2] = {{header, sizeof(header)}, {(void *)payload, length}};
	int count = length ? 2 : 1;
	struct iovec *at = parts;
	while (count > 0) {
		ssize_t n = writev(fd, at, count);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		while (count > 0 && (size_t)n >= at->iov_len) {
			n -= (ssize_t)at->iov_len;
			at++;
			count--;
		}
		if (count > 0) {
			at->iov_base = (char *)at->iov_base + n;
			at->iov_len -= (size_t)n;
		}
	}
	return 0;
}

int vmf_send_number(int fd, uint16_t type, uint32_t stream, uint32_t number, const char *text)
{
	size_t length = text ? strlen(text) : 0;
	if (length > 4000)
		length = 4000;
	unsigned char payload[4 + 4000];
	vmf_put32(payload, number);
	if (length)
		memcpy(payload + 4, text, length);
	return vmf_send(fd, type, stream, payload, 4 + length);
}
