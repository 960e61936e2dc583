#include "CLibcryptoAEAD.h"

#if defined(__linux__)
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>

// The few libcrypto entry points we call, declared here instead of taken from
// OpenSSL's headers (their ABI is stable across 1.1 and 3).
typedef void EVP_CIPHER;
typedef void EVP_CIPHER_CTX;
typedef void ENGINE;

static struct {
    int (*init_crypto)(uint64_t options, const void *settings);
    const EVP_CIPHER *(*fetch)(void *libctx, const char *algorithm, const char *properties);
    const EVP_CIPHER *(*legacy_cipher)(void);
    EVP_CIPHER_CTX *(*ctx_new)(void);
    void (*ctx_free)(EVP_CIPHER_CTX *);
    int (*ctx_ctrl)(EVP_CIPHER_CTX *, int type, int arg, void *ptr);
    int (*encrypt_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *, const unsigned char *);
    int (*encrypt_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*encrypt_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
    int (*decrypt_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *, const unsigned char *);
    int (*decrypt_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*decrypt_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
    const EVP_CIPHER *cipher;
} crypto;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int loaded = 0;

// OPENSSL_INIT_NO_ATEXIT: event loop threads may still be sealing while the
// process exits, so libcrypto must not tear itself down then.
#define P2P_OPENSSL_INIT_NO_ATEXIT 0x00080000L
#define P2P_EVP_CTRL_AEAD_GET_TAG 0x10
#define P2P_EVP_CTRL_AEAD_SET_TAG 0x11

#define P2P_LOAD(field, name)                                   \
    do {                                                        \
        *(void **)(&crypto.field) = dlsym(library, name);       \
        if (crypto.field == NULL) return;                       \
    } while (0)

static void load(void) {
    const char *names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"};
    void *library = NULL;
    for (size_t index = 0; index < sizeof(names) / sizeof(names[0]) && library == NULL; index++) {
        library = dlopen(names[index], RTLD_NOW | RTLD_LOCAL);
    }
    if (library == NULL) return;
    P2P_LOAD(init_crypto, "OPENSSL_init_crypto");
    P2P_LOAD(ctx_new, "EVP_CIPHER_CTX_new");
    P2P_LOAD(ctx_free, "EVP_CIPHER_CTX_free");
    P2P_LOAD(ctx_ctrl, "EVP_CIPHER_CTX_ctrl");
    P2P_LOAD(encrypt_init, "EVP_EncryptInit_ex");
    P2P_LOAD(encrypt_update, "EVP_EncryptUpdate");
    P2P_LOAD(encrypt_final, "EVP_EncryptFinal_ex");
    P2P_LOAD(decrypt_init, "EVP_DecryptInit_ex");
    P2P_LOAD(decrypt_update, "EVP_DecryptUpdate");
    P2P_LOAD(decrypt_final, "EVP_DecryptFinal_ex");
    if (crypto.init_crypto(P2P_OPENSSL_INIT_NO_ATEXIT, NULL) != 1) return;
    // OpenSSL 3: fetch the cipher once (an implicit fetch at every init costs);
    // 1.1 has only the static cipher.
    *(void **)(&crypto.fetch) = dlsym(library, "EVP_CIPHER_fetch");
    if (crypto.fetch != NULL) crypto.cipher = crypto.fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (crypto.cipher == NULL) {
        *(void **)(&crypto.legacy_cipher) = dlsym(library, "EVP_chacha20_poly1305");
        if (crypto.legacy_cipher != NULL) crypto.cipher = crypto.legacy_cipher();
    }
    loaded = crypto.cipher != NULL;
}

int p2p_aead_available(void) {
    pthread_once(&load_once, load);
    return loaded;
}

void *p2p_aead_context_new(void) {
    if (!p2p_aead_available()) return NULL;
    return crypto.ctx_new();
}

void p2p_aead_context_free(void *context) {
    if (context != NULL && p2p_aead_available()) crypto.ctx_free(context);
}

int p2p_aead_seal_init(void *context, const unsigned char *key, const unsigned char *nonce,
                       const unsigned char *ad, size_t ad_length) {
    int written = 0;
    if (context == NULL || ad_length > 0x7fffffff) return 0;
    if (crypto.encrypt_init(context, crypto.cipher, NULL, key, nonce) != 1) return 0;
    return ad_length == 0 || crypto.encrypt_update(context, NULL, &written, ad, (int)ad_length) == 1;
}

int p2p_aead_seal_update(void *context, const unsigned char *in, size_t length, unsigned char *out) {
    int written = 0;
    if (context == NULL || length > 0x7fffffff) return 0;
    if (length == 0) return 1;
    return crypto.encrypt_update(context, out, &written, in, (int)length) == 1 && (size_t)written == length;
}

int p2p_aead_seal_final(void *context, unsigned char *tag) {
    int written = 0;
    if (context == NULL) return 0;
    if (crypto.encrypt_final(context, tag, &written) != 1) return 0;
    return crypto.ctx_ctrl(context, P2P_EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
}

int p2p_aead_open(void *context, const unsigned char *key, const unsigned char *nonce,
                  const unsigned char *ad, size_t ad_length,
                  const unsigned char *in, size_t length, unsigned char *out) {
    int written = 0;
    if (context == NULL || length > 0x7fffffff || ad_length > 0x7fffffff) return 0;
    if (crypto.decrypt_init(context, crypto.cipher, NULL, key, nonce) != 1) return 0;
    if (crypto.ctx_ctrl(context, P2P_EVP_CTRL_AEAD_SET_TAG, 16, (void *)(in + length)) != 1) return 0;
    if (ad_length > 0 && crypto.decrypt_update(context, NULL, &written, ad, (int)ad_length) != 1) return 0;
    if (length > 0 && crypto.decrypt_update(context, out, &written, in, (int)length) != 1) return 0;
    return crypto.decrypt_final(context, out + length, &written) == 1;
}

#else

// Elsewhere (macOS's libcrypto aborts a process that loads it) the caller
// uses swift-crypto.
int p2p_aead_available(void) { return 0; }
void *p2p_aead_context_new(void) { return NULL; }
void p2p_aead_context_free(void *context) { (void)context; }
int p2p_aead_seal_init(void *context, const unsigned char *key, const unsigned char *nonce,
                       const unsigned char *ad, size_t ad_length) { return 0; }
int p2p_aead_seal_update(void *context, const unsigned char *in, size_t length, unsigned char *out) { return 0; }
int p2p_aead_seal_final(void *context, unsigned char *tag) { return 0; }
int p2p_aead_open(void *context, const unsigned char *key, const unsigned char *nonce,
                  const unsigned char *ad, size_t ad_length,
                  const unsigned char *in, size_t length, unsigned char *out) { return 0; }

#endif
