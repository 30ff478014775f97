/*
 * gguf: read-only loader for GGUF v2/v3 model files (little-endian), as
 * written by llama.cpp's convert scripts. Parses the header, every metadata
 * key/value, the tensor table and the data section; it does not interpret
 * the model (no tokenizer, no forward pass).
 *
 * Input is untrusted. Every count, length, offset and size is checked against
 * the file size with overflow-safe arithmetic before it is used; a truncated
 * or malicious file is refused with a reason in `err`, never a crash. Limits:
 * at most GGUF_MAX_KV keys and GGUF_MAX_TENSORS tensors, n_dims <= 4, tensor
 * names <= GGUF_MAX_NAME bytes and unique, keys unique, array nesting <=
 * GGUF_MAX_DEPTH, every tensor's data [offset, offset + nbytes) aligned to
 * general.alignment (default 32) and inside the file, dims[0] a multiple of
 * the type's block size.
 *
 * Ownership: gguf_open() maps the file read-only (mmap, MAP_PRIVATE) and
 * gguf_open_mem() borrows the caller's buffer, which must outlive the handle.
 * Everything returned by the accessors (strings, array data, tensor structs,
 * tensor data) points into the mapping/buffer or into the handle, and stays
 * valid until gguf_close(). Strings (keys, string values) are NOT
 * NUL-terminated: they come as pointer + length. Tensor names are the one
 * exception: gguf_tensor.name is a NUL-terminated copy.
 *
 * Threading: a gguf_file is immutable after open; any number of threads may
 * call the accessors concurrently. gguf_close() must not race with them.
 *
 * Errors: gguf_open*() return 0 or -1 and write a NUL-terminated reason to err
 * (if errlen > 0), e.g. "tensor 'blk.0.attn_q.weight': data [64, 4160) past
 * end of file (size 1024)". Getters return GGUF_OK, GGUF_ENOENT (no such key)
 * or GGUF_ETYPE (the value's type does not convert losslessly).
 *
 * Host: little-endian only (checked at compile time); values in the mapping
 * may be unaligned, so raw array data must be read with memcpy (or the
 * gguf_arr_* accessors).
 */
#ifndef OUTPOST_GGUF_H
#define OUTPOST_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64
#define GGUF_MAX_DEPTH 8
#define GGUF_DEFAULT_ALIGNMENT 32

#define GGUF_OK 0
#define GGUF_ENOENT (-1)
#define GGUF_ETYPE (-2)

/* Metadata value types (GGUF spec ids). */
typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
} gguf_type;

/* Tensor element types (ggml ids). Only these are accepted. */
typedef enum gguf_ggml_type {
    GGUF_GGML_F32 = 0,
    GGUF_GGML_F16 = 1,
    GGUF_GGML_Q4_0 = 2,
    GGUF_GGML_Q4_1 = 3,
    GGUF_GGML_Q5_0 = 6,
    GGUF_GGML_Q5_1 = 7,
    GGUF_GGML_Q8_0 = 8,
    GGUF_GGML_Q8_1 = 9,
    GGUF_GGML_Q2_K = 10,
    GGUF_GGML_Q3_K = 11,
    GGUF_GGML_Q4_K = 12,
    GGUF_GGML_Q5_K = 13,
    GGUF_GGML_Q6_K = 14,
    GGUF_GGML_Q8_K = 15,
    GGUF_GGML_I8 = 24,
    GGUF_GGML_I16 = 25,
    GGUF_GGML_I32 = 26,
    GGUF_GGML_I64 = 27,
    GGUF_GGML_F64 = 28,
    GGUF_GGML_BF16 = 30,
} gguf_ggml_type;

/* A string inside the mapping; not NUL-terminated. */
typedef struct gguf_str {
    const char *ptr;
    size_t len;
} gguf_str;

/* An array value. Exactly one of data/strs/arrs is meaningful, by type. */
typedef struct gguf_arr {
    gguf_type type;             /* element type */
    uint64_t count;             /* number of elements */
    const void *data;           /* fixed-size types: count * gguf_type_size(type)
                                   little-endian bytes in the mapping, maybe
                                   unaligned (memcpy them) */
    const gguf_str *strs;       /* GGUF_TYPE_STRING: count strings */
    const struct gguf_arr *arrs; /* GGUF_TYPE_ARRAY: count nested arrays */
} gguf_arr;

