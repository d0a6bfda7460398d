/* memberlist AES-GCM: byte vectors computed with an independent AES-GCM
 * (Python `cryptography`) over the layouts of spec §1.6, keyring behaviour,
 * base64 keys as `serf agent -encrypt` takes them, hostile envelopes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "gossip/gossip_crypto.h"

#include <errno.h>
#include <string.h>

static const uint8_t key16[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const uint8_t nonce[12] = {100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111};
/* A ping prefix as the plaintext. */
static const uint8_t plain[] = "\x00\x85\xa4" "Node" "\xa1" "b";
#define PLAIN_LEN (sizeof(plain) - 1)

static void unhex(const char *h, uint8_t *out, size_t *len)
{
    size_t n = strlen(h) / 2;

    assert_int_equal(df_unhex(h, out, n), 0);
    *len = n;
}

static void test_vectors(void **state)
{
    uint8_t want[128], got[128], key32[32];
    size_t wlen, glen, i;

    /* UDP, vsn 1, AES-128, no AAD. */
    unhex("016465666768696a6b6c6d6e6f1ae7eaebb466dd5bf975c0b36287a24cb4248098b8ce8ad974", want, &wlen);
    assert_int_equal(df__gossip_seal(key16, 16, 1, nonce, NULL, 0, plain, PLAIN_LEN, got, sizeof(got), &glen),
                     0);
    assert_int_equal(glen, wlen);
    assert_int_equal(glen, PLAIN_LEN + DF_GOSSIP_ENCRYPT_OVERHEAD);
    assert_memory_equal(got, want, wlen);

    /* vsn 0: PKCS#7 padded to 16 before sealing. */
    unhex("006465666768696a6b6c6d6e6f1ae7eaebb466dd5bf939501781cd2ceb69914c5466170786c3fa69f9c8c9493b", want,
          &wlen);
    assert_int_equal(df__gossip_seal(key16, 16, 0, nonce, NULL, 0, plain, PLAIN_LEN, got, sizeof(got), &glen),
                     0);
    assert_int_equal(glen, wlen);
    assert_memory_equal(got, want, wlen);

    /* Both decrypt through a keyring. */
    {
        df_gossip_keyring_t kr;
        uint8_t pt[128];
        size_t ptlen;

        df_gossip_keyring_init(&kr);
        assert_int_equal(df_gossip_keyring_add(&kr, key16, 16, true), 0);
        assert_int_equal(df_gossip_decrypt_packet(&kr, got, glen, pt, sizeof(pt), &ptlen), 0);
        assert_int_equal(ptlen, PLAIN_LEN);
        assert_memory_equal(pt, plain, PLAIN_LEN);
        df_gossip_keyring_clear(&kr);
    }

    /* TCP envelope, AES-256, AAD = 0a + length. */
    for (i = 0; i < 32; i++)
        key32[i] = (uint8_t)i;
    unhex("0a00000026016465666768696a6b6c6d6e6f489e7a28168d333f5cef99451e3ebd2b817773c505ec6204a1", want, &wlen);
    assert_int_equal(df__gossip_seal(key32, 32, 1, nonce, want, 5, plain, PLAIN_LEN, got, sizeof(got), &glen), 0);
    assert_int_equal(glen + 5, wlen);
    assert_memory_equal(got, want + 5, glen);
    {
        df_gossip_keyring_t kr;
        df_buf_t out;
        size_t need;

        df_gossip_keyring_init(&kr);
        assert_int_equal(df_gossip_keyring_add(&kr, key16, 16, true), 0); /* wrong key tried first */
        assert_int_equal(df_gossip_keyring_add(&kr, key32, 32, false), 0);
        df_buf_init(&out, 1 << 20);
        for (i = 0; i < wlen; i++) /* every prefix asks for more */
            assert_int_equal(df_gossip_decrypt_stream(&kr, want, i, &need, &out), DF_EAGAIN);
        assert_int_equal(df_gossip_decrypt_stream(&kr, want, wlen, &need, &out), 0);
        assert_int_equal(need, wlen);
        assert_int_equal(out.len, PLAIN_LEN);
        assert_memory_equal(out.data, plain, PLAIN_LEN);
        /* Tampering is detected. */
        want[10] ^= 1; /* a nonce bit */
        df_buf_reset(&out);
        assert_int_equal(df_gossip_decrypt_stream(&kr, want, wlen, &need, &out), -EBADMSG);
        assert_int_equal(out.len, 0);
        df_buf_free(&out);
    }
}

