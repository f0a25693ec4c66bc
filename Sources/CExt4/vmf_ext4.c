#include "vmf_ext4.h"

#include <ext2fs/ext2fs.h>
#include <string.h>

struct vmf_ext4 {
    ext2_filsys fs;
};

struct vmf_ext4_file {
    ext2_file_t file;
};

const char *vmf_ext4_message(long code) {
    return error_message((errcode_t)code);
}

const char *vmf_ext4_library_version(void) {
    const char *version = NULL;
    ext2fs_get_library_version(&version, NULL);
    return version ? version : "unknown";
}

int vmf_ext4_is_full(long code) {
    return code == EXT2_ET_BLOCK_ALLOC_FAIL || code == EXT2_ET_INODE_ALLOC_FAIL || code == EXT2_ET_RES_GDT_BLOCKS;
}

long vmf_ext4_open(const char *path, int64_t now, vmf_ext4 **out) {
    ext2_filsys fs = NULL;
    errcode_t err = ext2fs_open2(path, NULL, EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
    if (err) return err;
    err = ext2fs_read_bitmaps(fs);
    if (err) {
        ext2fs_close_free(&fs);
        return err;
    }
    fs->now = (time_t)now;
    fs->umask = 0;
    vmf_ext4 *handle = calloc(1, sizeof(*handle));
    if (!handle) {
        ext2fs_close_free(&fs);
        return EXT2_ET_NO_MEMORY;
    }
    handle->fs = fs;
    *out = handle;
    return 0;
}

long vmf_ext4_close(vmf_ext4 *handle) {
    errcode_t err = ext2fs_close_free(&handle->fs);
    free(handle);
    return err;
}

void vmf_ext4_abandon(vmf_ext4 *handle) {
    handle->fs->flags &= ~EXT2_FLAG_DIRTY;
    ext2fs_free(handle->fs);
    free(handle);
}

static void set_owner_and_times(struct ext2_inode *inode, const vmf_ext4_attributes *a) {
    inode->i_uid = (__u16)(a->uid & 0xffff);
    ext2fs_set_i_uid_high(*inode, a->uid >> 16);
    inode->i_gid = (__u16)(a->gid & 0xffff);
    ext2fs_set_i_gid_high(*inode, a->gid >> 16);
    inode->i_atime = inode->i_mtime = inode->i_ctime = (__u32)a->mtime;
}

/// A fresh inode of `mode`'s type, counted as used, written with `a`'s owner and times.
static errcode_t new_inode(ext2_filsys fs, const vmf_ext4_attributes *a, uint32_t mode, struct ext2_inode *inode, ext2_ino_t *ino) {
    errcode_t err = ext2fs_new_inode(fs, EXT2_ROOT_INO, (int)mode, 0, ino);
    if (err) return err;
    ext2fs_inode_alloc_stats2(fs, *ino, +1, 0);
    memset(inode, 0, sizeof(*inode));
    inode->i_mode = (__u16)mode;
    set_owner_and_times(inode, a);
    inode->i_links_count = 1;
    return 0;
}

long vmf_ext4_file_create(vmf_ext4 *handle, const vmf_ext4_attributes *a, uint32_t *out) {
    ext2_filsys fs = handle->fs;
    struct ext2_inode inode;
    ext2_ino_t ino;
    errcode_t err = new_inode(fs, a, LINUX_S_IFREG | (a->mode & 07777), &inode, &ino);
    if (err) return err;
    if (ext2fs_has_feature_extents(fs->super)) {
        // An empty extent tree in i_block, so that writes map blocks by extent.
        ext2_extent_handle_t extents;
        inode.i_flags |= EXT4_EXTENTS_FL;
        err = ext2fs_extent_open2(fs, ino, &inode, &extents);
        if (err) return err;
        ext2fs_extent_free(extents);
    }
    err = ext2fs_write_new_inode(fs, ino, &inode);
    if (err) return err;
    *out = ino;
    return 0;
}

long vmf_ext4_file_open(vmf_ext4 *handle, uint32_t ino, vmf_ext4_file **out) {
    vmf_ext4_file *file = calloc(1, sizeof(*file));
    if (!file) return EXT2_ET_NO_MEMORY;
    errcode_t err = ext2fs_file_open(handle->fs, ino, EXT2_FILE_WRITE, &file->file);
    if (err) {
        free(file);
        return err;
    }
    *out = file;
    return 0;
}

long vmf_ext4_file_write(vmf_ext4_file *file, const void *buffer, size_t length) {
    const char *bytes = buffer;
    while (length > 0) {
        unsigned int chunk = length > (1u << 30) ? (1u << 30) : (unsigned int)length;
        unsigned int written = 0;
        errcode_t err = ext2fs_file_write(file->file, bytes, chunk, &written);
        if (err) return err;
        if (written == 0) return EXT2_ET_SHORT_WRITE;
        bytes += written;
        length -= written;
    }
    return 0;
}

long vmf_ext4_file_close(vmf_ext4_file *file) {
    errcode_t err = ext2fs_file_close(file->file);
    free(file);
    return err;
}

long vmf_ext4_release(vmf_ext4 *handle, uint32_t ino) {
    ext2_filsys fs = handle->fs;
    struct ext2_inode inode;
    errcode_t err = ext2fs_read_inode(fs, ino, &inode);
    if (err) return err;
    if (ext2fs_inode_has_valid_blocks2(fs, &inode)) {
        err = ext2fs_punch(fs, ino, &inode, NULL, 0, ~0ULL);
        if (err) return err;
    }
    ext2fs_inode_alloc_stats2(fs, ino, -1, LINUX_S_ISDIR(inode.i_mode));
    memset(&inode, 0, sizeof(inode));
    inode.i_dtime = (__u32)fs->now;
    return ext2fs_write_inode(fs, ino, &inode);
}

/// Runs `link` and, when the directory has no room left, adds a block to it and runs it again.
static errcode_t with_room(ext2_filsys fs, ext2_ino_t dir, errcode_t (*link)(ext2_filsys, ext2_ino_t, void *), void *context) {
    errcode_t err = link(fs, dir, context);
    if (err == EXT2_ET_DIR_NO_SPACE) {
        err = ext2fs_expand_dir(fs, dir);
        if (err) return err;
        err = link(fs, dir, context);
    }
    return err;
}

struct link_context {
    const char *name;
    ext2_ino_t ino;
    int type;
    const char *target;
};

static errcode_t do_mkdir(ext2_filsys fs, ext2_ino_t dir, void *c) {
    struct link_context *context = c;
    return ext2fs_mkdir(fs, dir, context->ino, context->name);
}

static errcode_t do_link(ext2_filsys fs, ext2_ino_t dir, void *c) {
    struct link_context *context = c;
    return ext2fs_link(fs, dir, context->name, context->ino, context->type);
}

static errcode_t do_symlink(ext2_filsys fs, ext2_ino_t dir, void *c) {
    struct link_context *context = c;
    return ext2fs_symlink(fs, dir, context->ino, context->name, context->target);
}

long vmf_ext4_mkdir(vmf_ext4 *handle, uint32_t parent, const char *name, uint32_t *out) {
    ext2_ino_t ino;
    errcode_t err = ext2fs_new_inode(handle->fs, parent, LINUX_S_IFDIR | 0755, 0, &ino);
    if (err) return err;
    struct link_context context = {name, ino, 0, NULL};
    err = with_room(handle->fs, parent, do_mkdir, &context);
    if (err) return err;
    *out = ino;
    return 0;
}

static int file_type(uint32_t mode) {
    switch (mode & LINUX_S_IFMT) {
    case LINUX_S_IFREG: return EXT2_FT_REG_FILE;
    case LINUX_S_IFDIR: return EXT2_FT_DIR;
    case LINUX_S_IFLNK: return EXT2_FT_SYMLINK;
    case LINUX_S_IFCHR: return EXT2_FT_CHRDEV;
    case LINUX_S_IFBLK: return EXT2_FT_BLKDEV;
    case LINUX_S_IFIFO: return EXT2_FT_FIFO;
    case LINUX_S_IFSOCK: return EXT2_FT_SOCK;
    default: return EXT2_FT_UNKNOWN;
    }
}

long vmf_ext4_link(vmf_ext4 *handle, uint32_t parent, const char *name, uint32_t ino, uint32_t mode) {
    struct link_context context = {name, ino, file_type(mode), NULL};
    return with_room(handle->fs, parent, do_link, &context);
}

long vmf_ext4_symlink(vmf_ext4 *handle, uint32_t parent, const char *name, const char *target, uint32_t *out) {
    ext2_ino_t ino;
    errcode_t err = ext2fs_new_inode(handle->fs, parent, LINUX_S_IFLNK | 0777, 0, &ino);
    if (err) return err;
    struct link_context context = {name, ino, 0, target};
    err = with_room(handle->fs, parent, do_symlink, &context);
    if (err) return err;
    *out = ino;
    return 0;
}

long vmf_ext4_special(vmf_ext4 *handle, const vmf_ext4_attributes *a, uint32_t major, uint32_t minor, uint32_t *out) {
    ext2_filsys fs = handle->fs;
    struct ext2_inode inode;
    ext2_ino_t ino;
    errcode_t err = new_inode(fs, a, a->mode, &inode, &ino);
    if (err) return err;
    if (LINUX_S_ISCHR(a->mode) || LINUX_S_ISBLK(a->mode)) {
        // The kernel's old encoding when it fits, else the new one (see
        // ext4_encode_dev and new_encode_dev in the kernel).
        if (major < 256 && minor < 256) {
            inode.i_block[0] = major * 256 + minor;
        } else {
            inode.i_block[1] = (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
        }
    }
    err = ext2fs_write_new_inode(fs, ino, &inode);
    if (err) return err;
    *out = ino;
    return 0;
}

long vmf_ext4_set_attributes(vmf_ext4 *handle, uint32_t ino, const vmf_ext4_attributes *a, uint32_t links) {
    struct ext2_inode inode;
    errcode_t err = ext2fs_read_inode(handle->fs, ino, &inode);
    if (err) return err;
    inode.i_mode = (__u16)((inode.i_mode & LINUX_S_IFMT) | (a->mode & 07777));
    set_owner_and_times(&inode, a);
    if (links) inode.i_links_count = (__u16)links;
    return ext2fs_write_inode(handle->fs, ino, &inode);
}

long vmf_ext4_set_xattr(vmf_ext4 *handle, uint32_t ino, const char *name, const void *value, size_t length) {
    struct ext2_xattr_handle *xattrs;
    errcode_t err = ext2fs_xattrs_open(handle->fs, ino, &xattrs);
    if (err) return err;
    err = ext2fs_xattrs_read(xattrs);
    if (!err) err = ext2fs_xattr_set(xattrs, name, value, length);
    errcode_t closed = ext2fs_xattrs_close(&xattrs);
    return err ? err : closed;
}

void vmf_ext4_free(vmf_ext4 *handle, uint64_t *blocks, uint64_t *inodes, uint32_t *block_size) {
    *blocks = ext2fs_free_blocks_count(handle->fs->super);
    *inodes = handle->fs->super->s_free_inodes_count;
    *block_size = handle->fs->blocksize;
}

long vmf_ext4_lookup(vmf_ext4 *handle, uint32_t parent, const char *name, uint32_t *out) {
    ext2_ino_t ino = 0;
    errcode_t err = ext2fs_lookup(handle->fs, parent, name, (int)strlen(name), NULL, &ino);
    if (err) return err;
    *out = ino;
    return 0;
}

long vmf_ext4_remove_lost_found(vmf_ext4 *handle) {
    ext2_filsys fs = handle->fs;
    ext2_ino_t ino = 0;
    errcode_t err = ext2fs_lookup(fs, EXT2_ROOT_INO, "lost+found", 10, NULL, &ino);
    if (err) return err == EXT2_ET_FILE_NOT_FOUND ? 0 : err;
    err = ext2fs_unlink(fs, EXT2_ROOT_INO, "lost+found", ino, 0);
    if (err) return err;
    err = vmf_ext4_release(handle, ino);
    if (err) return err;
    // Its ".." no longer counts as a link of the root.
    struct ext2_inode root;
    err = ext2fs_read_inode(fs, EXT2_ROOT_INO, &root);
    if (err) return err;
    if (root.i_links_count > 2) root.i_links_count--;
    return ext2fs_write_inode(fs, EXT2_ROOT_INO, &root);
}