/* One metadata key/value. Scalars are read with the gguf_kv_* getters. */
typedef struct gguf_kv {
    gguf_str key;
    gguf_type type;
    const void *raw;            /* fixed-size scalar: its bytes in the mapping */
    gguf_str str;               /* GGUF_TYPE_STRING */
    gguf_arr arr;               /* GGUF_TYPE_ARRAY */
} gguf_kv;

typedef struct gguf_tensor {
    char name[GGUF_MAX_NAME + 1]; /* NUL-terminated copy */
    gguf_ggml_type type;
    uint32_t n_dims;            /* 0..4 */
    uint64_t dims[GGUF_MAX_DIMS]; /* dims[0] = row length (fastest varying);
                                     unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset;            /* from the start of the data section */
    uint64_t nbytes;
    const void *data;           /* in the mapping; offset and data section
                                   are multiples of the alignment, so with
                                   gguf_open (page-aligned map) data is
                                   aligned in memory too. Tensors may overlap:
                                   not checked. */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* --- open / close ------------------------------------------------------- */

/* Maps and parses path. On success *out owns the mapping. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* Parses buf[0, len), which the caller keeps alive and unchanged until
 * gguf_close(). Tensor data alignment is checked relative to the data
 * section, so buf itself need not be aligned for parsing to succeed. */
int gguf_open_mem(const void *buf, size_t len, gguf_file **out, char *err, size_t errlen);
/* Unmaps (if gguf_open) and frees. NULL is accepted. */
void gguf_close(gguf_file *f);

/* --- file facts ---------------------------------------------------------- */

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);
/* Byte offset of the data section from the start of the file. */
uint64_t gguf_data_offset(const gguf_file *f);
uint64_t gguf_file_size(const gguf_file *f);

/* --- metadata ------------------------------------------------------------ */

uint64_t gguf_kv_count(const gguf_file *f);
/* The i-th key/value in file order, NULL if i is out of range. */
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i);
/* NULL if key is absent. key is a C string. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);

/* Getters by key. Integers convert from any integer type when the value fits
 * (a uint8 serves gguf_get_u64, an int32 of -1 does not); f32 accepts float32
 * and float64; bool and str need exactly that type. *out is untouched on
 * error. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_f64(const gguf_file *f, const char *key, double *out);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out);
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len);
/* *out points into the handle. */
int gguf_get_arr(const gguf_file *f, const char *key, const gguf_arr **out);

/* The same conversions on a gguf_kv (e.g. while iterating). */
int gguf_kv_u64(const gguf_kv *kv, uint64_t *out);
int gguf_kv_i64(const gguf_kv *kv, int64_t *out);
int gguf_kv_f64(const gguf_kv *kv, double *out);
int gguf_kv_bool(const gguf_kv *kv, bool *out);

/* Array element i. GGUF_ENOENT if i >= count, GGUF_ETYPE on type mismatch
 * (integers convert as above; f64 accepts float32/float64). */
int gguf_arr_i64(const gguf_arr *a, uint64_t i, int64_t *out);
int gguf_arr_u64(const gguf_arr *a, uint64_t i, uint64_t *out);
int gguf_arr_f32(const gguf_arr *a, uint64_t i, float *out);
int gguf_arr_f64(const gguf_arr *a, uint64_t i, double *out);
int gguf_arr_str(const gguf_arr *a, uint64_t i, const char **s, size_t *len);

/* --- tensors ------------------------------------------------------------- */

uint64_t gguf_tensor_count(const gguf_file *f);
/* The i-th tensor in file order, NULL if out of range. */
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);
/* NULL if absent. */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* --- type tables --------------------------------------------------------- */

/* Bytes of one value of a fixed-size metadata type; 0 for string/array/unknown. */
size_t gguf_type_size(gguf_type t);
const char *gguf_type_name(gguf_type t);   /* "?" if unknown */
/* Elements per block and bytes per block; false for an unknown type id. */
bool gguf_ggml_type_block(uint32_t t, uint32_t *block_elems, uint32_t *block_bytes);
const char *gguf_ggml_type_name(uint32_t t); /* "?" if unknown */

#endif
