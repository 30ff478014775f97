/*
 * Unit tests for the GGUF loader (plugins/llama/gguf.c, compiled in here:
 * the llama plugin is not built yet).
 *
 * A tiny writer builds valid files in memory; tests check every parsed field,
 * then refuse every truncation and a few hundred thousand deterministic
 * mutations without crashing. Inputs are placed against a PROT_NONE page so
 * any over-read faults even without ASan. The real SmolLM2 model is read when
 * models/ holds it and the test is skipped, visibly, otherwise.
 */
#include "../../plugins/llama/gguf.c"

#include <criterion/criterion.h>

#include "ts_gguf.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef OUTPOST_SOURCE_DIR
#define OUTPOST_SOURCE_DIR "."
#endif

#define SMOLLM2_PATH OUTPOST_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* ========================================================================
 * Samples (bytes written with tests/support/ts_gguf)
 * ======================================================================== */

/* The valid sample: 16 or 17 keys of every type, 3 tensors (F32, F16, Q8_0). */
typedef struct sample {
    ts_wbuf w;
    uint32_t alignment;         /* effective */
    size_t data_offset;         /* where the writer put the data section */
    uint64_t offsets[3];
} sample;

static const char *const tensor_names[3] = {"w.f32", "blk.0.attn_q.weight", "w.q8"};
static const uint32_t tensor_types[3] = {GGUF_GGML_F32, GGUF_GGML_F16, GGUF_GGML_Q8_0};
static const uint32_t tensor_ndims[3] = {2, 2, 3};
static const uint64_t tensor_dims[3][3] = {{4, 3, 0}, {8, 2, 0}, {64, 2, 1}};
static const uint64_t tensor_nbytes[3] = {48, 32, 136};

static uint8_t pattern(int tensor, uint64_t i)
{
    return (uint8_t)(tensor * 71 + i * 13 + 1);
}

/* version 2 or 3; alignment 0 = leave general.alignment out (default 32). */
static sample build_sample(uint32_t version, uint32_t alignment)
{
    sample s = {0};
    ts_wbuf *w = &s.w;
    s.alignment = alignment ? alignment : 32;
    ts_w_hdr(w, version, 3, alignment ? 17 : 16);

    ts_w_key(w, "general.architecture", GGUF_TYPE_STRING);
    ts_w_str(w, "llama");
    ts_w_key(w, "t.u8", GGUF_TYPE_UINT8);
    ts_w_u8(w, 200);
    ts_w_key(w, "t.i8", GGUF_TYPE_INT8);
    ts_w_u8(w, (uint8_t)(int8_t)-5);
    ts_w_key(w, "t.u16", GGUF_TYPE_UINT16);
    ts_w_u16(w, 60000);
    ts_w_key(w, "t.i16", GGUF_TYPE_INT16);
    ts_w_u16(w, (uint16_t)(int16_t)-30000);
    ts_w_key(w, "t.u32", GGUF_TYPE_UINT32);
    ts_w_u32(w, 4000000000u);
    ts_w_key(w, "t.i32", GGUF_TYPE_INT32);
    ts_w_u32(w, (uint32_t)(int32_t)-2000000000);
    ts_w_key(w, "t.f32", GGUF_TYPE_FLOAT32);
    ts_w_f32(w, 1.5f);
    ts_w_key(w, "t.bool", GGUF_TYPE_BOOL);
    ts_w_u8(w, 1);
    ts_w_key(w, "t.u64", GGUF_TYPE_UINT64);
    ts_w_u64(w, (1ull << 40) + 7);
    ts_w_key(w, "t.i64", GGUF_TYPE_INT64);
    ts_w_u64(w, (uint64_t)-(1ll << 40));
    ts_w_key(w, "t.f64", GGUF_TYPE_FLOAT64);
    ts_w_f64(w, 3.25);
    ts_w_key(w, "t.strs", GGUF_TYPE_ARRAY);
    ts_w_u32(w, GGUF_TYPE_STRING);
    ts_w_u64(w, 3);
    ts_w_str(w, "a");
    ts_w_str(w, "bc");
    ts_w_str(w, "");
    /* [["x", "yz"], []] */
    ts_w_key(w, "t.nested", GGUF_TYPE_ARRAY);
    ts_w_u32(w, GGUF_TYPE_ARRAY);
    ts_w_u64(w, 2);
    ts_w_u32(w, GGUF_TYPE_STRING);
    ts_w_u64(w, 2);
    ts_w_str(w, "x");
    ts_w_str(w, "yz");
    ts_w_u32(w, GGUF_TYPE_STRING);
    ts_w_u64(w, 0);
    ts_w_key(w, "t.u32s", GGUF_TYPE_ARRAY);
    ts_w_u32(w, GGUF_TYPE_UINT32);
    ts_w_u64(w, 4);
    for (uint32_t i = 1; i <= 4; i++)
        ts_w_u32(w, i);
    ts_w_key(w, "t.f32s", GGUF_TYPE_ARRAY);
    ts_w_u32(w, GGUF_TYPE_FLOAT32);
    ts_w_u64(w, 2);
    ts_w_f32(w, 0.5f);
    ts_w_f32(w, -2.0f);
    if (alignment) {
        ts_w_key(w, "general.alignment", GGUF_TYPE_UINT32);
        ts_w_u32(w, alignment);
    }

    uint64_t off = 0;
    for (int t = 0; t < 3; t++) {
        s.offsets[t] = off;
        ts_w_tinfo(w, tensor_names[t], tensor_ndims[t], tensor_dims[t], tensor_types[t], off);
        off += tensor_nbytes[t];
        off = (off + s.alignment - 1) / s.alignment * s.alignment;
    }
    ts_w_pad(w, s.alignment);
    s.data_offset = w->len;
    for (int t = 0; t < 3; t++) {
        ts_w_zeros(w, s.data_offset + s.offsets[t] - w->len);
        for (uint64_t i = 0; i < tensor_nbytes[t]; i++)
            ts_w_u8(w, pattern(t, i));
    }
    return s;
}

