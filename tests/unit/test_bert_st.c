/*
 * Unit tests for the safetensors loader (plugins/bert/st.c).
 *
 * A tiny writer builds files in memory; tests check every parsed field, then
 * refuse every truncation, malicious headers one by one, and a few hundred
 * thousand deterministic mutations without crashing. Inputs are placed
 * against a PROT_NONE page so any over-read faults even without ASan. The
 * shipped all-MiniLM-L6-v2 weights are read when models/ holds them, and the
 * test is skipped, visibly, otherwise.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "st.h"
#include "test_support.h"

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif
#define MINILM_ST OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2/model.safetensors"

/* ========================================================================
 * Writer and guarded buffers
 * ======================================================================== */

typedef struct buf {
    uint8_t *p;
    size_t len;
} buf;

/* 8-byte length, header (padded with `pad` spaces), then data_len bytes of
 * a pattern. */
static buf make_file(const char *header, size_t pad, size_t data_len)
{
    size_t hl = strlen(header) + pad;
    buf b = {.len = 8 + hl + data_len};
    b.p = malloc(b.len ? b.len : 1);
    cr_assert_not_null(b.p);
    uint64_t n = hl;
    memcpy(b.p, &n, 8);
    memcpy(b.p + 8, header, strlen(header));
    memset(b.p + 8 + strlen(header), ' ', pad);
    for (size_t i = 0; i < data_len; i++)
        b.p[8 + hl + i] = (uint8_t)(i * 7 + 3);
    return b;
}

typedef struct guarded {
    uint8_t *map;
    size_t map_len;
    uint8_t *end; /* the guard page */
} guarded;

static guarded guarded_alloc(size_t cap)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (cap + pg - 1) / pg;
    guarded g;
    g.map_len = (pages + 1) * pg;
    g.map = mmap(NULL, g.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g.map, MAP_FAILED);
    cr_assert_eq(mprotect(g.map + pages * pg, pg, PROT_NONE), 0);
    g.end = g.map + pages * pg;
    return g;
}

static const uint8_t *guarded_put(guarded *g, const void *src, size_t n)
{
    uint8_t *dst = g->end - n;
    memcpy(dst, src, n);
    return dst;
}

static void guarded_free(guarded *g)
{
    munmap(g->map, g->map_len);
}

static void expect_refused(const char *header, size_t data_len, const char *reason)
{
    buf b = make_file(header, 0, data_len);
    guarded g = guarded_alloc(b.len);
    const uint8_t *p = guarded_put(&g, b.p, b.len);
    st_file *f = (st_file *)0x1;
    char err[256] = "";
    int rc = st_open_mem(p, b.len, &f, err, sizeof err);
    cr_assert_eq(rc, -1, "expected refusal with '%s' for %s", reason, header);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err, reason), "error '%s' lacks '%s' (header %s)", err, reason,
                       header);
    guarded_free(&g);
    free(b.p);
}

/* Reads every byte a consumer could read. */
static unsigned touch_all(const st_file *f)
{
    unsigned sum = 0;
    for (size_t i = 0; i < st_tensor_count(f); i++) {
        const st_tensor *t = st_tensor_at(f, i);
        cr_assert_eq(st_find(f, t->name), t);
        cr_assert_eq(t->nbytes, t->n_elements * st_dtype_size(t->dtype));
        const uint8_t *d = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++)
            sum += d[k];
    }
    return sum;
}

/* Three tensors (F32 2x3, F16 4, I64 scalar) and metadata, 24 + 8 + 8 bytes. */
static const char SAMPLE[] =
    "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"},"
    "\"b.half\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"c.step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]}}";

/* ========================================================================
 * Valid files
 * ======================================================================== */

