/*
 * ts_gguf: writing GGUF bytes in tests: a growable buffer and the format's
 * pieces (header, typed metadata keys, tensor infos, alignment padding), so
 * tests can build valid, truncated and malicious files alike. Little-endian
 * hosts only, as the loader. Every function asserts on out of memory.
 */
#ifndef TS_GGUF_H
#define TS_GGUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct ts_wbuf {
    uint8_t *p;
    size_t len, cap;
} ts_wbuf;

void ts_w_bytes(ts_wbuf *w, const void *src, size_t n);
void ts_w_u8(ts_wbuf *w, uint8_t v);
void ts_w_u16(ts_wbuf *w, uint16_t v);
void ts_w_u32(ts_wbuf *w, uint32_t v);
void ts_w_u64(ts_wbuf *w, uint64_t v);
void ts_w_f32(ts_wbuf *w, float v);
void ts_w_f64(ts_wbuf *w, double v);
/* A GGUF string: u64 length, then the bytes. */
void ts_w_strn(ts_wbuf *w, const char *s, size_t n);
void ts_w_str(ts_wbuf *w, const char *s);
void ts_w_zeros(ts_wbuf *w, size_t n);
/* Zero bytes up to the next multiple of align. */
void ts_w_pad(ts_wbuf *w, size_t align);
/* "GGUF", version, tensor count, key count. */
void ts_w_hdr(ts_wbuf *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
/* A metadata key and its value type id (gguf_type; the value follows). */
void ts_w_key(ts_wbuf *w, const char *key, uint32_t type);
/* A tensor info: name, dims, ggml type, offset into the data section. */
void ts_w_tinfo(ts_wbuf *w, const char *name, uint32_t n_dims, const uint64_t *dims,
                uint32_t type, uint64_t offset);

#endif
