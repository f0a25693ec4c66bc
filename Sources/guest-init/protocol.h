/*
 * The run protocol between vmfactory and the init (docs/run-protocol.md): frames
 * on one virtio-serial port, vmf.channel. Every frame is a 12-byte header, then
 * its payload:
 *
 *   u32 length   of the payload, at most VMF_FRAME_MAX
 *   u16 type     enum vmf_frame_type
 *   u16 flags    0 in version 1
 *   u32 stream   0 for the run itself, 1 for its command, 2 and up for execs
 *
 * all in network byte order. This file only encodes and decodes: it does no I/O
 * but vmf_send, so that the host's tests run it as it is.
 */
#ifndef VMFACTORY_PROTOCOL_H
#define VMFACTORY_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* The version this init speaks (a test builds an init of another with -D). */
#ifndef VMF_PROTOCOL_VERSION
#define VMF_PROTOCOL_VERSION 3
#endif
#define VMF_CHANNEL_PORT "vmf.channel"
#define VMF_FRAME_HEADER 12
/* The largest payload either side sends: the settings and an exec's request. */
#define VMF_FRAME_MAX (1u << 20)
/* The largest data payload (stdin, stdout, stderr). */
#define VMF_DATA_MAX 65536u
/* Bytes of output (or input) a stream may have in flight before the reader grants more. */
#define VMF_WINDOW (256u * 1024u)

enum vmf_frame_type {
	VMF_HELLO = 1,    /* init: u32 version, then its name */
	VMF_SETTINGS = 2, /* host: u32 version, then the run's settings (key=value lines) */
	VMF_EXEC = 3,     /* host: a new process on a new stream (key=value lines) */
	VMF_STARTED = 4,  /* init: u32 pid: the stream's process runs */
	VMF_STDIN = 5,    /* host: bytes for the process's stdin (or terminal); empty: end of file */
	VMF_STDOUT = 6,   /* init: the process's stdout (or terminal) */
	VMF_STDERR = 7,   /* init: the process's stderr */
	VMF_WINDOW_SIZE = 8, /* host: u16 rows, u16 columns */
	VMF_SIGNAL = 9,   /* host: u32 signal for the stream's process */
	VMF_CREDIT = 10,  /* both: u32 more bytes the sender may send on the stream */
	VMF_EXIT = 11,    /* init: the stream's process ended (key=value words) */
	VMF_ERROR = 12,   /* init: u32 exit status, then a message: the stream's process did not start */
	VMF_END = 13,     /* init: every stream has ended; the machine ends after the host's bye */
	VMF_BYE = 14,     /* host: everything arrived; the init may end the machine */
	VMF_TAKEN = 15,   /* init: the run's settings arrived whole and were read (stream 0) */
	VMF_CLOCK = 16,   /* host: u64 seconds, u32 nanoseconds of its CLOCK_REALTIME, answering taken */
};

struct vmf_frame {
	uint16_t type;
	uint16_t flags;
	uint32_t stream;
	uint32_t length;
	/* Points into the decoder's buffer: valid until the next vmf_decoder call. */
	const unsigned char *payload;
};

/* Cuts a byte stream into frames; keeps at most one whole frame. */
struct vmf_decoder {
	unsigned char *buffer;
	size_t used;
	size_t capacity;
	/* Bytes of the frame returned last, dropped on the next call. */
	size_t consumed;
	/* Set once the stream was malformed: nothing after it can be framed. */
	int broken;
	char error[160];
};

void vmf_decoder_init(struct vmf_decoder *decoder);
void vmf_decoder_free(struct vmf_decoder *decoder);
/*
 * How many bytes the decoder takes now (0 while it holds a whole frame not yet
 * taken with vmf_decoder_next), and where to put them; then vmf_decoder_wrote.
 */
unsigned char *vmf_decoder_space(struct vmf_decoder *decoder, size_t *room);
void vmf_decoder_wrote(struct vmf_decoder *decoder, size_t count);
/* Copies bytes in; returns how many it took. */
size_t vmf_decoder_feed(struct vmf_decoder *decoder, const void *data, size_t length);
/*
 * The next whole frame: 1 with *frame set, 0 when more bytes are needed, -1
 * when the stream is malformed (a message in decoder->error; the decoder stays
 * broken).
 */
int vmf_decoder_next(struct vmf_decoder *decoder, struct vmf_frame *frame);

/* Writes the header of a frame into out (VMF_FRAME_HEADER bytes). */
void vmf_frame_header(unsigned char *out, uint16_t type, uint32_t stream, uint32_t length);
/* Writes one frame whole to fd (blocking); 0, or -1 with errno. */
int vmf_send(int fd, uint16_t type, uint32_t stream, const void *payload, size_t length);
/* A frame whose payload is one u32, then optional text. */
int vmf_send_number(int fd, uint16_t type, uint32_t stream, uint32_t number, const char *text);

uint32_t vmf_get32(const unsigned char *in);
uint16_t vmf_get16(const unsigned char *in);
void vmf_put32(unsigned char *out, uint32_t value);
void vmf_put16(unsigned char *out, uint16_t value);

/* A frame type's name, for messages and tests ("unknown" for others). */
const char *vmf_frame_name(uint16_t type);

#endif
