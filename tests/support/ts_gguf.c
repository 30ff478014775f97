/* ts_gguf: GGUF bytes for tests. See ts_gguf.h. */
#include "ts_gguf.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

void ts_w_bytes(ts_wbuf *w, const void *src, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap *= 2;
        w->p = realloc(w->p, cap);
        cr_assert_not_null(w->p);
        w->cap = cap;
    }
    if (n)
        memcpy(w->p + w->len, src, n);
    w->len += n;
}

void ts_w_u8(ts_wbuf *w, uint8_t v) { ts_w_bytes(w, &v, 1); }
void ts_w_u16(ts_wbuf *w, uint16_t v) { ts_w_bytes(w, &v, 2); }
void ts_w_u32(ts_wbuf *w, uint32_t v) { ts_w_bytes(w, &v, 4); }
void ts_w_u64(ts_wbuf *w, uint64_t v) { ts_w_bytes(w, &v, 8); }
void ts_w_f32(ts_wbuf *w, float v) { ts_w_bytes(w, &v, 4); }
void ts_w_f64(ts_wbuf *w, double v) { ts_w_bytes(w, &v, 8); }

void ts_w_strn(ts_wbuf *w, const char *s, size_t n)
{
    ts_w_u64(w, n);
    ts_w_bytes(w, s, n);
}

void ts_w_str(ts_wbuf *w, const char *s)
{
    ts_w_strn(w, s, strlen(s));
}

void ts_w_zeros(ts_wbuf *w, size_t n)
{
    static const uint8_t z[64];
    while (n) {
        size_t k = n < sizeof z ? n : sizeof z;
        ts_w_bytes(w, z, k);
        n -= k;
    }
}

void ts_w_pad(ts_wbuf *w, size_t align)
{
    ts_w_zeros(w, (align - w->len % align) % align);
}

void ts_w_hdr(ts_wbuf *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    ts_w_bytes(w, "GGUF", 4);
    ts_w_u32(w, version);
    ts_w_u64(w, n_tensors);
    ts_w_u64(w, n_kv);
}

void ts_w_key(ts_wbuf *w, const char *key, uint32_t type)
{
    ts_w_str(w, key);
    ts_w_u32(w, type);
}

void ts_w_tinfo(ts_wbuf *w, const char *name, uint32_t n_dims, const uint64_t *dims,
                uint32_t type, uint64_t offset)
{
    ts_w_str(w, name);
    ts_w_u32(w, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        ts_w_u64(w, dims[d]);
    ts_w_u32(w, type);
    ts_w_u64(w, offset);
}
