/*
 * gguf: GGUF v2/v3 loader. See gguf.h for the contract.
 *
 * The parser walks a cursor over [base, base + size). Every read goes through
 * need(), which checks the remaining length without forming an out-of-range
 * pointer; every derived size is computed with __builtin_*_overflow. The
 * first failure writes err and unwinds; nothing is partially returned.
 *
 * Self-contained (libc only) so the llama plugin's shared library carries no
 * dependency on the agent's platform layer.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian values in place; big-endian hosts are not supported"
#endif

/* ========================================================================
 * Type tables
 * ======================================================================== */

size_t gguf_type_size(gguf_type t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_type_name(gguf_type t)
{
    static const char *const names[] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool", "string", "array", "uint64", "int64", "float64",
    };
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static bool valid_type(uint32_t t)
{
    return t <= GGUF_TYPE_FLOAT64;
}

typedef struct ggml_info {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} ggml_info;

/* Block layouts from ggml-common.h (QK4_0 = 32, QK_K = 256). */
static const ggml_info *ggml_lookup(uint32_t t)
{
    static const ggml_info table[] = {
        [GGUF_GGML_F32] = {"F32", 1, 4},
        [GGUF_GGML_F16] = {"F16", 1, 2},
        [GGUF_GGML_Q4_0] = {"Q4_0", 32, 2 + 16},
        [GGUF_GGML_Q4_1] = {"Q4_1", 32, 2 + 2 + 16},
        [GGUF_GGML_Q5_0] = {"Q5_0", 32, 2 + 4 + 16},
        [GGUF_GGML_Q5_1] = {"Q5_1", 32, 2 + 2 + 4 + 16},
        [GGUF_GGML_Q8_0] = {"Q8_0", 32, 2 + 32},
        [GGUF_GGML_Q8_1] = {"Q8_1", 32, 2 + 2 + 32},
        [GGUF_GGML_Q2_K] = {"Q2_K", 256, 16 + 64 + 2 + 2},
        [GGUF_GGML_Q3_K] = {"Q3_K", 256, 32 + 64 + 12 + 2},
        [GGUF_GGML_Q4_K] = {"Q4_K", 256, 2 + 2 + 12 + 128},
        [GGUF_GGML_Q5_K] = {"Q5_K", 256, 2 + 2 + 12 + 32 + 128},
        [GGUF_GGML_Q6_K] = {"Q6_K", 256, 128 + 64 + 16 + 2},
        [GGUF_GGML_Q8_K] = {"Q8_K", 256, 4 + 256 + 32},
        [GGUF_GGML_I8] = {"I8", 1, 1},
        [GGUF_GGML_I16] = {"I16", 1, 2},
        [GGUF_GGML_I32] = {"I32", 1, 4},
        [GGUF_GGML_I64] = {"I64", 1, 8},
        [GGUF_GGML_F64] = {"F64", 1, 8},
        [GGUF_GGML_BF16] = {"BF16", 1, 2},
    };
    if (t >= sizeof table / sizeof table[0] || table[t].name == NULL)
        return NULL;
    return &table[t];
}

bool gguf_ggml_type_block(uint32_t t, uint32_t *block_elems, uint32_t *block_bytes)
{
    const ggml_info *gi = ggml_lookup(t);
    if (gi == NULL)
        return false;
    if (block_elems)
        *block_elems = gi->block_elems;
    if (block_bytes)
        *block_bytes = gi->block_bytes;
    return true;
}

const char *gguf_ggml_type_name(uint32_t t)
{
    const ggml_info *gi = ggml_lookup(t);
    return gi ? gi->name : "?";
}

/* ========================================================================
 * The handle
 * ======================================================================== */

/* Parse-time allocations (string tables, nested arrays) hang off one list. */
typedef struct gguf_block {
    struct gguf_block *next;
    max_align_t data[];
} gguf_block;

struct gguf_file {
    const uint8_t *base;
    uint64_t size;
    bool mapped;                /* base came from mmap in gguf_open */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;

    uint64_t n_kv;
    gguf_kv *kvs;               /* n_kv */
    uint64_t n_tensors;
    gguf_tensor *tensors;       /* n_tensors */

    /* Open-addressing hash tables of index + 1 (0 = empty); size power of 2. */
    uint32_t *kv_index;
    uint64_t kv_index_cap;
    uint32_t *tensor_index;
    uint64_t tensor_index_cap;

    gguf_block *blocks;
};

static void *track_alloc(gguf_file *f, uint64_t n, size_t elem)
{
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)elem, &bytes) ||
        bytes > SIZE_MAX - sizeof(gguf_block))
        return NULL;
    gguf_block *b = calloc(1, sizeof(gguf_block) + (size_t)bytes);
    if (b == NULL)
        return NULL;
    b->next = f->blocks;
    f->blocks = b;
    return b->data;
}

