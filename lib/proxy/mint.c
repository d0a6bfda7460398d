/*
 * Leaf certificates for intercepted CONNECTs, minted on the fly from a CA
 * the operator gives us (--hijack-ca-cert/--hijack-ca-key) and clients
 * trust: one per host, ECDSA P-256, subjectAltName = the host (DNS name or
 * IP address), valid 24 hours starting one hour in the past (clocks of
 * clients drift; Dragonfly's dfdaemon does the same).
 *
 * Minting costs a key generation and a signature (about a millisecond), so
 * leaves are cached: DF_PROXY_MINT_CACHE hosts, least recently used out
 * first, and a leaf is re-minted when less than an hour of it is left.
 * The cache holds one reference to each certificate and key; an SSL made
 * from them takes its own (SSL_use_certificate), so eviction never pulls a
 * certificate from under a live connection.  Single-threaded: the event
 * loop's.
 */
#include "proxy/proxy_internal.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEAF_BACKDATE (60L * 60L)
#define LEAF_LIFETIME (24L * 60L * 60L)
/* A cached leaf with less than this left is minted again. */
#define LEAF_MIN_LEFT (60L * 60L)

typedef struct {
    char host[256];
    X509 *cert;
    EVP_PKEY *key;
    time_t not_after;
    uint64_t used;              /* LRU clock value of the last use; 0 = free slot */
} leaf_t;

struct df__mint {
    SSL_CTX *ctx;
    X509 *ca;
    EVP_PKEY *ca_key;
    leaf_t leaves[DF_PROXY_MINT_CACHE];
    uint64_t clock;
};

static void leaf_clear(leaf_t *l)
{
    X509_free(l->cert);
    EVP_PKEY_free(l->key);
    memset(l, 0, sizeof(*l));
}

void df__mint_free(df__mint_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < DF_PROXY_MINT_CACHE; i++)
        leaf_clear(&m->leaves[i]);
    SSL_CTX_free(m->ctx);
    X509_free(m->ca);
    EVP_PKEY_free(m->ca_key);
    free(m);
}

static void set_err(char *err, size_t errcap, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char ossl[256] = "";

    if (e)
        ERR_error_string_n(e, ossl, sizeof(ossl));
    if (err && errcap)
        snprintf(err, errcap, "%s %.300s%s%s", what, file, ossl[0] ? ": " : "", ossl);
    ERR_clear_error();
}

int df__mint_new(const char *cert_file, const char *key_file, df__mint_t **out, char *err, size_t errcap)
{
    df__mint_t *m;
    FILE *f = NULL;
    int rc = DF_ECONFIG;

    m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    f = fopen(cert_file, "r");
    if (!f || !(m->ca = PEM_read_X509(f, NULL, NULL, NULL))) {
        set_err(err, errcap, "cannot read the CA certificate", cert_file);
        goto fail;
    }
    fclose(f);
    f = fopen(key_file, "r");
    if (!f || !(m->ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL))) {
        set_err(err, errcap, "cannot read the CA key", key_file);
        goto fail;
    }
    fclose(f);
    f = NULL;
    /* A leaf signed by a non-CA certificate would be refused by every
     * client; say so at start instead of at the first CONNECT. */
    if (X509_check_ca(m->ca) == 0) {
        set_err(err, errcap, "not a CA certificate:", cert_file);
        goto fail;
    }
    if (X509_check_private_key(m->ca, m->ca_key) != 1) {
        set_err(err, errcap, "the CA key does not match", cert_file);
        goto fail;
    }
    m->ctx = SSL_CTX_new(TLS_server_method());
    if (!m->ctx || SSL_CTX_set_min_proto_version(m->ctx, TLS1_2_VERSION) != 1) {
        rc = -ENOMEM;
        goto fail;
    }
    /* No ALPN callback: the client's h2 offer is ignored and it speaks
     * HTTP/1.1, which is what the decrypting side serves. */
    SSL_CTX_set_mode(m->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    *out = m;
    return 0;
fail:
    if (f)
        fclose(f);
    df__mint_free(m);
    return rc;
}

static int add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    int ok;

    if (!ext)
        return -EINVAL;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -ENOMEM;
}

/* A new leaf for host (validated by df_proxy_parse_connect: no ',' or other
 * byte that could change the meaning of the extension strings). */
