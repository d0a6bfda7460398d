/*
 * A file that becomes a download's output only once it is complete and
 * verified, written in the output's own directory (so publishing it is a
 * link or a rename on one filesystem, never a copy).
 *
 * Preferred: an unnamed file (open(2) with O_TMPFILE).  It has no name until
 * df_outfile_publish() links it, so a process killed at any point before
 * leaves nothing next to the output: the kernel frees the file with its last
 * descriptor.  Publishing links it to the output with linkat(2) when the
 * output does not exist (atomic, never replaces anything); when it does, to
 * a hidden name first and then rename(2) over the output, so the output is
 * replaced atomically as well.
 *
 * Fallback, where the filesystem has no O_TMPFILE (EOPNOTSUPP: NFS, some
 * FUSE filesystems, old kernels) or /proc is not mounted (the link needs
 * /proc/self/fd): a hidden named file `.NAME.dfly-XXXXXX`, renamed at
 * publish.  That one is left behind by a SIGKILL.
 *
 * Nothing unverified ever appears at the output path either way.
 */
#ifndef DF_CORE_OUTFILE_H
#define DF_CORE_OUTFILE_H
#ifndef DF_INTERNAL
#error "lib/core/outfile.h is private to libdfly"
#endif

#include <stdbool.h>

typedef struct {
    int fd;       /* O_RDWR, mode 0600; -1 when closed */
    char *dir;    /* the output's directory */
    char *path;   /* the fallback's name; NULL for an unnamed file or once published */
} df_outfile_t;

/* Creates the file for `output` (which must name a file, not end in '/',
 * '.' or '..'): unnamed where possible, else the named fallback.  0 or
 * -errno; on success *of must be released with df_outfile_close(). */
int df_outfile_open(df_outfile_t *of, const char *output);
/* The named fallback only (what df_outfile_open does without O_TMPFILE). */
int df_outfile_open_named(df_outfile_t *of, const char *output);

/* Makes the complete file the output: mode 0644, fsync of the file (and of
 * the directory after) when durable, then linkat/rename.  The descriptor
 * stays open (of->fd still reads the output's bytes).  0 or -errno (the
 * output is then untouched and the file still ours). */
int df_outfile_publish(df_outfile_t *of, const char *output, bool durable);

/* Closes the descriptor and, unless published, removes the fallback's name.
 * Safe on a zeroed or already closed *of (fd must be -1 or open). */
void df_outfile_close(df_outfile_t *of);

#endif