/* ========================================================================
 * Cursor
 * ======================================================================== */

typedef struct cursor {
    gguf_file *f;
    uint64_t pos;
    char *err;
    size_t errlen;
} cursor;

__attribute__((format(printf, 2, 3)))
static int fail(cursor *c, const char *fmt, ...)
{
    if (c->err != NULL && c->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static uint64_t remaining(const cursor *c)
{
    return c->f->size - c->pos;
}

static int need(cursor *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return fail(c, "%s at offset %llu: needs %llu bytes, only %llu left (file size %llu)",
                    what, (unsigned long long)c->pos, (unsigned long long)n,
                    (unsigned long long)remaining(c), (unsigned long long)c->f->size);
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what) != 0)
        return -1;
    memcpy(v, c->f->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what) != 0)
        return -1;
    memcpy(v, c->f->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, gguf_str *s, const char *what)
{
    uint64_t start = c->pos;
    uint64_t len;
    if (rd_u64(c, &len, what) != 0)
        return -1;
    if (len > remaining(c))
        return fail(c, "%s at offset %llu: string length %llu past end of file (size %llu)",
                    what, (unsigned long long)start, (unsigned long long)len,
                    (unsigned long long)c->f->size);
    s->ptr = (const char *)c->f->base + c->pos;
    s->len = (size_t)len;
    c->pos += len;
    return 0;
}

/* ========================================================================
 * Metadata values
 * ======================================================================== */

static int parse_array(cursor *c, gguf_arr *a, unsigned depth, const gguf_str *key);

/* Reads the elements of one array whose type and count are already known. */
static int parse_array_body(cursor *c, gguf_arr *a, unsigned depth, const gguf_str *key)
{
    size_t esz = gguf_type_size(a->type);
    if (esz > 0) {
        uint64_t bytes;
        if (__builtin_mul_overflow(a->count, (uint64_t)esz, &bytes) || bytes > remaining(c))
            return fail(c, "key '%.*s': array of %llu %s at offset %llu past end of file (size %llu)",
                        (int)key->len, key->ptr, (unsigned long long)a->count,
                        gguf_type_name(a->type), (unsigned long long)c->pos,
                        (unsigned long long)c->f->size);
        a->data = c->f->base + c->pos;
        c->pos += bytes;
        return 0;
    }
    if (a->type == GGUF_TYPE_STRING) {
        /* Each string takes at least its 8-byte length. */
        if (a->count > remaining(c) / 8)
            return fail(c, "key '%.*s': array count %llu exceeds remaining %llu bytes",
                        (int)key->len, key->ptr, (unsigned long long)a->count,
                        (unsigned long long)remaining(c));
        gguf_str *strs = track_alloc(c->f, a->count ? a->count : 1, sizeof *strs);
        if (strs == NULL)
            return fail(c, "key '%.*s': out of memory for %llu strings",
                        (int)key->len, key->ptr, (unsigned long long)a->count);
        for (uint64_t i = 0; i < a->count; i++)
            if (rd_str(c, &strs[i], "array string") != 0)
                return -1;
        a->strs = strs;
        return 0;
    }
    /* GGUF_TYPE_ARRAY: each nested array takes at least type + count. */
    if (depth >= GGUF_MAX_DEPTH)
        return fail(c, "key '%.*s': arrays nested deeper than %d",
                    (int)key->len, key->ptr, GGUF_MAX_DEPTH);
    if (a->count > remaining(c) / 12)
        return fail(c, "key '%.*s': array count %llu exceeds remaining %llu bytes",
                    (int)key->len, key->ptr, (unsigned long long)a->count,
                    (unsigned long long)remaining(c));
    gguf_arr *arrs = track_alloc(c->f, a->count ? a->count : 1, sizeof *arrs);
    if (arrs == NULL)
        return fail(c, "key '%.*s': out of memory for %llu arrays",
                    (int)key->len, key->ptr, (unsigned long long)a->count);
    for (uint64_t i = 0; i < a->count; i++)
        if (parse_array(c, &arrs[i], depth + 1, key) != 0)
            return -1;
    a->arrs = arrs;
    return 0;
}

