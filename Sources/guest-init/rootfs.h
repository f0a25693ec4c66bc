/*
 * The image's root in container mode: the disk mounted and switched into, what
 * a container has mounted besides (devpts, shm, mqueue, cgroup2), the host
 * files, the volumes and tmpfs mounts; and waiting for the devices they need.
 */
#ifndef VMFACTORY_ROOTFS_H
#define VMFACTORY_ROOTFS_H

#include <sys/types.h>
#include <time.h>

#include "conf.h"
#include "container.h"

/* How long devices and ports may take to appear after init starts. */
#define VMF_DEVICE_WAIT_MS 10000

long vmf_elapsed_ms(const struct timespec *since);
void vmf_pause_ms(long ms);
/* Waits until path exists, at most VMF_DEVICE_WAIT_MS. */
int vmf_wait_for(const char *path, struct vmf_error *e);
/* mkdir -p. */
int vmf_make_path(const char *path, mode_t mode);

int vmf_mount_root(const struct vmf_run *run, struct vmf_error *e);
/* Moves the image's root over the initramfs and enters it; *initramfs is the old root's descriptor. */
int vmf_switch_root(int *initramfs, struct vmf_error *e);
/* Deletes the initramfs's files (not what is mounted on it), freeing its memory. */
void vmf_free_initramfs(int initramfs);
int vmf_mount_container_filesystems(const struct vmf_run *run, struct vmf_error *e);
void vmf_write_host_files(const struct vmf_run *run);
int vmf_mount_volumes(const struct vmf_run *run, struct vmf_error *e);

#endif
