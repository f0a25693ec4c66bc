/*
 * Container mode: PID 1 of a `vmfactory run` machine.
 *
 * The host and the init speak the run protocol (protocol.h,
 * docs/run-protocol.md) on one virtio-serial port: the init says hello, the
 * host sends the run's settings, and the init mounts the image's disk, switches
 * into it, sets up the volumes and the network (rootfs.c, network.c), starts
 * the command and supervises it and the host's execs (supervise.c) until the
 * command ends. vmf_run_container is the list of steps; a step that fails
 * returns its error here, which the host hears before the machine ends.
 */
#define _GNU_SOURCE
#include "container.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "network.h"
#include "process.h"
#include "protocol.h"
#include "rootfs.h"
#include "supervise.h"

/* Everything one run holds: the channel, its decoder, the processes and the settings. */
struct run_context {
	struct vmf_supervisor session;
	struct vmf_decoder decoder;
	struct vmf_run run;
};

/* Ends the run before the command started: the host hears why, and vmfactory exits with its code. */
static void stop_before_start(struct run_context *context, const struct vmf_error *e) __attribute__((noreturn));
static void stop_before_start(struct run_context *context, const struct vmf_error *e)
{
	vmf_say(VMF_TAG "%s\n", e->message);
	if (context->session.channel >= 0) {
		vmf_send_number(context->session.channel, VMF_ERROR, 1, (uint32_t)e->code, e->message);
		vmf_send(context->session.channel, VMF_END, 0, NULL, 0);
		vmf_wait_for_bye(&context->session, 5000);
	}
	vmf_end_the_rest(&(int){0});
	vmf_end_machine(e->code);
}

/*
 * Opens the ports named in `names` into `fds` (-1 for a NULL name) with one scan of
 * sysfs a round; ports are announced by the host shortly after the driver starts.
 * Returns 0 once all are open, -1 after DEVICE_WAIT_MS.
 */
static int open_ports(const char *const *names, const int *flags, int *fds, int count)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < count; i++)
		fds[i] = -1;
	for (;;) {
		int missing = 0;
		DIR *ports = opendir("/sys/class/virtio-ports");
		struct dirent *entry;
		while (ports && (entry = readdir(ports))) {
			if (entry->d_name[0] == '.')
				continue;
			char path[300];
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", entry->d_name);
			char *text = vmf_read_file(path);
			if (!text)
				continue;
			text[strcspn(text, "\n")] = '\0';
			for (int i = 0; i < count; i++) {
				if (names[i] && fds[i] < 0 && strcmp(text, names[i]) == 0) {
					snprintf(path, sizeof(path), "/dev/%s", entry->d_name);
					fds[i] = open(path, flags[i] | O_CLOEXEC | O_NOCTTY);
				}
			}
			free(text);
		}
		if (ports)
			closedir(ports);
		for (int i = 0; i < count; i++)
			missing += names[i] && fds[i] < 0;
		if (!missing)
			return 0;
		if (vmf_elapsed_ms(&start) > VMF_DEVICE_WAIT_MS)
			return -1;
		vmf_pause_ms(1);
	}
}

/* With verbose: how far the run got, in seconds since boot, on the console. */
static void step(const struct vmf_run *run, const char *what)
{
	if (!run->verbose)
		return;
	struct timespec now;
	clock_gettime(CLOCK_BOOTTIME, &now);
	vmf_say(VMF_TAG "%ld.%06ld %s\n", (long)now.tv_sec, now.tv_nsec / 1000, what);
}

/*
 * Reads the channel until the host's next frame of `type` (others before it are skipped);
 * `what` names it when the channel ends first. The frame points into the decoder's buffer.
 */
static int next_host_frame(struct run_context *context, uint16_t type, const char *what, struct vmf_frame *frame,
			   struct vmf_error *e)
{
	struct vmf_supervisor *session = &context->session;
	struct vmf_decoder *decoder = &context->decoder;
	for (;;) {
		int got = vmf_decoder_next(decoder, frame);
		if (got < 0)
			return vmf_fail(e, 125, "the host's frames are malformed: %s", decoder->error);
		if (got > 0) {
			if (frame->type == type)
				return 0;
			continue;
		}
		size_t room;
		unsigned char *space = vmf_decoder_space(decoder, &room);
		ssize_t n = space ? read(session->channel, space, room) : -1;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return vmf_fail(e, 125, "the run's channel ended before %s came", what);
		vmf_decoder_wrote(decoder, (size_t)n);
	}
}