static int parse_array(cursor *c, gguf_arr *a, unsigned depth, const gguf_str *key)
{
    uint32_t type;
    uint64_t at = c->pos;
    memset(a, 0, sizeof *a);
    if (rd_u32(c, &type, "array element type") != 0)
        return -1;
    if (!valid_type(type))
        return fail(c, "key '%.*s': unknown array element type %u at offset %llu",
                    (int)key->len, key->ptr, type, (unsigned long long)at);
    a->type = (gguf_type)type;
    if (rd_u64(c, &a->count, "array count") != 0)
        return -1;
    return parse_array_body(c, a, depth, key);
}

static int parse_kv(cursor *c, gguf_kv *kv, uint64_t i)
{
    uint32_t type;
    uint64_t at;
    if (rd_str(c, &kv->key, "key") != 0)
        return -1;
    at = c->pos;
    if (rd_u32(c, &type, "value type") != 0)
        return -1;
    if (!valid_type(type))
        return fail(c, "key %llu '%.*s': unknown value type %u at offset %llu",
                    (unsigned long long)i, (int)kv->key.len, kv->key.ptr, type,
                    (unsigned long long)at);
    kv->type = (gguf_type)type;
    if (kv->type == GGUF_TYPE_STRING)
        return rd_str(c, &kv->str, "string value");
    if (kv->type == GGUF_TYPE_ARRAY)
        return parse_array(c, &kv->arr, 0, &kv->key);
    size_t sz = gguf_type_size(kv->type);
    if (need(c, sz, "scalar value") != 0)
        return -1;
    kv->raw = c->f->base + c->pos;
    c->pos += sz;
    return 0;
}

/* ========================================================================
 * Name index (FNV-1a, linear probing)
 * ======================================================================== */

static uint64_t fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t index_cap_for(uint64_t n)
{
    uint64_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    return cap;
}

static bool kv_key_eq(const gguf_kv *kv, const char *s, size_t n)
{
    return kv->key.len == n && memcmp(kv->key.ptr, s, n) == 0;
}

static bool tensor_name_eq(const gguf_tensor *t, const char *s, size_t n)
{
    return strlen(t->name) == n && memcmp(t->name, s, n) == 0;
}

/* Slot for name in the kv index: the matching entry or the empty slot. */
static uint64_t kv_slot(const gguf_file *f, const char *s, size_t n)
{
    uint64_t mask = f->kv_index_cap - 1;
    uint64_t h = fnv1a(s, n) & mask;
    while (f->kv_index[h] != 0 && !kv_key_eq(&f->kvs[f->kv_index[h] - 1], s, n))
        h = (h + 1) & mask;
    return h;
}

static uint64_t tensor_slot(const gguf_file *f, const char *s, size_t n)
{
    uint64_t mask = f->tensor_index_cap - 1;
    uint64_t h = fnv1a(s, n) & mask;
    while (f->tensor_index[h] != 0 &&
           !tensor_name_eq(&f->tensors[f->tensor_index[h] - 1], s, n))
        h = (h + 1) & mask;
    return h;
}

/* ========================================================================
 * Header, metadata, tensor table
 * ======================================================================== */