/* ========================================================================
 * Guarded buffers: data ends right at a PROT_NONE page.
 * ======================================================================== */

typedef struct guarded {
    uint8_t *map;
    size_t map_len;
    uint8_t *p;                 /* p + cap == the guard page */
    size_t cap;
} guarded;

static guarded guarded_alloc(size_t cap)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (cap + pg - 1) / pg;
    guarded g = {0};
    g.map_len = (data_pages + 1) * pg;
    g.map = mmap(NULL, g.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g.map, MAP_FAILED);
    cr_assert_eq(mprotect(g.map + data_pages * pg, pg, PROT_NONE), 0);
    g.p = g.map + data_pages * pg - cap;
    g.cap = cap;
    return g;
}

/* Copies n bytes so that they end at the guard page; returns their start. */
static const uint8_t *guarded_put(guarded *g, const void *src, size_t n)
{
    cr_assert_leq(n, g->cap);
    uint8_t *dst = g->p + (g->cap - n);
    memcpy(dst, src, n);
    return dst;
}

static void guarded_free(guarded *g)
{
    munmap(g->map, g->map_len);
}

/* ========================================================================
 * Helpers
 * ======================================================================== */

static gguf_file *open_ok(const void *buf, size_t len)
{
    gguf_file *f = NULL;
    char err[256] = "";
    int rc = gguf_open_mem(buf, len, &f, err, sizeof err);
    cr_assert_eq(rc, 0, "gguf_open_mem failed: %s", err);
    cr_assert_not_null(f);
    return f;
}

static void expect_refused(const ts_wbuf *w, const char *reason)
{
    guarded g = guarded_alloc(w->len);
    const uint8_t *p = guarded_put(&g, w->p, w->len);
    gguf_file *f = (gguf_file *)0x1;
    char err[256] = "";
    int rc = gguf_open_mem(p, w->len, &f, err, sizeof err);
    cr_assert_eq(rc, -1, "expected refusal with '%s'", reason);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err, reason), "error '%s' lacks '%s'", err, reason);
    guarded_free(&g);
}

static bool str_is(const char *s, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(s, want, len) == 0;
}

/* Reads everything a consumer could read, so a bad accessor faults here. */
static uint64_t touch_all(const gguf_file *f)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        sum += kv->key.len ? (uint8_t)kv->key.ptr[kv->key.len - 1] : 0;
        uint64_t u;
        int64_t s64;
        double d;
        if (gguf_kv_u64(kv, &u) == GGUF_OK)
            sum += u;
        if (gguf_kv_i64(kv, &s64) == GGUF_OK)
            sum += (uint64_t)s64;
        if (gguf_kv_f64(kv, &d) == GGUF_OK)
            sum += (uint64_t)(d == d);
        if (kv->type == GGUF_TYPE_STRING && kv->str.len)
            sum += (uint8_t)kv->str.ptr[kv->str.len - 1];
        if (kv->type == GGUF_TYPE_ARRAY) {
            const gguf_arr *a = &kv->arr;
            for (uint64_t j = 0; j < a->count; j++) {
                const char *s;
                size_t n;
                if (gguf_arr_u64(a, j, &u) == GGUF_OK)
                    sum += u;
                if (gguf_arr_f64(a, j, &d) == GGUF_OK)
                    sum += (uint64_t)(d == d);
                if (gguf_arr_str(a, j, &s, &n) == GGUF_OK && n)
                    sum += (uint8_t)s[n - 1];
                if (a->type == GGUF_TYPE_ARRAY)
                    sum += a->arrs[j].count;
            }
        }
    }
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        cr_assert_eq(gguf_find_tensor(f, t->name), t);
        if (t->nbytes) {
            const uint8_t *d = t->data;
            sum += d[0] + d[t->nbytes - 1];
        }
    }
    return sum;
}