/* The host's clock frame, which answers taken: u64 seconds and u32 nanoseconds. */
static int receive_clock(struct run_context *context, struct vmf_error *e)
{
	struct vmf_frame frame;
	if (next_host_frame(context, VMF_CLOCK, "the host's clock", &frame, e) != 0)
		return -1;
	if (frame.length != 12)
		return vmf_fail(e, 125, "the host's clock frame is malformed");
	uint64_t seconds = (uint64_t)vmf_get32(frame.payload) << 32 | vmf_get32(frame.payload + 4);
	uint32_t nanoseconds = vmf_get32(frame.payload + 8);
	if (nanoseconds > 999999999u || seconds > (1ULL << 62))
		return vmf_fail(e, 125, "the host's clock frame is malformed");
	context->run.clock.tv_sec = (time_t)seconds;
	context->run.clock.tv_nsec = (long)nanoseconds;
	context->run.clock_set = 1;
	return 0;
}

/*
 * Says hello and waits for the run's settings; refuses settings of another
 * version. The settings' text is kept for the life of the run.
 */
static int receive_settings(struct run_context *context, struct vmf_error *e)
{
	struct vmf_supervisor *session = &context->session;
	struct vmf_decoder *decoder = &context->decoder;
	const char *names[1] = {VMF_CHANNEL_PORT};
	const int flags[1] = {O_RDWR};
	if (open_ports(names, flags, &session->channel, 1) != 0)
		return vmf_fail(e, 125, "the run's channel (%s) did not appear within %d s", VMF_CHANNEL_PORT, VMF_DEVICE_WAIT_MS / 1000);
	session->channel_open = 1;
	vmf_decoder_init(decoder);
	session->decoder = decoder;
	if (vmf_send_number(session->channel, VMF_HELLO, 0, VMF_PROTOCOL_VERSION, "vmfactory-init") != 0)
		return vmf_fail(e, 125, "cannot write to the run's channel: %s", strerror(errno));
	struct vmf_frame frame;
	if (next_host_frame(context, VMF_SETTINGS, "the settings", &frame, e) != 0)
		return -1;
	if (frame.length < 4)
		return vmf_fail(e, 125, "the settings frame is too short");
	uint32_t version = vmf_get32(frame.payload);
	if (version != VMF_PROTOCOL_VERSION)
		return vmf_fail(e, 125, "vmfactory sent settings of run protocol %u; this init speaks version %d: use a kernel and initrd built by the same vmfactory",
				version, VMF_PROTOCOL_VERSION);
	char *text = malloc(frame.length - 4 + 1);
	if (!text)
		return vmf_fail(e, 125, "out of memory for the settings");
	memcpy(text, frame.payload + 4, frame.length - 4);
	text[frame.length - 4] = '\0';
	if (strlen(text) != frame.length - 4)
		return vmf_fail(e, 125, "the settings hold a NUL byte");
	char err[256];
	if (vmf_run_parse(&context->run, text, err, sizeof(err)) != 0)
		return vmf_fail(e, 125, "%s", err);
	/* Before anything is done with them: the host knows a restored VM is alive, and
	   answers with its clock, as late as it can be (a restored VM may have run long after
	   the settings were sent). */
	vmf_send(session->channel, VMF_TAKEN, 0, NULL, 0);
	return receive_clock(context, e);
}

/*
 * What must differ between VMs restored from one template, before anything reads it: the
 * random generator reseeded from the host's entropy (the kernel then derives boot_id, which
 * nothing read before the snapshot, from the new state), and the clock set to the host's.
 */
static int refresh_clone_state(const struct vmf_run *run, struct vmf_error *e)
{
	if (run->seed_length > 0) {
		struct {
			struct rand_pool_info info;
			unsigned char bytes[VMF_MAX_SEED];
		} entropy;
		entropy.info.entropy_count = (int)(run->seed_length * 8);
		entropy.info.buf_size = (int)run->seed_length;
		memcpy(entropy.bytes, run->seed, run->seed_length);
		int random = open("/dev/urandom", O_RDWR | O_CLOEXEC);
		int added = random >= 0 ? ioctl(random, RNDADDENTROPY, &entropy.info) : -1;
		int saved = errno;
		/* The new input reaches what get_random_bytes and /dev/urandom give at once. */
		if (added == 0 && ioctl(random, RNDRESEEDCRNG) != 0)
			vmf_say(VMF_TAG "cannot reseed the random generator: %s\n", strerror(errno));
		explicit_bzero(&entropy, sizeof(entropy));
		if (random >= 0)
			close(random);
		if (added != 0)
			return vmf_fail(e, 125, "cannot add the host's entropy to the random generator: %s", strerror(saved));
	}
	if (run->clock_set && clock_settime(CLOCK_REALTIME, &run->clock) != 0)
		return vmf_fail(e, 125, "cannot set the clock: %s", strerror(errno));
	return 0;
}