static int parse_header(cursor *c)
{
    uint32_t version;
    if (c->f->size < 4 || memcmp(c->f->base, "GGUF", 4) != 0)
        return fail(c, "bad magic: not a GGUF file");
    c->pos = 4;
    if (rd_u32(c, &version, "version") != 0)
        return -1;
    if (version != 2 && version != 3) {
        if ((version & 0xFFFF) == 0 && version != 0)
            return fail(c, "unsupported GGUF version %u (big-endian file?)",
                        __builtin_bswap32(version));
        return fail(c, "unsupported GGUF version %u (need 2 or 3)", version);
    }
    c->f->version = version;
    if (rd_u64(c, &c->f->n_tensors, "tensor count") != 0 ||
        rd_u64(c, &c->f->n_kv, "kv count") != 0)
        return -1;
    if (c->f->n_tensors > GGUF_MAX_TENSORS)
        return fail(c, "tensor count %llu exceeds limit %u",
                    (unsigned long long)c->f->n_tensors, GGUF_MAX_TENSORS);
    if (c->f->n_kv > GGUF_MAX_KV)
        return fail(c, "kv count %llu exceeds limit %u",
                    (unsigned long long)c->f->n_kv, GGUF_MAX_KV);
    /* A key/value takes >= 13 bytes and a tensor info >= 24: refuse counts
     * the file cannot hold before allocating for them. */
    if (c->f->n_kv > remaining(c) / 13)
        return fail(c, "kv count %llu exceeds remaining %llu bytes",
                    (unsigned long long)c->f->n_kv, (unsigned long long)remaining(c));
    if (c->f->n_tensors > remaining(c) / 24)
        return fail(c, "tensor count %llu exceeds remaining %llu bytes",
                    (unsigned long long)c->f->n_tensors, (unsigned long long)remaining(c));
    return 0;
}

static int parse_metadata(cursor *c)
{
    gguf_file *f = c->f;
    f->kvs = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kvs);
    f->kv_index_cap = index_cap_for(f->n_kv);
    f->kv_index = calloc(f->kv_index_cap, sizeof *f->kv_index);
    if (f->kvs == NULL || f->kv_index == NULL)
        return fail(c, "out of memory for %llu keys", (unsigned long long)f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kvs[i];
        if (parse_kv(c, kv, i) != 0)
            return -1;
        uint64_t slot = kv_slot(f, kv->key.ptr, kv->key.len);
        if (f->kv_index[slot] != 0)
            return fail(c, "duplicate key '%.*s'", (int)kv->key.len, kv->key.ptr);
        f->kv_index[slot] = (uint32_t)(i + 1);
    }
    return 0;
}

static int read_alignment(cursor *c)
{
    const gguf_kv *kv = gguf_find_kv(c->f, "general.alignment");
    c->f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (kv == NULL)
        return 0;
    if (kv->type != GGUF_TYPE_UINT32)
        return fail(c, "general.alignment has type %s, expected uint32",
                    gguf_type_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->raw, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(c, "general.alignment %u is not a power of two", a);
    c->f->alignment = a;
    return 0;
}

static int parse_tensor_info(cursor *c, gguf_tensor *t, uint64_t i)
{
    gguf_str name;
    uint32_t type;
    if (rd_str(c, &name, "tensor name") != 0)
        return -1;
    if (name.len > GGUF_MAX_NAME)
        return fail(c, "tensor %llu: name of %zu bytes exceeds %d",
                    (unsigned long long)i, name.len, GGUF_MAX_NAME);
    if (memchr(name.ptr, '\0', name.len) != NULL)
        return fail(c, "tensor %llu: name contains a NUL byte", (unsigned long long)i);
    memcpy(t->name, name.ptr, name.len);
    t->name[name.len] = '\0';
    if (rd_u32(c, &t->n_dims, "tensor n_dims") != 0)
        return -1;
    if (t->n_dims > GGUF_MAX_DIMS)
        return fail(c, "tensor '%s': n_dims %u > %d", t->name, t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(c, &t->dims[d], "tensor dim") != 0)
            return -1;
        if (t->dims[d] > INT64_MAX)
            return fail(c, "tensor '%s': dim %u = %llu out of range", t->name, d,
                        (unsigned long long)t->dims[d]);
    }
    if (rd_u32(c, &type, "tensor type") != 0 || rd_u64(c, &t->offset, "tensor offset") != 0)
        return -1;
    t->type = (gguf_ggml_type)type;
    return 0;
}

