/*
 * st: safetensors loader. See st.h for the contract.
 *
 * The header is parsed by jansson (duplicate keys refused) out of the
 * length-checked byte range; every number taken from it is checked to be a
 * non-negative integer, and every derived size is computed with
 * __builtin_*_overflow before it is compared with the file. The first
 * failure writes err and unwinds; nothing is partially returned.
 */
#include "st.h"
#include "nn/nn_err.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "st.c reads little-endian values in place; big-endian hosts are not supported"
#endif

struct st_file {
    const uint8_t *base;
    uint64_t size;
    uint64_t data_offset;
    void *map;                  /* st_open: the mapping to unmap */
    size_t map_len;
    st_tensor *tensors;         /* sorted by name */
    size_t n_tensors;
    char **meta;                /* key, value, key, value, ... */
    size_t n_meta;
};

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},       [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},     [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},     [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_F64] = {"F64", 8},     [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].name : "?";
}

/* A name for messages: at most 64 bytes of it, quoted by the caller. */
#define NAME_FMT "%.64s%s"
#define NAME_ARG(s) (s), (strlen(s) > 64 ? "..." : "")

static void free_file(st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < 2 * f->n_meta; i++)
        free(f->meta[i]);
    free(f->meta);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f);
}

void st_close(st_file *f)
{
    free_file(f);
}

/* A JSON integer in [0, max]. */
static bool get_uint(const json_t *v, uint64_t max, uint64_t *out)
{
    if (!json_is_integer(v))
        return false;
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i > max)
        return false;
    *out = (uint64_t)i;
    return true;
}

static int parse_tensor(st_file *f, const char *name, json_t *v, st_tensor *t, char *err,
                        size_t errlen)
{
    uint64_t data_len = f->size - f->data_offset;
    if (!json_is_object(v)) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': entry is not an object", NAME_ARG(name));
        return -1;
    }
    json_t *dtype = json_object_get(v, "dtype");
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!dtype || !shape || !offs || json_object_size(v) != 3) {
        nn_errf(err, errlen,
               "tensor '" NAME_FMT "': entry must have exactly 'dtype', 'shape' and "
               "'data_offsets'",
               NAME_ARG(name));
        return -1;
    }
    if (!json_is_string(dtype)) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': dtype is not a string", NAME_ARG(name));
        return -1;
    }
    const char *ds = json_string_value(dtype);
    int dt = -1;
    for (int k = 0; k < ST_DTYPE_COUNT; k++) {
        if (strcmp(ds, dtypes[k].name) == 0)
            dt = k;
    }
    if (dt < 0) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': unknown dtype '%.32s'", NAME_ARG(name), ds);
        return -1;
    }
    t->dtype = (st_dtype)dt;
    if (!json_is_array(shape) || json_array_size(shape) > ST_MAX_DIMS) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': shape must be an array of at most %d integers",
               NAME_ARG(name), ST_MAX_DIMS);
        return -1;
    }
    t->n_dims = (int)json_array_size(shape);
    uint64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) {
        uint64_t dim;
        if (!get_uint(json_array_get(shape, (size_t)d), INT64_MAX, &dim)) {
            nn_errf(err, errlen, "tensor '" NAME_FMT "': shape[%d] is not a non-negative integer",
                   NAME_ARG(name), d);
            return -1;
        }
        t->shape[d] = (int64_t)dim;
        if (__builtin_mul_overflow(n, dim, &n)) {
            nn_errf(err, errlen, "tensor '" NAME_FMT "': element count overflows", NAME_ARG(name));
            return -1;
        }
    }
    t->n_elements = n;
    if (__builtin_mul_overflow(n, (uint64_t)dtypes[dt].size, &t->nbytes)) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': byte size overflows", NAME_ARG(name));
        return -1;
    }
    uint64_t begin, end;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !get_uint(json_array_get(offs, 0), INT64_MAX, &begin) ||
        !get_uint(json_array_get(offs, 1), INT64_MAX, &end)) {
        nn_errf(err, errlen,
               "tensor '" NAME_FMT "': data_offsets must be two non-negative integers",
               NAME_ARG(name));
        return -1;
    }
    if (begin > end) {
        nn_errf(err, errlen, "tensor '" NAME_FMT "': data_offsets [%llu, %llu) are reversed",
               NAME_ARG(name), (unsigned long long)begin, (unsigned long long)end);
        return -1;
    }
    if (end > data_len) {
        nn_errf(err, errlen,
               "tensor '" NAME_FMT "': data_offsets [%llu, %llu) past the end of the data "
               "section (%llu bytes)",
               NAME_ARG(name), (unsigned long long)begin, (unsigned long long)end,
               (unsigned long long)data_len);
        return -1;
    }
    if (end - begin != t->nbytes) {
        nn_errf(err, errlen,
               "tensor '" NAME_FMT "': data_offsets span %llu bytes but %s shape needs %llu",
               NAME_ARG(name), (unsigned long long)(end - begin), dtypes[dt].name,
               (unsigned long long)t->nbytes);
        return -1;
    }
    t->offset = begin;
    t->data = f->base + f->data_offset + begin;
    return 0;
}