/* ========================================================================
 * Valid files
 * ======================================================================== */

static void check_sample(const sample *s, const uint8_t *buf, gguf_file *f, uint32_t version)
{
    const char *str;
    size_t len;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;

    cr_assert_eq(gguf_version(f), version);
    cr_assert_eq(gguf_alignment(f), s->alignment);
    cr_assert_eq(gguf_data_offset(f), s->data_offset);
    cr_assert_eq(gguf_file_size(f), s->w.len);
    cr_assert_eq(gguf_kv_count(f), s->alignment != 32 ? 17u : 16u);

    cr_assert_eq(gguf_get_str(f, "general.architecture", &str, &len), GGUF_OK);
    cr_assert(str_is(str, len, "llama"));
    cr_assert_eq((const uint8_t *)str > buf && (const uint8_t *)str < buf + s->w.len, 1,
                 "strings point into the buffer");

    cr_assert_eq(gguf_get_u32(f, "t.u8", &u32), GGUF_OK);
    cr_assert_eq(u32, 200);
    cr_assert_eq(gguf_get_i64(f, "t.i8", &i64), GGUF_OK);
    cr_assert_eq(i64, -5);
    cr_assert_eq(gguf_get_u32(f, "t.u16", &u32), GGUF_OK);
    cr_assert_eq(u32, 60000);
    cr_assert_eq(gguf_get_i64(f, "t.i16", &i64), GGUF_OK);
    cr_assert_eq(i64, -30000);
    cr_assert_eq(gguf_get_u32(f, "t.u32", &u32), GGUF_OK);
    cr_assert_eq(u32, 4000000000u);
    cr_assert_eq(gguf_get_i64(f, "t.i32", &i64), GGUF_OK);
    cr_assert_eq(i64, -2000000000);
    cr_assert_eq(gguf_get_f32(f, "t.f32", &f32), GGUF_OK);
    cr_assert_float_eq(f32, 1.5f, 0);
    cr_assert_eq(gguf_get_bool(f, "t.bool", &b), GGUF_OK);
    cr_assert(b);
    cr_assert_eq(gguf_get_u64(f, "t.u64", &u64), GGUF_OK);
    cr_assert_eq(u64, (1ull << 40) + 7);
    cr_assert_eq(gguf_get_i64(f, "t.i64", &i64), GGUF_OK);
    cr_assert_eq(i64, -(1ll << 40));
    cr_assert_eq(gguf_get_f64(f, "t.f64", &f64), GGUF_OK);
    cr_assert_float_eq(f64, 3.25, 0);
    cr_assert_eq(gguf_get_f32(f, "t.f64", &f32), GGUF_OK);
    cr_assert_float_eq(f32, 3.25f, 0);

    /* Conversions: widening works, lossy ones and wrong kinds do not. */
    cr_assert_eq(gguf_get_u64(f, "t.u8", &u64), GGUF_OK);
    cr_assert_eq(u64, 200);
    cr_assert_eq(gguf_get_i64(f, "t.u32", &i64), GGUF_OK);
    cr_assert_eq(i64, 4000000000ll);
    u32 = 77;
    cr_assert_eq(gguf_get_u32(f, "t.i8", &u32), GGUF_ETYPE);
    cr_assert_eq(gguf_get_u32(f, "t.u64", &u32), GGUF_ETYPE);
    cr_assert_eq(u32, 77, "out untouched on error");
    cr_assert_eq(gguf_get_u32(f, "t.f32", &u32), GGUF_ETYPE);
    cr_assert_eq(gguf_get_str(f, "t.u32", &str, &len), GGUF_ETYPE);
    cr_assert_eq(gguf_get_bool(f, "t.u8", &b), GGUF_ETYPE);
    cr_assert_eq(gguf_get_f32(f, "t.u32", &f32), GGUF_ETYPE);
    cr_assert_eq(gguf_get_u32(f, "no.such.key", &u32), GGUF_ENOENT);
    cr_assert_eq(gguf_get_str(f, "general.architectur", &str, &len), GGUF_ENOENT);
    cr_assert_null(gguf_find_kv(f, "t.u8x"));

    const gguf_arr *a;
    cr_assert_eq(gguf_get_arr(f, "t.u8", &a), GGUF_ETYPE);
    cr_assert_eq(gguf_get_arr(f, "t.strs", &a), GGUF_OK);
    cr_assert_eq(a->type, GGUF_TYPE_STRING);
    cr_assert_eq(a->count, 3);
    cr_assert_eq(gguf_arr_str(a, 0, &str, &len), GGUF_OK);
    cr_assert(str_is(str, len, "a"));
    cr_assert_eq(gguf_arr_str(a, 1, &str, &len), GGUF_OK);
    cr_assert(str_is(str, len, "bc"));
    cr_assert_eq(gguf_arr_str(a, 2, &str, &len), GGUF_OK);
    cr_assert_eq(len, 0);
    cr_assert_eq(gguf_arr_str(a, 3, &str, &len), GGUF_ENOENT);
    cr_assert_eq(gguf_arr_u64(a, 0, &u64), GGUF_ETYPE);

    cr_assert_eq(gguf_get_arr(f, "t.nested", &a), GGUF_OK);
    cr_assert_eq(a->type, GGUF_TYPE_ARRAY);
    cr_assert_eq(a->count, 2);
    cr_assert_eq(a->arrs[0].type, GGUF_TYPE_STRING);
    cr_assert_eq(a->arrs[0].count, 2);
    cr_assert_eq(gguf_arr_str(&a->arrs[0], 1, &str, &len), GGUF_OK);
    cr_assert(str_is(str, len, "yz"));
    cr_assert_eq(a->arrs[1].type, GGUF_TYPE_STRING);
    cr_assert_eq(a->arrs[1].count, 0);

    cr_assert_eq(gguf_get_arr(f, "t.u32s", &a), GGUF_OK);
    cr_assert_eq(a->type, GGUF_TYPE_UINT32);
    cr_assert_eq(a->count, 4);
    for (uint64_t i = 0; i < 4; i++) {
        cr_assert_eq(gguf_arr_u64(a, i, &u64), GGUF_OK);
        cr_assert_eq(u64, i + 1);
        cr_assert_eq(gguf_arr_i64(a, i, &i64), GGUF_OK);
        cr_assert_eq(i64, (int64_t)i + 1);
        uint32_t raw;
        memcpy(&raw, (const uint8_t *)a->data + 4 * i, 4);
        cr_assert_eq(raw, i + 1);
    }
    cr_assert_eq(gguf_arr_u64(a, 4, &u64), GGUF_ENOENT);
    cr_assert_eq(gguf_arr_f32(a, 0, &f32), GGUF_ETYPE);
    cr_assert_eq(gguf_arr_str(a, 0, &str, &len), GGUF_ETYPE);

    cr_assert_eq(gguf_get_arr(f, "t.f32s", &a), GGUF_OK);
    cr_assert_eq(gguf_arr_f32(a, 0, &f32), GGUF_OK);
    cr_assert_float_eq(f32, 0.5f, 0);
    cr_assert_eq(gguf_arr_f32(a, 1, &f32), GGUF_OK);
    cr_assert_float_eq(f32, -2.0f, 0);

    /* Iteration is in file order. */
    const gguf_kv *kv0 = gguf_kv_at(f, 0);
    cr_assert(str_is(kv0->key.ptr, kv0->key.len, "general.architecture"));
    cr_assert(str_is(gguf_kv_at(f, 15)->key.ptr, gguf_kv_at(f, 15)->key.len, "t.f32s"));
    cr_assert_null(gguf_kv_at(f, gguf_kv_count(f)));

    cr_assert_eq(gguf_tensor_count(f), 3);
    cr_assert_null(gguf_tensor_at(f, 3));
    cr_assert_null(gguf_find_tensor(f, "w.f3"));
    cr_assert_null(gguf_find_tensor(f, "missing"));
    for (int t = 0; t < 3; t++) {
        const gguf_tensor *ti = gguf_find_tensor(f, tensor_names[t]);
        cr_assert_not_null(ti, "tensor %s", tensor_names[t]);
        cr_assert_eq(ti, gguf_tensor_at(f, (uint64_t)t));
        cr_assert_str_eq(ti->name, tensor_names[t]);
        cr_assert_eq((uint32_t)ti->type, tensor_types[t]);
        cr_assert_eq(ti->n_dims, tensor_ndims[t]);
        uint64_t n = 1;
        for (uint32_t d = 0; d < 4; d++) {
            uint64_t want = d < tensor_ndims[t] ? tensor_dims[t][d] : 1;
            cr_assert_eq(ti->dims[d], want, "%s dim %u", ti->name, d);
            n *= want;
        }
        cr_assert_eq(ti->n_elements, n);
        cr_assert_eq(ti->nbytes, tensor_nbytes[t]);
        cr_assert_eq(ti->offset, s->offsets[t]);
        cr_assert_eq(ti->offset % s->alignment, 0);
        cr_assert_eq((const uint8_t *)ti->data, buf + s->data_offset + s->offsets[t]);
        const uint8_t *d = ti->data;
        for (uint64_t i = 0; i < ti->nbytes; i++)
            cr_assert_eq(d[i], pattern(t, i), "%s byte %llu", ti->name, (unsigned long long)i);
    }
}

