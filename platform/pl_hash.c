#include "platform/pl_hash.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

void pl_sha256(const void *data, size_t len, uint8_t out[PL_SHA256_LEN])
{
    unsigned int n = PL_SHA256_LEN;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void pl_sha256_hex(const void *data, size_t len, char out[PL_SHA256_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[PL_SHA256_LEN];
    pl_sha256(data, len, d);
    for (int i = 0; i < PL_SHA256_LEN; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[PL_SHA256_HEX_LEN] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool pl_sha256_from_hex(const char *hex, uint8_t out[PL_SHA256_LEN])
{
    for (int i = 0; i < PL_SHA256_LEN; i++) {
        if (!hex[2 * i] || !hex[2 * i + 1])
            return false;
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[PL_SHA256_HEX_LEN] == '\0';
}

bool pl_secure_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

uint64_t pl_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
