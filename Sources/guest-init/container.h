/*
 * Container mode of vmfactory-init, for `vmfactory run`: the run's settings
 * (/etc/vmfactory/run.conf, appended to the initrd by vmfactory for each run),
 * the image's root disk, the run's volumes and network, the command's user,
 * working directory and environment, and the channels to the host.
 */
#ifndef VMFACTORY_CONTAINER_H
#define VMFACTORY_CONTAINER_H

#include <stddef.h>

#define VMF_RUN_CONF "/etc/vmfactory/run.conf"
#define VMF_MAX_VOLUMES 32
#define VMF_MAX_TMPFS 32

struct vmf_volume {
	/* "9p" or "virtiofs". */
	const char *type;
	/* The mount tag QEMU gives the device. */
	const char *tag;
	int readonly;
	/* An absolute path inside the image. */
	const char *path;
};

/* A tmpfs the run asked for (--tmpfs PATH[:OPTIONS]). */
struct vmf_tmpfs {
	/* MS_RDONLY, MS_NOEXEC, MS_NOSUID, MS_NODEV as the options say. */
	unsigned long flags;
	/* tmpfs's own options (size=, mode=, uid=, gid=, nr_inodes=), comma-separated; may be empty. */
	const char *data;
	/* An absolute path inside the image. */
	const char *path;
};

/* A growing, NULL-terminated list of strings. */
struct vmf_words {
	int count;
	int capacity;
	char **items;
};

struct vmf_run {
	struct vmf_words argv;
	/* The environment the host combined (image, --env-file, -e). */
	struct vmf_words envp;
	/* USER[:GROUP], names or numbers; empty for root. */
	const char *user;
	const char *workdir;
	const char *hostname;
	int readonly;
	/* The host streams stdin on the vmf.stdin port (-i). */
	int stdin_open;
	/* The command gets a pseudo-terminal relayed on the vmf.tty port (-t). */
	int tty;
	int rows;
	int cols;
	/* What SIGTERM to PID 1 and a stop from the host become (the image's StopSignal). */
	int stop_signal;
	int verbose;
	/* The run's overlay is kept (--keep): its file system is left clean. */
	int keep;
	/* QEMU user networking on eth0, or none. */
	int network;
	const char *address;
	const char *netmask;
	const char *gateway;
	const char *dns;
	/* The size of /dev/shm in bytes (docker's --shm-size; 64 MiB unless given). */
	unsigned long long shm_bytes;
	/* --pids-limit: at most this many tasks in the command's cgroup; 0 for no limit. */
	unsigned long long pids_limit;
	/* Set by the init: the command runs in a cgroup of its own. */
	int in_cgroup;
	int volume_count;
	struct vmf_volume volumes[VMF_MAX_VOLUMES];
	int tmpfs_count;
	struct vmf_tmpfs tmpfs[VMF_MAX_TMPFS];
};

/*
 * Parses run.conf: one `key=value` a line; in values, `\n` stands for a line
 * break and `\\` for a backslash. The run keeps pointers into text. Returns 0,
 * or -1 with a message in err.
 */
int vmf_run_parse(struct vmf_run *run, char *text, char *err, size_t errlen);

/* Runs the container as PID 1 and ends the machine; never returns. */
void vmf_run_container(struct vmf_run *run) __attribute__((noreturn));

/* For tests on the build host: prints what the run would do. */
void vmf_run_explain(const struct vmf_run *run);

/* What init.c shares with container mode. */
#define VMF_TAG "vmfactory-init: "
void vmf_say(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *vmf_read_file(const char *path);
/* Ends every process but PID 1 (SIGTERM, then SIGKILL); returns how many needed SIGKILL. */
int vmf_end_the_rest(int *orphans);
/* A wait status as a shell's $? says it: the exit status, or 128 + the signal. */
int vmf_exit_code(int status);
void vmf_end_machine(int code) __attribute__((noreturn));
/* Whether vmf_end_machine syncs first (container mode knows when nothing needs it). */
extern int vmf_sync_at_end;

#endif