Test(gguf, parses_every_field_v3_default_alignment)
{
    sample s = build_sample(3, 0);
    gguf_file *f = open_ok(s.w.p, s.w.len);
    check_sample(&s, s.w.p, f, 3);
    cr_assert_null(gguf_find_kv(f, "general.alignment"));
    gguf_close(f);
    free(s.w.p);
}

Test(gguf, parses_every_field_v2_alignment_64)
{
    sample s = build_sample(2, 64);
    gguf_file *f = open_ok(s.w.p, s.w.len);
    check_sample(&s, s.w.p, f, 2);
    cr_assert_eq(gguf_data_offset(f) % 64, 0);
    gguf_close(f);
    free(s.w.p);
}

Test(gguf, empty_file_with_no_tensors)
{
    ts_wbuf w = {0};
    ts_w_hdr(&w, 3, 0, 0);
    gguf_file *f = open_ok(w.p, w.len);
    cr_assert_eq(gguf_kv_count(f), 0);
    cr_assert_eq(gguf_tensor_count(f), 0);
    cr_assert_null(gguf_find_tensor(f, "x"));
    cr_assert_null(gguf_find_kv(f, "x"));
    gguf_close(f);
    gguf_close(NULL);
    free(w.p);
}

Test(gguf, type_tables)
{
    uint32_t be, bb;
    static const struct { uint32_t id; uint32_t be, bb; const char *name; } want[] = {
        {0, 1, 4, "F32"}, {1, 1, 2, "F16"}, {30, 1, 2, "BF16"},
        {2, 32, 18, "Q4_0"}, {3, 32, 20, "Q4_1"}, {6, 32, 22, "Q5_0"},
        {7, 32, 24, "Q5_1"}, {8, 32, 34, "Q8_0"}, {9, 32, 36, "Q8_1"},
        {10, 256, 84, "Q2_K"}, {11, 256, 110, "Q3_K"}, {12, 256, 144, "Q4_K"},
        {13, 256, 176, "Q5_K"}, {14, 256, 210, "Q6_K"}, {15, 256, 292, "Q8_K"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_assert(gguf_ggml_type_block(want[i].id, &be, &bb), "type %u", want[i].id);
        cr_assert_eq(be, want[i].be, "type %s", want[i].name);
        cr_assert_eq(bb, want[i].bb, "type %s", want[i].name);
        cr_assert_str_eq(gguf_ggml_type_name(want[i].id), want[i].name);
    }
    cr_assert_not(gguf_ggml_type_block(4, &be, &bb), "Q4_2 was removed");
    cr_assert_not(gguf_ggml_type_block(99, &be, &bb));
    cr_assert_str_eq(gguf_ggml_type_name(1000000), "?");
    cr_assert_eq(gguf_type_size(GGUF_TYPE_FLOAT64), 8);
    cr_assert_eq(gguf_type_size(GGUF_TYPE_STRING), 0);
    cr_assert_str_eq(gguf_type_name(GGUF_TYPE_BOOL), "bool");
    cr_assert_str_eq(gguf_type_name((gguf_type)13), "?");
}

/* ========================================================================
 * gguf_open (mmap)
 * ======================================================================== */

static char *write_temp(const void *p, size_t n)
{
    char *path = strdup("/tmp/test_gguf_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
    return path;
}

Test(gguf, open_maps_a_file)
{
    sample s = build_sample(3, 0);
    char *path = write_temp(s.w.p, s.w.len);
    gguf_file *f = NULL;
    char err[256] = "";
    cr_assert_eq(gguf_open(path, &f, err, sizeof err), 0, "%s", err);
    const gguf_tensor *t = gguf_find_tensor(f, "w.q8");
    cr_assert_not_null(t);
    cr_assert_eq(((const uint8_t *)t->data)[5], pattern(2, 5));
    const char *str;
    size_t len;
    cr_assert_eq(gguf_get_str(f, "general.architecture", &str, &len), GGUF_OK);
    cr_assert(str_is(str, len, "llama"));
    gguf_close(f);
    unlink(path);
    free(path);
    free(s.w.p);
}

Test(gguf, open_refuses_missing_empty_and_truncated_files)
{
    gguf_file *f = (gguf_file *)0x1;
    char err[256] = "";
    cr_assert_eq(gguf_open("/nonexistent/model.gguf", &f, err, sizeof err), -1);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err, "/nonexistent/model.gguf: No such file"), "%s", err);

    char *path = write_temp("", 0);
    cr_assert_eq(gguf_open(path, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "too small"), "%s", err);
    unlink(path);
    free(path);

    sample s = build_sample(3, 0);
    path = write_temp(s.w.p, s.w.len - 1);
    cr_assert_eq(gguf_open(path, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, path), "path prefixed: %s", err);
    cr_assert_not_null(strstr(err, "tensor 'w.q8': data ["), "%s", err);
    cr_assert_not_null(strstr(err, "past end of file"), "%s", err);
    unlink(path);
    free(path);

    cr_assert_eq(gguf_open("/tmp", &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "not a regular file"), "%s", err);
    free(s.w.p);
}

