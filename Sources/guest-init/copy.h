/*
 * vmfactory cp, inside the guest: a tar stream of a path out (to stdout), and a
 * tar stream in (from stdin) extracted below a folder, written by the init
 * itself so that an image needs no tar. Runs in a child of the init, as root in
 * the container's root; what it cannot do it says on stderr, and it exits 1.
 */
#ifndef VMFACTORY_COPY_H
#define VMFACTORY_COPY_H

/* Writes PATH (the entry itself, not what a symlink names) and everything below it as a
   tar stream on fd, its top entry named after PATH's last component. Returns 0 or 1. */
int vmf_copy_out(const char *path, int fd);

/*
 * Extracts the tar stream on fd. When PATH is a folder, below it as the stream
 * names its entries; otherwise (with top, the stream's top entry's name) as
 * PATH itself: the top entry becomes PATH, made in PATH's folder. No entry is
 * written outside that folder: no absolute names, no "..", nothing through a
 * link that leaves it. Returns 0 or 1.
 */
int vmf_copy_in(const char *path, const char *top, int fd);

#endif
