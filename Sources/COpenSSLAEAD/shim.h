// ChaCha20-Poly1305 (RFC 8439) from the system's OpenSSL libcrypto, on caller
// memory: swift-crypto's API copies every message into and out of `Data`, and
// on the Noise transport those copies cost as much as the cipher itself.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>

// The cipher, fetched once. OpenSSL is told not to tear itself down at exit:
// event loop threads may still be sealing while the process exits.
static inline const EVP_CIPHER *p2p_chachapoly_cipher(void) {
    if (OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL) != 1) return NULL;
    return EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

// Sealing in parts, so a message gathered from several buffers is encrypted
// without first being copied into one: init (key, nonce, associated data),
// any number of updates (each writes exactly `length` bytes at `out`), then
// final (writes the 16-byte tag at `tag`). Each returns 1 on success, 0 on failure.
static inline int p2p_chachapoly_seal_init(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, const unsigned char *key,
                                           const unsigned char *nonce, const unsigned char *ad, size_t ad_length) {
    int written = 0;
    if (ad_length > 0x7fffffff) return 0;
    if (EVP_EncryptInit_ex(ctx, cipher, NULL, key, nonce) != 1) return 0;
    return ad_length == 0 || EVP_EncryptUpdate(ctx, NULL, &written, ad, (int)ad_length) == 1;
}

static inline int p2p_chachapoly_seal_update(EVP_CIPHER_CTX *ctx, const unsigned char *in, size_t length,
                                             unsigned char *out) {
    int written = 0;
    if (length > 0x7fffffff) return 0;
    if (length == 0) return 1;
    return EVP_EncryptUpdate(ctx, out, &written, in, (int)length) == 1 && (size_t)written == length;
}

static inline int p2p_chachapoly_seal_final(EVP_CIPHER_CTX *ctx, unsigned char *tag) {
    int written = 0;
    if (EVP_EncryptFinal_ex(ctx, tag, &written) != 1) return 0;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
}

// Checks the 16-byte tag after `length` ciphertext bytes at `in` and decrypts
// them into `out` (which may be `in`). Returns 1 if authentic, 0 otherwise;
// on 0 the contents of `out` are unspecified and must not be used.
static inline int p2p_chachapoly_open(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, const unsigned char *key, const unsigned char *nonce,
                                      const unsigned char *ad, size_t ad_length,
                                      const unsigned char *in, size_t length, unsigned char *out) {
    int written = 0;
    if (length > 0x7fffffff || ad_length > 0x7fffffff) return 0;
    if (EVP_DecryptInit_ex(ctx, cipher, NULL, key, nonce) != 1) return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(in + length)) != 1) return 0;
    if (ad_length > 0 && EVP_DecryptUpdate(ctx, NULL, &written, ad, (int)ad_length) != 1) return 0;
    if (length > 0 && EVP_DecryptUpdate(ctx, out, &written, in, (int)length) != 1) return 0;
    return EVP_DecryptFinal_ex(ctx, out + length, &written) == 1;
}