/* Shape, size and placement of one tensor, once data_offset is known. */
static int check_tensor(cursor *c, gguf_tensor *t)
{
    gguf_file *f = c->f;
    const ggml_info *gi = ggml_lookup((uint32_t)t->type);
    if (gi == NULL)
        return fail(c, "tensor '%s': unknown ggml type %u", t->name, (unsigned)t->type);
    if (t->dims[0] % gi->block_elems != 0)
        return fail(c, "tensor '%s': row length %llu not a multiple of %s block size %u",
                    t->name, (unsigned long long)t->dims[0], gi->name, gi->block_elems);
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        if (__builtin_mul_overflow(n, t->dims[d], &n) || n > INT64_MAX)
            return fail(c, "tensor '%s': element count overflows", t->name);
    t->n_elements = n;
    /* n is a multiple of block_elems because dims[0] is. */
    if (__builtin_mul_overflow(n / gi->block_elems, (uint64_t)gi->block_bytes, &t->nbytes))
        return fail(c, "tensor '%s': byte size overflows", t->name);
    if (t->offset % f->alignment != 0)
        return fail(c, "tensor '%s': offset %llu not a multiple of alignment %u", t->name,
                    (unsigned long long)t->offset, f->alignment);
    uint64_t start, end;
    if (__builtin_add_overflow(f->data_offset, t->offset, &start) ||
        __builtin_add_overflow(start, t->nbytes, &end))
        return fail(c, "tensor '%s': data offset %llu + %llu bytes overflows", t->name,
                    (unsigned long long)t->offset, (unsigned long long)t->nbytes);
    if (end > f->size)
        return fail(c, "tensor '%s': data [%llu, %llu) past end of file (size %llu)", t->name,
                    (unsigned long long)start, (unsigned long long)end,
                    (unsigned long long)f->size);
    t->data = f->base + start;
    return 0;
}

