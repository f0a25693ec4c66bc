/*
 * The settings the host sends: the run's (VMF_SETTINGS) and an exec's
 * (VMF_EXEC), both as key=value lines; in values, `\n` stands for a line break
 * and `\\` for a backslash (docs/run-protocol.md lists the keys). Parsed here,
 * apart from anything that acts on them, so that the host's tests run it.
 *
 * The boot mode's init.conf (launch.h) is the same format, read with the same
 * vmf_conf_next; only the keys differ.
 */
#ifndef VMFACTORY_CONF_H
#define VMFACTORY_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

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

/*
 * key=value lines as the host writes them, read one pair at a time. Empty lines
 * and lines starting with '#' are skipped; a line splits at its first '='; the
 * value is unescaped in place (`\n` a line break, `\\` a backslash, any other
 * backslash refused). `name` says whose lines they are in messages
 * ("settings:3: ...").
 */
struct vmf_conf_lines {
	/* The text still to read; NULL once it is all read. */
	char *rest;
	const char *name;
	/* The number of the line read last, for the caller's own messages. */
	int line;
};

/*
 * The next pair, pointing into the text (which it changes): 1 for a pair, 0 at
 * the end, -1 with a message in err naming the line.
 */
int vmf_conf_next(struct vmf_conf_lines *lines, char **key, char **value, char *err, size_t errlen);

#define VMF_MAX_FILES 32

/* A file the engine gives the container (its /etc/hosts and the like), bound over the image's. */
struct vmf_file {
	const char *path;
	const char *content;
	int readonly;
};

/* A growing, NULL-terminated list of strings. */
struct vmf_words {
	int count;
	int capacity;
	char **items;
};

/* The PATH a process gets when nothing else sets one, as docker's. */
#define VMF_DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

int vmf_words_add(struct vmf_words *words, char *word);
void vmf_words_free(struct vmf_words *words);
/* NAME=VALUE into an environment, replacing an entry of the same name; -1 when malformed. */
int vmf_env_set(struct vmf_words *env, char *entry);
int vmf_env_has(const struct vmf_words *env, const char *name);

#define VMF_MAX_PROCESS_GROUPS 64
#define VMF_MAX_RLIMITS 16

/* rlimit=NAME SOFT HARD: one resource's limits (RLIM_INFINITY for unlimited). */
struct vmf_rlimit {
	int resource;
	unsigned long long soft;
	unsigned long long hard;
};

/* The capability sets an OCI runtime's process asks for: bit N is capability N. */
struct vmf_capabilities {
	uint64_t bounding;
	uint64_t effective;
	uint64_t permitted;
	uint64_t inheritable;
	uint64_t ambient;
};

/* One process: the run's command, or an exec's. */
struct vmf_process_spec {
	struct vmf_words argv;
	/* The environment the host combined (image, --env-file, -e). */
	struct vmf_words envp;
	/* USER[:GROUP], names or numbers; empty for root. */
	const char *user;
	const char *workdir;
	/* The host sends stdin (-i). */
	int stdin_open;
	/* The process gets a pseudo-terminal (-t). */
	int tty;
	int rows;
	int cols;
	/* vmfactory cp (an exec's only): a tar stream of this path on stdout, */
	const char *copy_out;
	/* or a tar stream from stdin extracted at this path, its top entry `copy_top`. */
	const char *copy_in;
	const char *copy_top;
	/* groups=: the supplementary groups exactly, instead of those /etc/group lists for the user. */
	int groups_given;
	int group_count;
	gid_t groups[VMF_MAX_PROCESS_GROUPS];
	/* rlimit=, one resource each, set before the process drops to its user. */
	int rlimit_count;
	struct vmf_rlimit rlimits[VMF_MAX_RLIMITS];
	/* Any cap* key: the process ends with exactly these sets (a set not given is empty). */
	int caps_given;
	struct vmf_capabilities caps;
	/* nonewprivs=1: PR_SET_NO_NEW_PRIVS before exec. */
	int no_new_privs;
	/* umask=: the process's file mode mask; otherwise the init's (0022). */
	int umask_given;
	mode_t umask;
};

/* The most seed bytes the settings carry. */
#define VMF_MAX_SEED 64

struct vmf_run {
	struct vmf_process_spec command;
	const char *hostname;
	/* A folder root (run --rootfs, an OCI bundle's) over "virtiofs" or "9p" with this tag; NULL: the image's disk, /dev/vda. */
	const char *root_type;
	const char *root_tag;
	int readonly;
	/* What SIGTERM to PID 1 and a stop from the host become (the image's StopSignal). */
	int stop_signal;
	int verbose;
	/* The run's overlay is kept (--keep): its file system is left clean. */
	int keep;
	/* A network device on eth0, or none. */
	int network;
	const char *address;
	const char *netmask;
	const char *gateway;
	const char *dns;
	/* The size of /dev/shm in bytes (docker's --shm-size; 64 MiB unless given). */
	unsigned long long shm_bytes;
	/* --pids-limit: at most this many tasks in the command's cgroup; 0 for no limit. */
	unsigned long long pids_limit;
	int volume_count;
	struct vmf_volume volumes[VMF_MAX_VOLUMES];
	int tmpfs_count;
	struct vmf_tmpfs tmpfs[VMF_MAX_TMPFS];
	int file_count;
	struct vmf_file files[VMF_MAX_FILES];
	/* Host entropy for the guest's random generator (a VM restored from a template shares
	   the template's generator state until it is reseeded); seed_length 0: none sent. */
	unsigned char seed[VMF_MAX_SEED];
	size_t seed_length;
	/* The size in bytes of the run's disk, /dev/vda, which the kernel may not know yet in a
	   VM restored from a template; 0: not said. */
	unsigned long long disk_size;
	/* The host's CLOCK_REALTIME, from its clock frame (which answers the init's taken);
	   clock_set 0: none came. */
	struct timespec clock;
	int clock_set;
};

/*
 * Parses the run's settings. The run keeps pointers into text, which must
 * outlive it. Returns 0, or -1 with a message in err.
 */
int vmf_run_parse(struct vmf_run *run, char *text, char *err, size_t errlen);

/* Frees what parsing allocated (the text stays the caller's). */
void vmf_run_free(struct vmf_run *run);

/* Parses an exec's request (arg, env, user, workdir, stdin, tty, rows, cols and the others of a process); as vmf_run_parse. */
int vmf_exec_parse(struct vmf_process_spec *spec, char *text, char *err, size_t errlen);
void vmf_process_spec_free(struct vmf_process_spec *spec);

/* An rlimit's resource as the settings name it (NOFILE), or "?" for another number. */
const char *vmf_rlimit_name(int resource);

/* For tests on the build host: prints what the settings ask for. */
void vmf_run_explain(const struct vmf_run *run);
void vmf_exec_explain(const struct vmf_process_spec *spec);

#endif
