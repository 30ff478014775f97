/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of
 * every log-store record. The SSE4.2 crc32 instruction does 8 bytes per
 * step; CPUs without it (and other architectures) use slice-by-8 tables.
 * Both give the same values (tests check them against each other and
 * against the standard check value 0xE3069283 of "123456789").
 */
#include <stdbool.h>
#include <string.h>

#include "logstore/ls_internal.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

static uint32_t g_tab[8][256];
static bool g_hw;

__attribute__((constructor)) static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        g_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            g_tab[t][i] = (g_tab[t - 1][i] >> 8) ^ g_tab[0][g_tab[t - 1][i] & 0xFF];
#if defined(__x86_64__)
    __builtin_cpu_init();
    g_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t ls_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ g_tab[0][(c ^ *p++) & 0xFF];
        len--;
    }
    while (len >= 8) {
        uint32_t lo = c ^ ls_get32(p);
        uint32_t hi = ls_get32(p + 4);
        c = g_tab[7][lo & 0xFF] ^ g_tab[6][(lo >> 8) & 0xFF] ^ g_tab[5][(lo >> 16) & 0xFF] ^
            g_tab[4][lo >> 24] ^ g_tab[3][hi & 0xFF] ^ g_tab[2][(hi >> 8) & 0xFF] ^
            g_tab[1][(hi >> 16) & 0xFF] ^ g_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ g_tab[0][(c ^ *p++) & 0xFF];
    return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p,
                                                          size_t len)
{
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

uint32_t ls_crc32c(uint32_t crc, const void *data, size_t len)
{
#if defined(__x86_64__)
    if (g_hw)
        return crc_hw(crc, data, len);
#endif
    return ls_crc32c_sw(crc, data, len);
}