static int parse_tensors(cursor *c)
{
    gguf_file *f = c->f;
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->tensor_index_cap = index_cap_for(f->n_tensors);
    f->tensor_index = calloc(f->tensor_index_cap, sizeof *f->tensor_index);
    if (f->tensors == NULL || f->tensor_index == NULL)
        return fail(c, "out of memory for %llu tensors", (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (parse_tensor_info(c, t, i) != 0)
            return -1;
        size_t n = strlen(t->name);
        uint64_t slot = tensor_slot(f, t->name, n);
        if (f->tensor_index[slot] != 0)
            return fail(c, "duplicate tensor name '%s'", t->name);
        f->tensor_index[slot] = (uint32_t)(i + 1);
    }
    /* The data section starts at the next multiple of the alignment. */
    uint64_t a = f->alignment;
    if (__builtin_add_overflow(c->pos, a - 1, &f->data_offset))
        return fail(c, "data section offset overflows");
    f->data_offset -= f->data_offset % a;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (check_tensor(c, &f->tensors[i]) != 0)
            return -1;
    return 0;
}

static int parse(gguf_file *f, char *err, size_t errlen)
{
    cursor c = {.f = f, .pos = 0, .err = err, .errlen = errlen};
    if (parse_header(&c) != 0 || parse_metadata(&c) != 0 || read_alignment(&c) != 0 ||
        parse_tensors(&c) != 0)
        return -1;
    return 0;
}

/* ========================================================================
 * Open / close
 * ======================================================================== */

void gguf_close(gguf_file *f)
{
    if (f == NULL)
        return;
    while (f->blocks != NULL) {
        gguf_block *next = f->blocks->next;
        free(f->blocks);
        f->blocks = next;
    }
    free(f->kvs);
    free(f->kv_index);
    free(f->tensors);
    free(f->tensor_index);
    if (f->mapped)
        munmap((void *)f->base, (size_t)f->size);
    free(f);
}

static int open_common(gguf_file *f, gguf_file **out, char *err, size_t errlen)
{
    if (parse(f, err, errlen) != 0) {
        gguf_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int gguf_open_mem(const void *buf, size_t len, gguf_file **out, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *out = NULL;
    if (buf == NULL && len > 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "NULL buffer");
        return -1;
    }
    gguf_file *f = calloc(1, sizeof *f);
    if (f == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "out of memory");
        return -1;
    }
    f->base = buf;
    f->size = len;
    return open_common(f, out, err, errlen);
}

__attribute__((format(printf, 3, 4)))
static int open_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen)
{
    struct stat st;
    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return open_fail(err, errlen, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return open_fail(err, errlen, "%s: fstat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return open_fail(err, errlen, "%s: not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return open_fail(err, errlen, "%s: file of %lld bytes is too small for a GGUF header",
                         path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return open_fail(err, errlen, "%s: mmap: %s", path, strerror(map_errno));
    gguf_file *f = calloc(1, sizeof *f);
    if (f == NULL) {
        munmap(map, (size_t)st.st_size);
        return open_fail(err, errlen, "out of memory");
    }
    f->base = map;
    f->size = (uint64_t)st.st_size;
    f->mapped = true;
    if (open_common(f, out, err, errlen) != 0) {
        /* Prefix the path so the caller's log says which file. */
        if (err != NULL && errlen > 0) {
            char tmp[512];
            snprintf(tmp, sizeof tmp, "%s", err);
            snprintf(err, errlen, "%s: %s", path, tmp);
        }
        return -1;
    }
    return 0;
}

/* ========================================================================
 * Accessors
 * ======================================================================== */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_offset; }
uint64_t gguf_file_size(const gguf_file *f) { return f->size; }
uint64_t gguf_kv_count(const gguf_file *f) { return f->n_kv; }
uint64_t gguf_tensor_count(const gguf_file *f) { return f->n_tensors; }

const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_kv ? &f->kvs[i] : NULL;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    if (f->kv_index == NULL || key == NULL)
        return NULL;
    uint32_t idx = f->kv_index[kv_slot(f, key, strlen(key))];
    return idx ? &f->kvs[idx - 1] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (f->tensor_index == NULL || name == NULL)
        return NULL;
    uint32_t idx = f->tensor_index[tensor_slot(f, name, strlen(name))];
    return idx ? &f->tensors[idx - 1] : NULL;
}

/* --- scalar conversion, shared by kv and array getters ------------------- */

/* Reads an integer of type t at p as (negative?, magnitude bits). */
static int read_int(gguf_type t, const void *p, bool *neg, uint64_t *u)
{
    *neg = false;
    switch (t) {
    case GGUF_TYPE_UINT8: { uint8_t v; memcpy(&v, p, 1); *u = v; return GGUF_OK; }
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); *u = v; return GGUF_OK; }
    case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); *u = v; return GGUF_OK; }
    case GGUF_TYPE_UINT64: { memcpy(u, p, 8); return GGUF_OK; }
    case GGUF_TYPE_INT8: { int8_t v; memcpy(&v, p, 1); *neg = v < 0; *u = (uint64_t)(int64_t)v; return GGUF_OK; }
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); *neg = v < 0; *u = (uint64_t)(int64_t)v; return GGUF_OK; }
    case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); *neg = v < 0; *u = (uint64_t)(int64_t)v; return GGUF_OK; }
    case GGUF_TYPE_INT64: { int64_t v; memcpy(&v, p, 8); *neg = v < 0; *u = (uint64_t)v; return GGUF_OK; }
    default: return GGUF_ETYPE;
    }
}

static int to_u64(gguf_type t, const void *p, uint64_t *out)
{
    bool neg;
    uint64_t u;
    if (read_int(t, p, &neg, &u) != GGUF_OK || neg)
        return GGUF_ETYPE;
    *out = u;
    return GGUF_OK;
}

static int to_i64(gguf_type t, const void *p, int64_t *out)
{
    bool neg;
    uint64_t u;
    if (read_int(t, p, &neg, &u) != GGUF_OK || (!neg && u > INT64_MAX))
        return GGUF_ETYPE;
    *out = (int64_t)u;
    return GGUF_OK;
}