/* ========================================================================
 * Robustness
 * ======================================================================== */

Test(gguf, every_truncation_is_refused)
{
    sample s = build_sample(3, 0);
    guarded g = guarded_alloc(s.w.len);
    for (size_t n = 0; n < s.w.len; n++) {
        const uint8_t *p = guarded_put(&g, s.w.p, n);
        gguf_file *f = NULL;
        char err[256] = "";
        int rc = gguf_open_mem(n ? p : NULL, n, &f, err, sizeof err);
        cr_assert_eq(rc, -1, "prefix of %zu bytes accepted", n);
        cr_assert_null(f);
        cr_assert_neq(err[0], '\0', "prefix of %zu bytes: no reason", n);
    }
    /* The whole file, against the guard, still parses. */
    const uint8_t *p = guarded_put(&g, s.w.p, s.w.len);
    gguf_file *f = open_ok(p, s.w.len);
    touch_all(f);
    gguf_close(f);
    guarded_free(&g);
    free(s.w.p);
}

static uint64_t rng_next(uint64_t *st)
{
    /* xorshift64*: deterministic, so a failure reproduces. */
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 2685821657736338717ull;
}

Test(gguf, random_mutations_never_crash, .timeout = 240)
{
    static const uint32_t interesting[] = {
        0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 33, 64, 255, 256, 0x7fffffff,
        0x80000000u, 0xfffffffeu, 0xffffffffu,
    };
    sample s = build_sample(3, 0);
    guarded g = guarded_alloc(s.w.len);
    uint8_t *m = malloc(s.w.len);
    uint64_t st = 0x9e3779b97f4a7c15ull;
    unsigned accepted = 0, refused = 0;
    const unsigned iterations = 300000;
    for (unsigned it = 0; it < iterations; it++) {
        memcpy(m, s.w.p, s.w.len);
        unsigned edits = 1 + (unsigned)(rng_next(&st) % 3);
        for (unsigned e = 0; e < edits; e++) {
            uint64_t r = rng_next(&st);
            size_t pos = (size_t)(rng_next(&st) % s.w.len);
            if (r & 1) {
                m[pos] = (uint8_t)(r >> 8);
            } else {
                uint32_t v = (r & 2) ? interesting[(r >> 8) % (sizeof interesting / 4)]
                                     : (uint32_t)(r >> 32);
                size_t n = s.w.len - pos < 4 ? s.w.len - pos : 4;
                memcpy(m + pos, &v, n);
            }
        }
        const uint8_t *p = guarded_put(&g, m, s.w.len);
        gguf_file *f = NULL;
        char err[256] = "";
        if (gguf_open_mem(p, s.w.len, &f, err, sizeof err) == 0) {
            accepted++;
            touch_all(f);
            gguf_close(f);
        } else {
            refused++;
            cr_assert_null(f);
            cr_assert_neq(err[0], '\0', "iteration %u: refused without a reason", it);
        }
    }
    cr_log_info("mutations: %u accepted, %u refused", accepted, refused);
    cr_assert_eq(accepted + refused, iterations);
    cr_assert_gt(accepted, 0, "some mutations (e.g. of tensor data) must still parse");
    cr_assert_gt(refused, 0);
    free(m);
    guarded_free(&g);
    free(s.w.p);
}