Test(bert_st, parses_every_field)
{
    buf b = make_file(SAMPLE, 5, 40);
    guarded g = guarded_alloc(b.len);
    const uint8_t *p = guarded_put(&g, b.p, b.len);
    st_file *f = NULL;
    char err[256] = "";
    cr_assert_eq(st_open_mem(p, b.len, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_tensor_count(f), 3);
    cr_assert_eq(st_data_offset(f), 8 + strlen(SAMPLE) + 5);
    cr_assert_eq(st_file_size(f), b.len);
    cr_assert_str_eq(st_metadata(f, "format"), "pt");
    cr_assert_str_eq(st_metadata(f, "x"), "y");
    cr_assert_null(st_metadata(f, "nope"));

    const st_tensor *a = st_find(f, "a.weight");
    cr_assert_not_null(a);
    cr_assert_eq(st_tensor_at(f, 0), a, "sorted by name");
    cr_assert_eq(a->dtype, ST_F32);
    cr_assert_eq(a->n_dims, 2);
    cr_assert_eq(a->shape[0], 2);
    cr_assert_eq(a->shape[1], 3);
    cr_assert_eq(a->n_elements, 6);
    cr_assert_eq(a->nbytes, 24);
    cr_assert_eq(a->offset, 0);
    cr_assert_eq((const uint8_t *)a->data, p + st_data_offset(f));

    const st_tensor *h = st_find(f, "b.half");
    cr_assert_eq(h->dtype, ST_F16);
    cr_assert_eq(h->n_elements, 4);
    cr_assert_eq((const uint8_t *)h->data, p + st_data_offset(f) + 24);
    cr_assert_eq(((const uint8_t *)h->data)[0], (uint8_t)(24 * 7 + 3));

    const st_tensor *s = st_find(f, "c.step");
    cr_assert_eq(s->n_dims, 0, "a scalar");
    cr_assert_eq(s->n_elements, 1);
    cr_assert_eq(s->nbytes, 8);
    cr_assert_null(st_find(f, "a.weigh"));
    cr_assert_null(st_tensor_at(f, 3));
    touch_all(f);
    st_close(f);
    guarded_free(&g);
    free(b.p);
}

Test(bert_st, dtype_table_and_edge_shapes)
{
    cr_assert_str_eq(st_dtype_name(ST_BF16), "BF16");
    cr_assert_eq(st_dtype_size(ST_F64), 8);
    cr_assert_eq(st_dtype_size(ST_BOOL), 1);
    cr_assert_eq(st_dtype_size((st_dtype)99), 0);
    cr_assert_str_eq(st_dtype_name((st_dtype)-1), "?");

    /* A zero-sized tensor, gaps and overlaps between tensors, an empty header
     * object, all valid. */
    const char *hdr = "{\"z\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[3,3]},"
                      "\"o1\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                      "\"o2\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[2,6]}}";
    buf b = make_file(hdr, 0, 16);
    st_file *f;
    char err[256];
    cr_assert_eq(st_open_mem(b.p, b.len, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_find(f, "z")->n_elements, 0);
    st_close(f);
    free(b.p);

    b = make_file("{}", 0, 0);
    cr_assert_eq(st_open_mem(b.p, b.len, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_tensor_count(f), 0);
    st_close(f);
    free(b.p);
    st_close(NULL);
}

Test(bert_st, open_maps_a_file_and_refuses_missing_ones)
{
    char *dir = ts_tmpdir();
    buf b = make_file(SAMPLE, 0, 40);
    char path[512];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    fwrite(b.p, 1, b.len, fp);
    fclose(fp);
    st_file *f = NULL;
    char err[256] = "";
    cr_assert_eq(st_open(path, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_tensor_count(f), 3);
    touch_all(f);
    st_close(f);

    cr_assert_eq(st_open("/nonexistent/x.safetensors", &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "cannot open"), "%s", err);
    cr_assert_eq(st_open(dir, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "not a regular file"), "%s", err);
    char *empty = ts_write_file(dir, "empty.safetensors", "");
    cr_assert_eq(st_open(empty, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "too short"), "%s", err);
    free(empty);
    free(b.p);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ========================================================================
 * Refusals
 * ======================================================================== */

Test(bert_st, every_truncation_is_refused)
{
    buf b = make_file(SAMPLE, 3, 40);
    guarded g = guarded_alloc(b.len);
    for (size_t n = 0; n < b.len; n++) {
        const uint8_t *p = guarded_put(&g, b.p, n);
        st_file *f = NULL;
        char err[256] = "";
        cr_assert_eq(st_open_mem(n ? p : NULL, n, &f, err, sizeof err), -1,
                     "prefix of %zu bytes accepted", n);
        cr_assert_null(f);
        cr_assert_neq(err[0], '\0', "prefix of %zu bytes: no reason", n);
    }
    guarded_free(&g);
    free(b.p);
}

Test(bert_st, malicious_headers)
{
    /* Length field. */
    uint8_t raw[16] = {0};
    uint64_t huge = UINT64_MAX;
    memcpy(raw, &huge, 8);
    st_file *f;
    char err[256] = "";
    cr_assert_eq(st_open_mem(raw, sizeof raw, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "exceeds the limit"), "%s", err);
    uint64_t past = 9;
    memcpy(raw, &past, 8);
    cr_assert_eq(st_open_mem(raw, sizeof raw, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "past the end of the file"), "%s", err);
    uint64_t big = ST_MAX_HEADER + 1ull;
    memcpy(raw, &big, 8);
    cr_assert_eq(st_open_mem(raw, sizeof raw, &f, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "exceeds the limit"), "%s", err);

    /* Not JSON, not an object. */
    expect_refused("", 0, "not a JSON object");
    expect_refused("[1,2]", 0, "not a JSON object");
    expect_refused("{\"a\":", 0, "not valid JSON");
    expect_refused("{\"a\":{}} trailing", 0, "not valid JSON");
    expect_refused("{\"a\":1,\"a\":2}", 0, "not valid JSON"); /* duplicate key */
    expect_refused("{\"\\u0000\":{}}", 0, "not valid JSON");
    expect_refused("{\"a\":\"\xff\xfe\"}", 0, "not valid JSON"); /* invalid UTF-8 */

    /* Entries. */
    expect_refused("{\"a\":1}", 0, "not an object");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "exactly");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                   "exactly");
    expect_refused("{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "unknown dtype 'F31'");
    expect_refused("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "dtype is not a string");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4,
                   "shape must be an array");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                   "\"data_offsets\":[0,4]}}", 4, "at most 8");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                   "shape[0] is not a non-negative integer");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
                   "shape[0] is not a non-negative integer");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
                   "shape[0]");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                   "\"data_offsets\":[0,4]}}", 4, "not valid JSON"); /* beyond int64 */
    expect_refused("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                   "\"data_offsets\":[0,4]}}", 4, "element count overflows");
    expect_refused("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                   "\"data_offsets\":[0,4]}}", 4, "byte size overflows");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                   "two non-negative integers");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                   "two non-negative integers");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
                   "reversed");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4,
                   "past the end of the data section");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                   "\"data_offsets\":[9223372036854775800,9223372036854775804]}}", 4,
                   "past the end");
    expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8,
                   "span 4 bytes but F32 shape needs 8");
    expect_refused("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor name of 0 bytes");
    expect_refused("{\"__metadata__\":{\"a\":1}}", 0, "__metadata__ value 'a' is not a string");
    expect_refused("{\"__metadata__\":[]}", 0, "__metadata__ is not an object");

    /* A long name is cut in messages, not overflowed. */
    char hdr[4096];
    char name[2001];
    memset(name, 'n', 2000);
    name[2000] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             name);
    expect_refused(hdr, 4, "tensor name of 2000 bytes");
    snprintf(hdr, sizeof hdr, "{\"%.1000s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
             name);
    expect_refused(hdr, 4, "nnn...");
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

