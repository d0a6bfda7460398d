/*
 * YAML configuration files flattened to key/value strings, so each program
 * maps keys to its config struct with one table and one error path.
 *
 *   base:                        base.listen=0.0.0.0:8002
 *     listen: 0.0.0.0:8002   ->  nodes=a:8002
 *   nodes: [a:8002, b:8002]      nodes=b:8002
 *
 * Nested mapping keys are joined with '.'; each item of a sequence repeats
 * the sequence's key (nested sequences flatten the same way; a mapping
 * inside a sequence extends the sequence's key: `n: [{a: 1}]` -> n.a=1).
 * Scalars are kept as written (no type resolution: "~", "yes", "010" stay
 * text); an empty value is "".  Entries keep the file's order; a repeated
 * key appears twice and the caller decides (usually: the last wins).
 *
 * The document must be a mapping (or empty).  Refused: aliases (no
 * billion-laughs expansion), complex keys, multiple documents, NUL bytes in
 * scalars.  Hard caps: DF_CONFIG_FILE_MAX input bytes, DF_CONFIG_DEPTH_MAX
 * nesting levels, DF_CONFIG_ENTRIES_MAX entries, DF_CONFIG_KEY_MAX bytes per
 * joined key.
 */
#ifndef DF_CORE_CONFIG_YAML_H
#define DF_CORE_CONFIG_YAML_H
#ifndef DF_INTERNAL
#error "lib/core/config_yaml.h is private to libdfly"
#endif

#include <stddef.h>

#define DF_CONFIG_FILE_MAX (1024u * 1024u)
#define DF_CONFIG_DEPTH_MAX 8
#define DF_CONFIG_ENTRIES_MAX 1024
#define DF_CONFIG_KEY_MAX 256 /* joined key, bytes including the NUL */

typedef struct {
    char *key;    /* "base.listen"; owned by the list */
    char *value;  /* owned by the list */
    int line;     /* 1-based line of the value, for error messages */
} df_config_entry_t;

typedef struct {
    df_config_entry_t *entries;
    size_t n;
} df_config_list_t;

/* Parses YAML text data[0..len) (need not be NUL-terminated) into *out,
 * which the caller releases with df_config_list_free() (also on error; it is
 * left empty then).  0, or DF_ECONFIG / DF_ETOOBIG (a cap) / -ENOMEM with a
 * message "line N: ..." in err (errcap bytes; err may be NULL). */
int df_config_yaml_parse(const char *data, size_t len, df_config_list_t *out, char *err,
                         size_t errcap);

/* Reads path (at most DF_CONFIG_FILE_MAX bytes) and parses it as above.
 * -errno when the file cannot be read; the message then names the path. */
int df_config_yaml_load(const char *path, df_config_list_t *out, char *err, size_t errcap);

void df_config_list_free(df_config_list_t *list);

/* The last value of key, or NULL.  Borrowed from list. */
const char *df_config_get(const df_config_list_t *list, const char *key);

#endif