/* One key "k" of the given type, written by the caller, then padding so that
 * count-versus-size prechecks do not fire first. */
static ts_wbuf one_kv(gguf_type t)
{
    ts_wbuf w = {0};
    ts_w_hdr(&w, 3, 0, 1);
    ts_w_key(&w, "k", t);
    return w;
}

/* One tensor "w" with the given shape/type/offset and 4 KiB of data. */
static ts_wbuf one_tensor(uint32_t n_dims, const uint64_t *dims, uint32_t type, uint64_t offset)
{
    ts_wbuf w = {0};
    ts_w_hdr(&w, 3, 1, 0);
    ts_w_tinfo(&w, "w", n_dims, dims, type, offset);
    ts_w_pad(&w, 32);
    ts_w_zeros(&w, 4096);
    return w;
}

Test(gguf, malicious_header)
{
    ts_wbuf w = {0};
    ts_w_bytes(&w, "GGUG", 4);
    ts_w_u32(&w, 3);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "bad magic");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 1, 0, 0);
    expect_refused(&w, "unsupported GGUF version 1");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 0x03000000u, 0, 0);
    expect_refused(&w, "big-endian");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 0, (1u << 20) + 1);
    expect_refused(&w, "kv count 1048577 exceeds limit");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, UINT64_MAX, 0);
    expect_refused(&w, "tensor count 18446744073709551615 exceeds limit");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 0, 1000);
    ts_w_zeros(&w, 100);
    expect_refused(&w, "kv count 1000 exceeds remaining 100 bytes");
    free(w.p);
}

