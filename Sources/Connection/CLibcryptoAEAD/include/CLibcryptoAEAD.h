// ChaCha20-Poly1305 (RFC 8439) from the system's libcrypto (OpenSSL 3 or
// 1.1), loaded at run time with dlopen: building needs no OpenSSL headers or
// library, and a system without libcrypto still runs (the caller falls back to
// swift-crypto). Works on caller memory: swift-crypto's API copies every
// message into and out of `Data`, and on the Noise transport those copies cost
// as much as the cipher itself.
#ifndef CLIBCRYPTOAEAD_H
#define CLIBCRYPTOAEAD_H

#include <stddef.h>

// Loads libcrypto and its ChaCha20-Poly1305 once per process (thread-safe).
// Returns 1 when available, 0 otherwise (no libcrypto, a build without the
// cipher, or a platform where loading it is not done: only Linux loads it).
int p2p_aead_available(void);

// A cipher context, reused for every message of one direction. NULL when
// libcrypto is unavailable or out of memory.
void *p2p_aead_context_new(void);
void p2p_aead_context_free(void *context);

// Sealing in parts, so a message gathered from several buffers is encrypted
// without first being copied into one: init (32-byte key, 12-byte nonce,
// associated data), any number of updates (each writes exactly `length` bytes
// at `out`), then final (writes the 16-byte tag at `tag`). Each returns 1 on
// success, 0 on failure.
int p2p_aead_seal_init(void *context, const unsigned char *key, const unsigned char *nonce,
                       const unsigned char *ad, size_t ad_length);
int p2p_aead_seal_update(void *context, const unsigned char *in, size_t length, unsigned char *out);
int p2p_aead_seal_final(void *context, unsigned char *tag);

// Checks the 16-byte tag after `length` ciphertext bytes at `in` and decrypts
// them into `out` (which may be `in`). Returns 1 if authentic, 0 otherwise;
// on 0 the contents of `out` are unspecified and must not be used.
int p2p_aead_open(void *context, const unsigned char *key, const unsigned char *nonce,
                  const unsigned char *ad, size_t ad_length,
                  const unsigned char *in, size_t length, unsigned char *out);

#endif
