/*
 * The init's parsers run on the build host, for the host's tests: the frames a
 * host sends, decoded and acted on as the init would (without starting
 * anything), sample frames of every kind the init sends, and user lookups.
 */
#ifndef VMFACTORY_SELFTEST_H
#define VMFACTORY_SELFTEST_H

/* Frames on stdin, one line each on stdout; 0 when all were whole and well-formed. */
int vmf_decode_frames(void);
/* Frames of every kind the init sends, on stdout. */
int vmf_sample_frames(void);
/* `SPEC` looked up in the image rooted at the folder `root`, on stdout. */
int vmf_resolve_user_at(const char *root, const char *spec);

#endif