Test(gguf, malicious_metadata)
{
    ts_wbuf w = {0};
    ts_w_hdr(&w, 3, 0, 1);
    ts_w_u64(&w, 1ull << 60);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "string length 1152921504606846976 past end of file");
    free(w.p);

    w = one_kv(GGUF_TYPE_STRING);
    ts_w_u64(&w, UINT64_MAX);
    expect_refused(&w, "string length 18446744073709551615 past end of file");
    free(w.p);

    w = one_kv(GGUF_TYPE_ARRAY);
    ts_w_u32(&w, GGUF_TYPE_UINT32);
    ts_w_u64(&w, 1ull << 62);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "key 'k': array of 4611686018427387904 uint32");
    free(w.p);

    w = one_kv(GGUF_TYPE_ARRAY);
    ts_w_u32(&w, GGUF_TYPE_STRING);
    ts_w_u64(&w, 1ull << 40);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "key 'k': array count 1099511627776 exceeds remaining 64 bytes");
    free(w.p);

    w = one_kv(GGUF_TYPE_ARRAY);
    for (int d = 0; d < 12; d++) {
        ts_w_u32(&w, GGUF_TYPE_ARRAY);
        ts_w_u64(&w, 1);
    }
    ts_w_zeros(&w, 64);
    expect_refused(&w, "nested deeper than 8");
    free(w.p);

    w = one_kv((gguf_type)13);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "unknown value type 13");
    free(w.p);

    w = one_kv(GGUF_TYPE_ARRAY);
    ts_w_u32(&w, 77);
    ts_w_zeros(&w, 64);
    expect_refused(&w, "unknown array element type 77");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 0, 2);
    ts_w_key(&w, "a", GGUF_TYPE_UINT8);
    ts_w_u8(&w, 1);
    ts_w_key(&w, "a", GGUF_TYPE_UINT8);
    ts_w_u8(&w, 2);
    expect_refused(&w, "duplicate key 'a'");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 0, 1);
    ts_w_key(&w, "general.alignment", GGUF_TYPE_UINT32);
    ts_w_u32(&w, 48);
    expect_refused(&w, "general.alignment 48 is not a power of two");
    free(w.p);

    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 0, 1);
    ts_w_key(&w, "general.alignment", GGUF_TYPE_UINT64);
    ts_w_u64(&w, 32);
    expect_refused(&w, "general.alignment has type uint64, expected uint32");
    free(w.p);

    /* A scalar cut short by the end of the file. */
    w = one_kv(GGUF_TYPE_UINT64);
    ts_w_u32(&w, 7);
    expect_refused(&w, "scalar value at offset");
    free(w.p);
}

Test(gguf, malicious_tensors)
{
    uint64_t dims5[5] = {32, 1, 1, 1, 1};
    ts_wbuf w = one_tensor(5, dims5, GGUF_GGML_F32, 0);
    expect_refused(&w, "tensor 'w': n_dims 5 > 4");
    free(w.p);

    uint64_t d1[1] = {32};
    w = one_tensor(1, d1, GGUF_GGML_F32, 0xFFFFFFFFFFFFFFE0ull);
    expect_refused(&w, "tensor 'w': data offset 18446744073709551584 + 128 bytes overflows");
    free(w.p);

    w = one_tensor(1, d1, GGUF_GGML_F32, 4);
    expect_refused(&w, "tensor 'w': offset 4 not a multiple of alignment 32");
    free(w.p);

    w = one_tensor(1, d1, GGUF_GGML_F32, 4096);
    expect_refused(&w, "tensor 'w': data [");
    expect_refused(&w, "past end of file (size");
    free(w.p);

    uint64_t big[1] = {2048};
    w = one_tensor(1, big, GGUF_GGML_F32, 0);
    char want[128];
    snprintf(want, sizeof want, "tensor 'w': data [64, %d) past end of file (size %zu)",
             64 + 8192, w.len);
    expect_refused(&w, want);
    free(w.p);

    w = one_tensor(1, d1, 99, 0);
    expect_refused(&w, "tensor 'w': unknown ggml type 99");
    free(w.p);

    w = one_tensor(1, d1, 4, 0);
    expect_refused(&w, "unknown ggml type 4");
    free(w.p);

    uint64_t d33[1] = {33};
    w = one_tensor(1, d33, GGUF_GGML_Q8_0, 0);
    expect_refused(&w, "tensor 'w': row length 33 not a multiple of Q8_0 block size 32");
    free(w.p);

    uint64_t d256[2] = {128, 2};
    w = one_tensor(2, d256, GGUF_GGML_Q4_K, 0);
    expect_refused(&w, "not a multiple of Q4_K block size 256");
    free(w.p);

    uint64_t huge[4] = {1ull << 32, 1ull << 32, 1, 1};
    w = one_tensor(4, huge, GGUF_GGML_F32, 0);
    expect_refused(&w, "tensor 'w': element count overflows");
    free(w.p);

    uint64_t neg[2] = {32, 1ull << 63};
    w = one_tensor(2, neg, GGUF_GGML_F32, 0);
    expect_refused(&w, "dim 1 = 9223372036854775808 out of range");
    free(w.p);

    /* Duplicate names, each tensor otherwise valid. */
    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 2, 0);
    ts_w_tinfo(&w, "w", 1, d1, GGUF_GGML_F32, 0);
    ts_w_tinfo(&w, "w", 1, d1, GGUF_GGML_F32, 128);
    ts_w_pad(&w, 32);
    ts_w_zeros(&w, 256);
    expect_refused(&w, "duplicate tensor name 'w'");
    free(w.p);

    char longname[GGUF_MAX_NAME + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    w = (ts_wbuf){0};
    ts_w_hdr(&w, 3, 1, 0);
    ts_w_tinfo(&w, longname, 1, d1, GGUF_GGML_F32, 0);
    ts_w_zeros(&w, 256);
    expect_refused(&w, "name of 65 bytes exceeds 64");
    free(w.p);
}

