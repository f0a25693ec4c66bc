/*
 * Who a process runs as: USER[:GROUP] as container engines read it, looked up
 * in the image's /etc/passwd and /etc/group under a root folder's descriptor
 * (never outside it), so that the host's tests run it on a folder.
 */
#ifndef VMFACTORY_IDENTITY_H
#define VMFACTORY_IDENTITY_H

#include <stddef.h>
#include <sys/types.h>

#define VMF_MAX_GROUPS 64

struct vmf_identity {
	uid_t uid;
	gid_t gid;
	/* The primary group first, then the supplementary ones. */
	int group_count;
	gid_t groups[VMF_MAX_GROUPS];
	char home[512];
	char name[256];
};

/*
 * Resolves spec (empty for root) against the image whose root folder root_fd
 * is open on. Returns 0, or -1 with a message in err (docker's words).
 */
int vmf_resolve_user(int root_fd, const char *spec, struct vmf_identity *who, char *err, size_t errlen);

#endif