static void test_round_trip_and_keyring(void **state)
{
    df_gossip_keyring_t a, b;
    uint8_t k2[24], ct[256], pt[256];
    size_t ctlen, ptlen;
    df_buf_t s, o;
    size_t need;

    memset(k2, 7, sizeof(k2));
    df_gossip_keyring_init(&a);
    df_gossip_keyring_init(&b);
    assert_int_equal(df_gossip_encrypt_packet(&a, plain, PLAIN_LEN, ct, sizeof(ct), &ctlen), -ENOKEY);
    assert_int_equal(df_gossip_keyring_add(&a, key16, 16, true), 0);
    assert_int_equal(df_gossip_keyring_add(&a, k2, 24, true), 0); /* k2 primary now */
    assert_int_equal(a.n, 2);
    assert_int_equal(a.lens[0], 24);
    assert_int_equal(df_gossip_keyring_add(&a, k2, 15, false), -EINVAL);
    assert_int_equal(df_gossip_encrypt_packet(&a, plain, PLAIN_LEN, ct, sizeof(ct), &ctlen), 0);
    /* b only knows the old key: fails; with k2 added it works. */
    assert_int_equal(df_gossip_keyring_add(&b, key16, 16, true), 0);
    assert_int_equal(df_gossip_decrypt_packet(&b, ct, ctlen, pt, sizeof(pt), &ptlen), -EBADMSG);
    assert_int_equal(df_gossip_keyring_add(&b, k2, 24, false), 0);
    assert_int_equal(df_gossip_decrypt_packet(&b, ct, ctlen, pt, sizeof(pt), &ptlen), 0);
    assert_int_equal(ptlen, PLAIN_LEN);
    assert_memory_equal(pt, plain, PLAIN_LEN);
    assert_int_equal(df_gossip_encrypt_packet(&a, plain, PLAIN_LEN, ct, PLAIN_LEN + 28, &ctlen), DF_ETOOBIG);

    df_buf_init(&s, 1 << 20);
    df_buf_init(&o, 1 << 20);
    assert_int_equal(df_gossip_encrypt_stream(&a, plain, PLAIN_LEN, &s), 0);
    assert_int_equal(s.len, 5 + PLAIN_LEN + DF_GOSSIP_ENCRYPT_OVERHEAD);
    assert_int_equal(df_gossip_decrypt_stream(&b, (uint8_t *)s.data, s.len, &need, &o), 0);
    assert_memory_equal(o.data, plain, PLAIN_LEN);
    df_buf_free(&s);
    df_buf_free(&o);
    df_gossip_keyring_clear(&a);
    df_gossip_keyring_clear(&b);
}

static void test_hostile(void **state)
{
    df_gossip_keyring_t kr;
    uint8_t msg[64], pt[64];
    size_t ptlen, need;
    df_buf_t o;

    df_gossip_keyring_init(&kr);
    assert_int_equal(df_gossip_keyring_add(&kr, key16, 16, true), 0);
    memset(msg, 0, sizeof(msg));
    assert_int_equal(df_gossip_decrypt_packet(&kr, msg, 0, pt, sizeof(pt), &ptlen), DF_EPROTO);
    msg[0] = 1;
    assert_int_equal(df_gossip_decrypt_packet(&kr, msg, 28, pt, sizeof(pt), &ptlen), DF_EPROTO);
    assert_int_equal(df_gossip_decrypt_packet(&kr, msg, 29, pt, sizeof(pt), &ptlen), -EBADMSG);
    msg[0] = 0; /* vsn 0 needs a pad block */
    assert_int_equal(df_gossip_decrypt_packet(&kr, msg, 44, pt, sizeof(pt), &ptlen), DF_EPROTO);
    msg[0] = 2;
    assert_int_equal(df_gossip_decrypt_packet(&kr, msg, 60, pt, sizeof(pt), &ptlen), DF_EPROTO);
    /* vsn 0 with a bad pad byte that authenticates: pad 0. */
    {
        uint8_t p16[16] = {0}, ct[64];
        size_t ctlen;

        assert_int_equal(df__gossip_seal(key16, 16, 1, nonce, NULL, 0, p16, 16, ct, sizeof(ct), &ctlen), 0);
        ct[0] = 0; /* same GCM bytes, now read as vsn 0: last plaintext byte 0 */
        assert_int_equal(df_gossip_decrypt_packet(&kr, ct, ctlen, pt, sizeof(pt), &ptlen), DF_EPROTO);
    }
    df_buf_init(&o, 1 << 20);
    memcpy(msg, "\x0a\xff\xff\xff\xff", 5);
    assert_int_equal(df_gossip_decrypt_stream(&kr, msg, 5, &need, &o), DF_ETOOBIG);
    memcpy(msg, "\x0a\x00\x00\x00\x03", 5);
    assert_int_equal(df_gossip_decrypt_stream(&kr, msg, 8, &need, &o), DF_EPROTO);
    assert_int_equal(df_gossip_decrypt_stream(&kr, (const uint8_t *)"\x06", 1, &need, &o), DF_EPROTO);
    df_buf_free(&o);
}

static void test_base64(void **state)
{
    uint8_t k[32];
    size_t n;
    size_t i;

    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0ODw==", k, &n), 0);
    assert_int_equal(n, 16);
    assert_memory_equal(k, key16, 16);
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", k, &n), 0);
    assert_int_equal(n, 32);
    for (i = 0; i < 32; i++)
        assert_int_equal(k[i], i);
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoL\nDA0ODw==\r\n", k, &n), 0);
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0ODw", k, &n), -EINVAL);   /* no padding */
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0O", k, &n), -EINVAL);     /* 15 bytes */
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0ODw=A", k, &n), -EINVAL); /* data after = */
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcI!QoLDA0ODw==", k, &n), -EINVAL);
    assert_int_equal(df_gossip_key_parse_base64("", k, &n), -EINVAL);
    assert_int_equal(df_gossip_key_parse_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==", k, &n),
                     -EINVAL); /* 34 bytes */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_round_trip_and_keyring),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