/* ========================================================================
 * The real model
 * ======================================================================== */

Test(gguf, smollm2_metadata_and_tensors)
{
    if (access(SMOLLM2_PATH, R_OK) != 0)
        cr_skip_test("model not present: %s", SMOLLM2_PATH);
    gguf_file *f = NULL;
    char err[512] = "";
    cr_assert_eq(gguf_open(SMOLLM2_PATH, &f, err, sizeof err), 0, "%s", err);

    const char *arch;
    size_t arch_len;
    cr_assert_eq(gguf_get_str(f, "general.architecture", &arch, &arch_len), GGUF_OK);
    cr_assert(str_is(arch, arch_len, "llama"), "architecture %.*s", (int)arch_len, arch);

    uint32_t ctx, embd, blocks, heads, heads_kv, ff;
    cr_assert_eq(gguf_get_u32(f, "llama.context_length", &ctx), GGUF_OK);
    cr_assert_eq(gguf_get_u32(f, "llama.embedding_length", &embd), GGUF_OK);
    cr_assert_eq(gguf_get_u32(f, "llama.block_count", &blocks), GGUF_OK);
    cr_assert_eq(gguf_get_u32(f, "llama.attention.head_count", &heads), GGUF_OK);
    cr_assert_eq(gguf_get_u32(f, "llama.attention.head_count_kv", &heads_kv), GGUF_OK);
    cr_assert_eq(gguf_get_u32(f, "llama.feed_forward_length", &ff), GGUF_OK);
    cr_assert_eq(embd, 576);
    cr_assert_eq(blocks, 30);
    cr_assert_eq(heads, 9);
    cr_assert_eq(heads_kv, 3);
    cr_assert_eq(ff, 1536);
    cr_assert_geq(ctx, 2048);

    const gguf_arr *tokens;
    cr_assert_eq(gguf_get_arr(f, "tokenizer.ggml.tokens", &tokens), GGUF_OK);
    cr_assert_eq(tokens->type, GGUF_TYPE_STRING);
    cr_assert_eq(tokens->count, 49152);
    const char *tok;
    size_t tok_len;
    cr_assert_eq(gguf_arr_str(tokens, tokens->count - 1, &tok, &tok_len), GGUF_OK);

    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    cr_assert_not_null(emb);
    cr_assert_eq(emb->n_dims, 2);
    cr_assert_eq(emb->dims[0], embd);
    cr_assert_eq(emb->dims[1], tokens->count);
    cr_assert_not_null(gguf_find_tensor(f, "blk.29.attn_q.weight"));
    cr_assert_null(gguf_find_tensor(f, "blk.30.attn_q.weight"));

    /* Summary for the log: tensor types present and total bytes. */
    uint64_t per_type[64] = {0}, total = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if ((unsigned)t->type < 64)
            per_type[t->type]++;
        total += t->nbytes;
    }
    char types[256] = "";
    for (unsigned t = 0; t < 64; t++)
        if (per_type[t])
            snprintf(types + strlen(types), sizeof types - strlen(types), " %s=%llu",
                     gguf_ggml_type_name(t), (unsigned long long)per_type[t]);
    cr_log_info("SmolLM2: v%u ctx=%u embd=%u blocks=%u heads=%u kv_heads=%u ff=%u vocab=%llu "
                "kv=%llu tensors=%llu (%s ) data=%llu bytes emb=%s",
                gguf_version(f), ctx, embd, blocks, heads, heads_kv, ff,
                (unsigned long long)tokens->count, (unsigned long long)gguf_kv_count(f),
                (unsigned long long)gguf_tensor_count(f), types, (unsigned long long)total,
                gguf_ggml_type_name((uint32_t)emb->type));
    cr_assert_leq(gguf_data_offset(f) + total, gguf_file_size(f));
    gguf_close(f);
}
