// A small interface to libext2fs for writing a root file system without a staging tree and
// without root rights: inodes get the owners, modes and devices they are given, whoever runs
// this. Every function returns 0 or a libext2fs error code (vmf_ext4_message describes it).
#ifndef VMFACTORY_EXT4_H
#define VMFACTORY_EXT4_H

#include <stddef.h>
#include <stdint.h>

typedef struct vmf_ext4 vmf_ext4;
typedef struct vmf_ext4_file vmf_ext4_file;

/// The inode of the root directory.
#define VMF_EXT4_ROOT 2u

typedef struct {
    /// File type and permission bits, as in st_mode.
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    /// Seconds since 1970: the inode's modification, access and change time.
    int64_t mtime;
} vmf_ext4_attributes;

/// Opens a file system that mke2fs made; `now` stands for the current time in everything
/// libext2fs stamps (new inodes' creation time, the superblock's write time).
long vmf_ext4_open(const char *path, int64_t now, vmf_ext4 **fs);
/// Writes the bitmaps and the superblock and closes.
long vmf_ext4_close(vmf_ext4 *fs);
/// Closes without writing (after a failure).
void vmf_ext4_abandon(vmf_ext4 *fs);

/// A regular file's inode, not yet in any directory.
long vmf_ext4_file_create(vmf_ext4 *fs, const vmf_ext4_attributes *attributes, uint32_t *ino);
long vmf_ext4_file_open(vmf_ext4 *fs, uint32_t ino, vmf_ext4_file **file);
long vmf_ext4_file_write(vmf_ext4_file *file, const void *buffer, size_t length);
long vmf_ext4_file_close(vmf_ext4_file *file);

/// Frees the inode and its blocks (a file that a later layer replaced or removed).
long vmf_ext4_release(vmf_ext4 *fs, uint32_t ino);

/// A new directory `name` in `parent`.
long vmf_ext4_mkdir(vmf_ext4 *fs, uint32_t parent, const char *name, uint32_t *ino);
/// A further name for `ino` in `parent`.
long vmf_ext4_link(vmf_ext4 *fs, uint32_t parent, const char *name, uint32_t ino, uint32_t mode);
long vmf_ext4_symlink(vmf_ext4 *fs, uint32_t parent, const char *name, const char *target, uint32_t *ino);
/// A character or block device, FIFO or socket inode, not yet in any directory.
long vmf_ext4_special(vmf_ext4 *fs, const vmf_ext4_attributes *attributes, uint32_t major, uint32_t minor, uint32_t *ino);

/// Sets permission bits (the file type stays), owner and times; and the link count when
/// `links` is not 0.
long vmf_ext4_set_attributes(vmf_ext4 *fs, uint32_t ino, const vmf_ext4_attributes *attributes, uint32_t links);
/// Sets one extended attribute ("security.capability", "user.x").
long vmf_ext4_set_xattr(vmf_ext4 *fs, uint32_t ino, const char *name, const void *value, size_t length);

/// The inode `name` names in `parent`; EXT2_ET_FILE_NOT_FOUND's code when none.
long vmf_ext4_lookup(vmf_ext4 *fs, uint32_t parent, const char *name, uint32_t *ino);

/// Removes the empty lost+found that mke2fs made (for an image whose own lost+found is not a
/// directory).
long vmf_ext4_remove_lost_found(vmf_ext4 *fs);

/// Blocks and inodes still free.
void vmf_ext4_free(vmf_ext4 *fs, uint64_t *blocks, uint64_t *inodes, uint32_t *block_size);

const char *vmf_ext4_message(long code);
/// libext2fs's version, "1.47.0".
const char *vmf_ext4_library_version(void);
/// Whether `code` says the file system has no block or inode left.
int vmf_ext4_is_full(long code);

#endif
