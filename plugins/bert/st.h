/*
 * st: read-only loader for safetensors files (the format of Hugging Face's
 * `safetensors` library): an 8-byte little-endian header length N, N bytes
 * of a JSON object (UTF-8, may end in spaces), then the data section.
 *
 *   { "__metadata__": {"format": "pt"},            optional, string values
 *     "name": {"dtype": "F32", "shape": [384, 384],
 *              "data_offsets": [begin, end]}, ... } offsets relative to the
 *                                                   data section, end exclusive
 *
 * Input is untrusted. Refused with a reason: a file shorter than 8 bytes, a
 * header length past the end of the file or above ST_MAX_HEADER, a header
 * that is not a JSON object (or has duplicate keys), a tensor entry that is
 * not an object of exactly dtype/shape/data_offsets, an unknown dtype, a
 * shape that is not an array of at most ST_MAX_DIMS non-negative integers,
 * an element count or byte size that overflows 64 bits, data_offsets that
 * are not two integers begin <= end inside the data section, end - begin
 * different from elements * dtype size, more than ST_MAX_TENSORS tensors,
 * names longer than ST_MAX_NAME bytes, and __metadata__ that is not an
 * object of strings. Tensors may overlap or leave gaps (not checked: it
 * cannot make a reader go out of bounds).
 *
 * Ownership: st_open() maps the file read-only (MAP_PRIVATE); st_open_mem()
 * borrows the caller's buffer, which must outlive the handle. Tensor data
 * points into the mapping/buffer and may be unaligned (the data section
 * starts at 8 + N): check alignment before reading it as floats, or copy.
 * Names and metadata strings are NUL-terminated copies owned by the handle.
 * Everything stays valid until st_close().
 *
 * Threading: a st_file is immutable after open; any thread may read it.
 *
 * Errors: st_open*() return 0, or -1 with a NUL-terminated reason in err
 * (when errlen > 0), e.g. "tensor 'a.weight': data_offsets [0, 4096) past
 * the end of the data section (1024 bytes)".
 *
 * Host: little-endian only (checked at compile time).
 */
#ifndef OUTPOST_ST_H
#define OUTPOST_ST_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_HEADER 100000000u /* bytes; the reference implementation's limit */
#define ST_MAX_TENSORS (1u << 20)
#define ST_MAX_DIMS 8
#define ST_MAX_NAME 1024

typedef enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    const char *name;           /* NUL-terminated, owned by the handle */
    st_dtype dtype;
    int n_dims;                 /* 0 (a scalar) .. ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS]; /* outermost first, as in PyTorch; unused = 0 */
    uint64_t n_elements;        /* product of shape (1 for a scalar) */
    uint64_t offset;            /* from the start of the data section */
    uint64_t nbytes;            /* n_elements * st_dtype_size(dtype) */
    const void *data;           /* in the mapping; maybe unaligned */
} st_tensor;

typedef struct st_file st_file;

int st_open(const char *path, st_file **out, char *err, size_t errlen);
int st_open_mem(const void *buf, size_t len, st_file **out, char *err, size_t errlen);
void st_close(st_file *f); /* NULL is a no-op */

size_t st_tensor_count(const st_file *f);
/* Tensors sorted by name; NULL past the end. */
const st_tensor *st_tensor_at(const st_file *f, size_t i);
/* NULL if absent (binary search). */
const st_tensor *st_find(const st_file *f, const char *name);
/* The __metadata__ string for key, NULL if absent. */
const char *st_metadata(const st_file *f, const char *key);
uint64_t st_data_offset(const st_file *f); /* 8 + header length */
uint64_t st_file_size(const st_file *f);

/* Bytes per element (1 for BOOL and the F8 types); 0 if out of range. */
size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t); /* "F32"; "?" if out of range */

#endif
