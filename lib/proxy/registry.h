/*
 * What the Docker Registry HTTP API v2 looks like to dfly, as pure
 * functions: manifest URLs, blob URLs and the P2P task a blob is fetched
 * as, image manifests and indexes (Docker schema 2, Docker manifest list,
 * OCI manifest, OCI index, Docker schema 1) reduced to descriptor lists,
 * platform matching, and the Bearer challenge of WWW-Authenticate.
 *
 * Both sides of a preheated pull use this module: the mirror (lib/proxy)
 * describes every blob download with df_registry_blob_task(), and the
 * supernode's preheat (lib/supernode/preheat.c) seeds each layer with the
 * same function, so the task a preheat completed is the very task a later
 * pull through any dfdaemon registers.  No I/O; fuzzed by
 * tests/fuzz/fuzz_registry_manifest.c and fuzz_registry_challenge.c.
 */
#ifndef DF_PROXY_REGISTRY_H
#define DF_PROXY_REGISTRY_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <dfly/dfly.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_REGISTRY_MANIFEST_MAX (4u * 1024u * 1024u) /* bytes of one manifest or index */
#define DF_REGISTRY_DESCS_MAX 1024u                   /* layers of a manifest, entries of an index */
#define DF_REGISTRY_URL_MAX 8192u

/* The Accept header a manifest GET sends: every manifest type parsed here. */
#define DF_REGISTRY_ACCEPT                                                                         \
    "Accept: application/vnd.oci.image.index.v1+json, "                                            \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                  \
    "application/vnd.oci.image.manifest.v1+json, "                                                 \
    "application/vnd.docker.distribution.manifest.v2+json, "                                       \
    "application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5"

/* "<scheme>://<authority>/v2/<name>/manifests/<reference>" split up.  The
 * repository url is "<scheme>://<authority>/v2/<name>" (blob and manifest
 * URLs are built from it); name is the repository name. */
typedef struct {
    char repo_url[DF_REGISTRY_URL_MAX];
    char name[512];
    char reference[160];         /* a tag or "sha256:<hex>" */
    bool by_digest;
} df_registry_ref_t;

/* Parses a manifest URL: http or https, no query or fragment, a name of
 * lower-case components [a-z0-9._-] separated by '/', a reference that is a
 * tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) or "sha256:<64 lower-case hex>".
 * 0 or -EINVAL. */
int df_registry_parse_manifest_url(const char *url, df_registry_ref_t *out);

/* "<repo_url>/blobs/<digest>" or "<repo_url>/manifests/<reference>" into
 * out (cap bytes).  0 or -ENAMETOOLONG. */
int df_registry_blob_url(const char *repo_url, const char *digest, char *out, size_t cap);
int df_registry_manifest_url(const char *repo_url, const char *reference, char *out, size_t cap);

/* The P2P task of a registry blob: fills r's url, digest, identifier and
 * filter (the fields that make the task id on the supernode) for the blob
 * at `url` ("<registry>/v2/<name>/blobs/<digest>", as the registry names
 * it) with digest "sha256:<hex>".  The task is keyed by url and digest;
 * nothing else enters its identity (credentials do not: every client's
 * access is checked by the registry instead).  Strings are borrowed. */
void df_registry_blob_task(df_download_req_t *r, const char *url, const char *digest);

/* ---- manifests */

typedef enum {
    DF_REGISTRY_IMAGE = 0,       /* a manifest of one image: config + layers */
    DF_REGISTRY_INDEX,           /* a manifest list / OCI index: manifests */
} df_registry_kind_t;

typedef struct {
    char digest[72];             /* "sha256:<64 hex>" */
    char media_type[128];        /* "" when absent */
    uint64_t size;               /* 0 when absent (schema 1) */
    /* index entries only: the platform ("" when absent) */
    char os[32], arch[32], variant[32];
} df_registry_desc_t;

typedef struct {
    df_registry_kind_t kind;
    df_registry_desc_t *descs;   /* image: config first (when any), then the layers; index: manifests */
    size_t ndescs;
} df_registry_manifest_t;

/* Parses a manifest body (len bytes, at most DF_REGISTRY_MANIFEST_MAX).
 * The kind comes from the body's mediaType, else from content_type (the
 * response's Content-Type, may be NULL), else from its shape (manifests[]
 * = index; config/layers = image; schemaVersion 1 with fsLayers = image,
 * layers deduplicated).  Every digest must be sha256 with 64 lower-case hex
 * digits (the only blobs the mirror's P2P rule takes); at most
 * DF_REGISTRY_DESCS_MAX descriptors.  0, or DF_EPROTO with a reason in err
 * (out cleared), or -ENOMEM.  Free with df_registry_manifest_clear(). */
int df_registry_manifest_parse(const char *body, size_t len, const char *content_type,
                               df_registry_manifest_t *out, char *err, size_t errcap);
void df_registry_manifest_clear(df_registry_manifest_t *m);

/* Parses a platform filter "os/arch" or "os/arch/variant" (each part
 * [a-z0-9_.-], 1..31 chars).  0 or -EINVAL. */
int df_registry_platform_parse(const char *s, char os[32], char arch[32], char variant[32]);

/* Whether index entry d is for that platform: os and arch equal, and the
 * variant equal when the filter has one. */
bool df_registry_platform_match(const df_registry_desc_t *d, const char *os, const char *arch,
                                const char *variant);

/* ---- auth */

/* Parses a WWW-Authenticate value.  When it is a Bearer challenge with a
 * realm (http or https URL), writes realm, service and scope (each "" when
 * absent) and returns 0; -ENOENT for another scheme, -EINVAL when
 * malformed or a value does not fit (caps: realm 2048, service and scope
 * 512 bytes).  Values may be quoted strings (with \-escapes) or tokens. */
int df_registry_parse_bearer(const char *value, char *realm, size_t realm_cap, char *service,
                             size_t service_cap, char *scope, size_t scope_cap);

/* The token of a token server's JSON answer ("token", else
 * "access_token"), malloc'ed, or NULL when malformed/absent.  Tokens with
 * bytes outside printable ASCII are refused (they go into a header). */
char *df_registry_parse_token(const char *body, size_t len);

#endif