static int mint(df__mint_t *m, const char *host, leaf_t *l)
{
    unsigned char a6[16];
    char san[300];
    X509V3_CTX v3ctx;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    BIGNUM *serial = NULL;
    time_t now = time(NULL);
    int rc = -ENOMEM;

    key = EVP_EC_gen("P-256");
    cert = X509_new();
    serial = BN_new();
    if (!key || !cert || !serial)
        goto out;
    /* 127 random bits: positive, unique enough that no two leaves of one
     * CA share a serial (RFC 5280 4.1.2.2). */
    if (!BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)))
        goto out;
    if (!X509_set_version(cert, 2) || !X509_time_adj_ex(X509_getm_notBefore(cert), 0, -LEAF_BACKDATE, &now) ||
        !X509_time_adj_ex(X509_getm_notAfter(cert), 0, LEAF_LIFETIME - LEAF_BACKDATE, &now) ||
        !X509_set_pubkey(cert, key) || !X509_set_issuer_name(cert, X509_get_subject_name(m->ca)))
        goto out;
    /* CN for old clients; X.509 caps it at 64 bytes, the SAN is what counts. */
    if (strlen(host) <= 64 &&
        !X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, (const unsigned char *)host,
                                    -1, -1, 0))
        goto out;
    if (inet_pton(AF_INET, host, a6) == 1 || inet_pton(AF_INET6, host, a6) == 1)
        snprintf(san, sizeof(san), "IP:%s", host);
    else
        snprintf(san, sizeof(san), "DNS:%s", host);
    X509V3_set_ctx(&v3ctx, m->ca, cert, NULL, NULL, 0);
    rc = add_ext(cert, &v3ctx, NID_subject_alt_name, san);
    if (rc == 0)
        rc = add_ext(cert, &v3ctx, NID_basic_constraints, "critical,CA:FALSE");
    if (rc == 0)
        rc = add_ext(cert, &v3ctx, NID_key_usage, "critical,digitalSignature");
    if (rc == 0)
        rc = add_ext(cert, &v3ctx, NID_ext_key_usage, "serverAuth");
    if (rc < 0)
        goto out;
    /* Authority key id when the CA has a subject key id (optional). */
    (void)add_ext(cert, &v3ctx, NID_authority_key_identifier, "keyid");
    ERR_clear_error();
    if (!X509_sign(cert, m->ca_key, EVP_sha256())) {
        rc = -EINVAL;
        goto out;
    }
    df_strlcpy(l->host, host, sizeof(l->host));
    l->cert = cert;
    l->key = key;
    l->not_after = now + LEAF_LIFETIME - LEAF_BACKDATE;
    cert = NULL;
    key = NULL;
    rc = 0;
out:
    if (rc < 0)
        ERR_clear_error();
    BN_free(serial);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

static leaf_t *leaf_for(df__mint_t *m, const char *host)
{
    leaf_t *victim = &m->leaves[0];
    time_t now = time(NULL);

    for (size_t i = 0; i < DF_PROXY_MINT_CACHE; i++) {
        leaf_t *l = &m->leaves[i];
        if (l->used && strcmp(l->host, host) == 0) {
            if (l->not_after - now >= LEAF_MIN_LEFT) {
                l->used = ++m->clock;
                return l;
            }
            victim = l; /* expiring: replace in place */
            goto fresh;
        }
        if (l->used < victim->used)
            victim = l; /* a free slot (0) or the least recently used */
    }
fresh:
    leaf_clear(victim);
    if (mint(m, host, victim) < 0)
        return NULL;
    victim->used = ++m->clock;
    return victim;
}

SSL *df__mint_ssl(df__mint_t *m, const char *host)
{
    leaf_t *l = leaf_for(m, host);
    SSL *ssl;

    if (!l)
        return NULL;
    ssl = SSL_new(m->ctx);
    if (!ssl)
        return NULL;
    if (SSL_use_certificate(ssl, l->cert) != 1 || SSL_use_PrivateKey(ssl, l->key) != 1 ||
        SSL_add1_chain_cert(ssl, m->ca) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

size_t df__mint_cached(const df__mint_t *m)
{
    size_t n = 0;

    for (size_t i = 0; i < DF_PROXY_MINT_CACHE; i++)
        n += m->leaves[i].used != 0;
    return n;
}