/* The image's root, its mounts, host files, volumes and network, and docker's defaults. */
static int set_up(struct vmf_run *run, int *initramfs, struct vmf_error *e)
{
	if (vmf_mount_root(run, e) != 0)
		return -1;
	step(run, "root mounted");
	if (vmf_switch_root(initramfs, e) != 0)
		return -1;
	step(run, "switched root");
	if (vmf_mount_container_filesystems(run, e) != 0)
		return -1;
	if (sethostname(run->hostname, strlen(run->hostname)) != 0)
		vmf_say(VMF_TAG "cannot set the hostname %s: %s\n", run->hostname, strerror(errno));
	vmf_write_host_files(run);
	if (vmf_mount_volumes(run, e) != 0 || vmf_configure_network(run, e) != 0)
		return -1;
	vmf_container_defaults();
	step(run, "volumes and network ready");
	if (vmf_make_path(run->command.workdir, 0755) != 0 && errno != EROFS && run->verbose)
		vmf_say(VMF_TAG "cannot create %s: %s\n", run->command.workdir, strerror(errno));
	return 0;
}

/* Signals through a signalfd, the image's root for user lookups, the cgroup; then the command. */
static int start_command(struct run_context *context, struct vmf_error *e)
{
	struct vmf_supervisor *session = &context->session;
	struct vmf_run *run = &context->run;
	sigset_t handled;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigaddset(&handled, SIGHUP);
	sigprocmask(SIG_BLOCK, &handled, &session->context.original_mask);
	session->signals = signalfd(-1, &handled, SFD_CLOEXEC);
	if (session->signals < 0)
		return vmf_fail(e, 125, "signalfd: %s", strerror(errno));
	session->run = run;
	session->context.hostname = run->hostname;
	session->context.root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	char err[900];
	if (run->pids_limit) {
		if (vmf_make_command_cgroup(run->pids_limit, err, sizeof(err)) != 0)
			return vmf_fail(e, 125, "%s", err);
		session->context.in_cgroup = 1;
	}
	struct vmf_process *command = &session->processes[0];
	command->stream = 1;
	command->credit = VMF_WINDOW;
	int code = vmf_process_start(command, &run->command, &session->context, err, sizeof(err));
	if (code != 0)
		return vmf_fail(e, code, "%s", err);
	vmf_send_number(session->channel, VMF_STARTED, 1, (uint32_t)command->pid, NULL);
	return 0;
}

void vmf_run_container(void)
{
	static struct run_context context = {.session = {.channel = -1, .signals = -1}};
	struct vmf_error e = {0, ""};
	int initramfs = -1;
	if (receive_settings(&context, &e) != 0)
		stop_before_start(&context, &e);
	struct vmf_run *run = &context.run;
	step(run, "settings received");
	if (refresh_clone_state(run, &e) != 0 || set_up(run, &initramfs, &e) != 0 || start_command(&context, &e) != 0)
		stop_before_start(&context, &e);
	step(run, "command started");
	vmf_free_initramfs(initramfs);
	int status = vmf_supervise(&context.session);
	step(run, "command ended");
	if (run->verbose)
		vmf_say(VMF_TAG "reaped %d orphaned processes\n", context.session.orphans);
	/* What volumes and a folder root were written reaches the host; a kept run's overlay
	   holds a clean file system. A removed run's overlay needs neither. */
	if (run->keep || run->volume_count > 0 || run->root_tag)
		sync();
	else
		vmf_sync_at_end = 0;
	if (run->keep)
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	/* The last bytes may still be in QEMU's queues: the host says bye once they arrived. */
	vmf_send(context.session.channel, VMF_END, 0, NULL, 0);
	vmf_wait_for_bye(&context.session, 60000);
	vmf_end_machine(vmf_exit_code(status));
}