static int parse_metadata(st_file *f, json_t *meta, char *err, size_t errlen)
{
    if (!json_is_object(meta)) {
        nn_errf(err, errlen, "__metadata__ is not an object");
        return -1;
    }
    size_t n = json_object_size(meta);
    f->meta = calloc(n ? 2 * n : 1, sizeof(char *));
    if (!f->meta) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v)) {
            nn_errf(err, errlen, "__metadata__ value '%.64s' is not a string", k);
            return -1;
        }
        char *ks = strdup(k), *vs = strdup(json_string_value(v));
        f->meta[2 * f->n_meta] = ks;
        f->meta[2 * f->n_meta + 1] = vs;
        f->n_meta++;
        if (!ks || !vs) {
            nn_errf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int parse(st_file *f, char *err, size_t errlen)
{
    if (f->size < 8) {
        nn_errf(err, errlen, "file too short for a safetensors header (%llu bytes)",
               (unsigned long long)f->size);
        return -1;
    }
    uint64_t n;
    memcpy(&n, f->base, 8);
    if (n > ST_MAX_HEADER) {
        nn_errf(err, errlen, "header length %llu exceeds the limit of %u bytes",
               (unsigned long long)n, ST_MAX_HEADER);
        return -1;
    }
    if (n > f->size - 8) {
        nn_errf(err, errlen, "header length %llu past the end of the file (%llu bytes)",
               (unsigned long long)n, (unsigned long long)f->size);
        return -1;
    }
    if (n < 2 || f->base[8] != '{') {
        nn_errf(err, errlen, "header is not a JSON object");
        return -1;
    }
    f->data_offset = 8 + n;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        nn_errf(err, errlen, "header is not valid JSON: %s at byte %d", jerr.text, jerr.position);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root)) {
        nn_errf(err, errlen, "header is not a JSON object");
        goto out;
    }
    size_t count = json_object_size(root);
    if (count > ST_MAX_TENSORS + 1) {
        nn_errf(err, errlen, "too many tensors (%zu, at most %u)", count, ST_MAX_TENSORS);
        goto out;
    }
    f->tensors = calloc(count ? count : 1, sizeof(st_tensor));
    if (!f->tensors) {
        nn_errf(err, errlen, "out of memory");
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (parse_metadata(f, v, err, errlen) != 0)
                goto out;
            continue;
        }
        size_t klen = strlen(key);
        if (klen == 0 || klen > ST_MAX_NAME) {
            nn_errf(err, errlen, "tensor name of %zu bytes (must be 1..%d)", klen, ST_MAX_NAME);
            goto out;
        }
        if (f->n_tensors >= ST_MAX_TENSORS) {
            nn_errf(err, errlen, "too many tensors (at most %u)", ST_MAX_TENSORS);
            goto out;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        if (parse_tensor(f, key, v, t, err, errlen) != 0)
            goto out;
        t->name = strdup(key);
        if (!t->name) {
            nn_errf(err, errlen, "out of memory");
            goto out;
        }
        f->n_tensors++;
    }
    /* Names cannot repeat (JSON_REJECT_DUPLICATES), so the order is total. */
    qsort(f->tensors, f->n_tensors, sizeof(st_tensor), cmp_tensor);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int st_open_mem(const void *buf, size_t len, st_file **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!buf && len) {
        nn_errf(err, errlen, "no buffer");
        return -1;
    }
    st_file *f = calloc(1, sizeof(*f));
    if (!f) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    f->base = buf;
    f->size = len;
    if (parse(f, err, errlen) != 0) {
        free_file(f);
        return -1;
    }
    *out = f;
    return 0;
}

int st_open(const char *path, st_file **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        nn_errf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    struct stat stb;
    if (fstat(fd, &stb) != 0 || !S_ISREG(stb.st_mode)) {
        nn_errf(err, errlen, "'%s' is not a regular file", path);
        close(fd);
        return -1;
    }
    if (stb.st_size < 8) {
        nn_errf(err, errlen, "file too short for a safetensors header (%lld bytes)",
               (long long)stb.st_size);
        close(fd);
        return -1;
    }
    size_t len = (size_t)stb.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);
    if (map == MAP_FAILED) {
        nn_errf(err, errlen, "cannot map '%s': %s", path, strerror(saved));
        return -1;
    }
    st_file *f = calloc(1, sizeof(*f));
    if (!f) {
        munmap(map, len);
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    f->base = map;
    f->size = len;
    f->map = map;
    f->map_len = len;
    if (parse(f, err, errlen) != 0) {
        free_file(f);
        return -1;
    }
    *out = f;
    return 0;
}

size_t st_tensor_count(const st_file *f)
{
    return f->n_tensors;
}

const st_tensor *st_tensor_at(const st_file *f, size_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n_tensors, sizeof(st_tensor), cmp_tensor);
}

const char *st_metadata(const st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++) {
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    }
    return NULL;
}

uint64_t st_data_offset(const st_file *f)
{
    return f->data_offset;
}

uint64_t st_file_size(const st_file *f)
{
    return f->size;
}
