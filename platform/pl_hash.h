/*
 * pl_hash: hashing and secret comparison, on OpenSSL's libcrypto
 * (see docs/decisions/0004-hashing.md).
 *
 * Thread-safe; no allocation beyond libcrypto's own.
 */
#ifndef PL_HASH_H
#define PL_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PL_SHA256_LEN 32
#define PL_SHA256_HEX_LEN 64

void pl_sha256(const void *data, size_t len, uint8_t out[PL_SHA256_LEN]);
/* Lower-case hex of SHA-256(data); out must hold PL_SHA256_HEX_LEN + 1 bytes. */
void pl_sha256_hex(const void *data, size_t len, char out[PL_SHA256_HEX_LEN + 1]);
/* Parses 64 hex digits (either case); false if malformed. */
bool pl_sha256_from_hex(const char *hex, uint8_t out[PL_SHA256_LEN]);
/* Compares n bytes in time independent of where they differ. */
bool pl_secure_equal(const void *a, const void *b, size_t n);
/* 64-bit FNV-1a, for hash tables and stable percentage splits (not secrets). */
uint64_t pl_fnv1a64(const void *data, size_t len);

#endif