static int to_f64(gguf_type t, const void *p, double *out)
{
    if (t == GGUF_TYPE_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
        return GGUF_OK;
    }
    if (t == GGUF_TYPE_FLOAT64) {
        memcpy(out, p, 8);
        return GGUF_OK;
    }
    return GGUF_ETYPE;
}

int gguf_kv_u64(const gguf_kv *kv, uint64_t *out)
{
    return kv->raw ? to_u64(kv->type, kv->raw, out) : GGUF_ETYPE;
}

int gguf_kv_i64(const gguf_kv *kv, int64_t *out)
{
    return kv->raw ? to_i64(kv->type, kv->raw, out) : GGUF_ETYPE;
}

int gguf_kv_f64(const gguf_kv *kv, double *out)
{
    return kv->raw ? to_f64(kv->type, kv->raw, out) : GGUF_ETYPE;
}

int gguf_kv_bool(const gguf_kv *kv, bool *out)
{
    if (kv->type != GGUF_TYPE_BOOL)
        return GGUF_ETYPE;
    *out = *(const uint8_t *)kv->raw != 0;
    return GGUF_OK;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_u64(kv, out) : GGUF_ENOENT;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    uint64_t v;
    int rc = gguf_get_u64(f, key, &v);
    if (rc != GGUF_OK)
        return rc;
    if (v > UINT32_MAX)
        return GGUF_ETYPE;
    *out = (uint32_t)v;
    return GGUF_OK;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_i64(kv, out) : GGUF_ENOENT;
}

int gguf_get_f64(const gguf_file *f, const char *key, double *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_f64(kv, out) : GGUF_ENOENT;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    double v;
    int rc = gguf_get_f64(f, key, &v);
    if (rc == GGUF_OK)
        *out = (float)v;
    return rc;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? gguf_kv_bool(kv, out) : GGUF_ENOENT;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (kv == NULL)
        return GGUF_ENOENT;
    if (kv->type != GGUF_TYPE_STRING)
        return GGUF_ETYPE;
    *s = kv->str.ptr;
    *len = kv->str.len;
    return GGUF_OK;
}

int gguf_get_arr(const gguf_file *f, const char *key, const gguf_arr **out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (kv == NULL)
        return GGUF_ENOENT;
    if (kv->type != GGUF_TYPE_ARRAY)
        return GGUF_ETYPE;
    *out = &kv->arr;
    return GGUF_OK;
}

/* Address of fixed-size element i, or NULL (with *rc set) if out of range. */
static const void *arr_elem(const gguf_arr *a, uint64_t i, int *rc)
{
    size_t esz = gguf_type_size(a->type);
    if (i >= a->count) {
        *rc = GGUF_ENOENT;
        return NULL;
    }
    if (esz == 0) {
        *rc = GGUF_ETYPE;
        return NULL;
    }
    return (const uint8_t *)a->data + i * esz;
}

int gguf_arr_u64(const gguf_arr *a, uint64_t i, uint64_t *out)
{
    int rc = GGUF_ETYPE;
    const void *p = arr_elem(a, i, &rc);
    return p ? to_u64(a->type, p, out) : rc;
}

int gguf_arr_i64(const gguf_arr *a, uint64_t i, int64_t *out)
{
    int rc = GGUF_ETYPE;
    const void *p = arr_elem(a, i, &rc);
    return p ? to_i64(a->type, p, out) : rc;
}

int gguf_arr_f64(const gguf_arr *a, uint64_t i, double *out)
{
    int rc = GGUF_ETYPE;
    const void *p = arr_elem(a, i, &rc);
    return p ? to_f64(a->type, p, out) : rc;
}

int gguf_arr_f32(const gguf_arr *a, uint64_t i, float *out)
{
    double v;
    int rc = gguf_arr_f64(a, i, &v);
    if (rc == GGUF_OK)
        *out = (float)v;
    return rc;
}

int gguf_arr_str(const gguf_arr *a, uint64_t i, const char **s, size_t *len)
{
    if (i >= a->count)
        return GGUF_ENOENT;
    if (a->type != GGUF_TYPE_STRING)
        return GGUF_ETYPE;
    *s = a->strs[i].ptr;
    *len = a->strs[i].len;
    return GGUF_OK;
}