Test(bert_st, random_mutations_never_crash, .timeout = 240)
{
    static const char interesting[] = "{}[]\",:0123456789-.eE \\u\xff";
    buf b = make_file(SAMPLE, 2, 40);
    guarded g = guarded_alloc(b.len);
    uint8_t *m = malloc(b.len);
    uint64_t st = 0x9e3779b97f4a7c15ull;
    unsigned accepted = 0, refused = 0;
    const unsigned iterations = 200000;
    for (unsigned it = 0; it < iterations; it++) {
        memcpy(m, b.p, b.len);
        unsigned edits = 1 + (unsigned)(rng_next(&st) % 3);
        for (unsigned e = 0; e < edits; e++) {
            uint64_t r = rng_next(&st);
            size_t pos = (size_t)(rng_next(&st) % b.len);
            if (r & 1)
                m[pos] = (uint8_t)(r >> 8);
            else
                m[pos] = (uint8_t)interesting[(r >> 8) % (sizeof interesting - 1)];
        }
        const uint8_t *p = guarded_put(&g, m, b.len);
        st_file *f = NULL;
        char err[256] = "";
        if (st_open_mem(p, b.len, &f, err, sizeof err) == 0) {
            accepted++;
            touch_all(f);
            st_close(f);
        } else {
            refused++;
            cr_assert_null(f);
            cr_assert_neq(err[0], '\0', "iteration %u: refused without a reason", it);
        }
    }
    cr_log_info("mutations: %u accepted, %u refused", accepted, refused);
    cr_assert_gt(accepted, 0, "mutations of tensor data must still parse");
    cr_assert_gt(refused, 0);
    free(m);
    guarded_free(&g);
    free(b.p);
}

/* ========================================================================
 * The shipped model
 * ======================================================================== */

Test(bert_st, minilm_weights)
{
    if (access(MINILM_ST, R_OK) != 0)
        cr_skip_test("%s not present (make models fetches it)", MINILM_ST);
    st_file *f = NULL;
    char err[256] = "";
    cr_assert_eq(st_open(MINILM_ST, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_tensor_count(f), 104); /* 105 header keys, one __metadata__ */
    cr_assert_str_eq(st_metadata(f, "format"), "pt");
    const st_tensor *t = st_find(f, "embeddings.word_embeddings.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->shape[0], 30522);
    cr_assert_eq(t->shape[1], 384);
    cr_assert_eq(st_find(f, "embeddings.position_ids")->dtype, ST_I64);
    st_close(f);
}
