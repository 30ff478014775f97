/*
 * vx_meta: metadata indexes of one vector index, as Vectorize has them
 * (issue 5). A metadata index is created per property name with a type
 * (string, number, boolean); it lets a query's filter be turned into an
 * allow-bitmap of slots without reading every vector's metadata.
 *
 * Model: the vector index numbers its vectors by slot 0..nslots-1. The caller
 * hands each slot's metadata to vx_meta_set (insert or update) and calls
 * vx_meta_clear when the vector is deleted. vx_meta does not keep the
 * documents: it keeps, per metadata index, the slot's value of that property
 * when it has the index's type, in
 *   number:  a per-slot double and an array of (value, slot) sorted by value
 *            (equality and ranges by binary search);
 *   string:  a per-slot copy of the first VX_META_STR_PREFIX (64) bytes (cut
 *            back to a UTF-8 character boundary) and a
 *            sorted array of (prefix, slot) (equality, $in and ranges by
 *            binary search, bytewise order);
 *   boolean: two bitmaps (true, false).
 * Updates insert/remove in the sorted arrays with memmove: O(n) per set, fine
 * for the sizes of this groundwork; bulk rebuilds are a later concern.
 *
 * Strings are indexed by their first 64 bytes, as Vectorize does ("truncated
 * on UTF-8 character boundaries to the longest well-formed UTF-8 substring
 * within that limit"): an indexed
 * string clause compares the 64-byte prefixes of stored values and operands
 * (so two strings that differ only after byte 64 are equal to the index).
 * vx_meta_eval reports VX_META_PREFIX when that can matter (an answered
 * string clause whose operand, or an index holding a value, is longer than
 * 64 bytes); vx_filter_match compares whole strings.
 *
 * Evaluation: the filter is an AND of clauses (vx_filter.h). Each clause
 * whose key names a metadata index (exact property name, dotted for nested)
 * and whose operands all have the index's type is answered from the index,
 * with vx_filter's semantics ($ne/$nin are complements of $eq/$in within the
 * set slots). A clause the index cannot answer (no index on the key, an
 * operand of another type or null, or an index created while slots were
 * already set and not yet all set again, unless the owner backfilled it
 * with vx_meta_backfill from the documents it keeps) is skipped and VX_META_POSTFILTER is
 * reported: the bitmap is then a superset and the caller must keep only the
 * slots for which vx_filter_match(filter, metadata) holds. Without
 * POSTFILTER (and PREFIX) the bitmap is exactly the set slots that match.
 *
 * Ownership: vx_meta_new returns a heap object freed by vx_meta_free; set
 * copies what it keeps from the metadata (the json stays the caller's).
 * Threading: one writer, many readers: set/clear/add/drop take a write lock,
 * eval and memory a read lock (pthread rwlock), so evals run concurrently
 * with each other and serialize with writes. Errors: functions returning int
 * give 0 or -1 with a message in err (when given); set/clear/eval fail only
 * on a slot or buffer out of range or out of memory.
 */
#ifndef VX_META_H
#define VX_META_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vector/vx_filter.h"

#define VX_META_MAX_INDEXES 10 /* Vectorize's limit per index */
#define VX_META_STR_PREFIX 64

typedef enum vx_meta_type {
    VX_META_STRING = 0,
    VX_META_NUMBER = 1,
    VX_META_BOOLEAN = 2,
} vx_meta_type;

/* Flags out of vx_meta_eval. */
#define VX_META_POSTFILTER 1u /* some clause was not answered: post-filter */
#define VX_META_PREFIX 2u     /* a string clause compared 64-byte prefixes */

typedef struct vx_meta vx_meta;

/* "string", "number", "boolean" <-> vx_meta_type; -1 if unknown. */
int vx_meta_type_parse(const char *name);
const char *vx_meta_type_name(vx_meta_type t);

/* A metadata index set for slots 0..nslots-1 (nslots <= UINT32_MAX). NULL on
 * out of memory. */
vx_meta *vx_meta_new(size_t nslots);
void vx_meta_free(vx_meta *m);
size_t vx_meta_nslots(const vx_meta *m);

/* Creates a metadata index on property (the rules of filter keys; at most
 * VX_META_MAX_INDEXES; one per property name). Slots already set are not
 * indexed (see above). */
int vx_meta_add_index(vx_meta *m, const char *property, vx_meta_type type, char *err,
                      size_t errlen);
int vx_meta_drop_index(vx_meta *m, const char *property, char *err, size_t errlen);
size_t vx_meta_nindexes(vx_meta *m);

/* Sets (or replaces) a slot's metadata; metadata NULL or a non-object means
 * "no metadata" (the slot is set, with no property). -1 if slot >= nslots or
 * out of memory (the slot is then cleared). */
int vx_meta_set(vx_meta *m, size_t slot, const json_t *metadata);
/* Forgets a slot (a no-op when not set). -1 if slot >= nslots. */
int vx_meta_clear(vx_meta *m, size_t slot);

/* Writes the allow-bitmap of the filter (NULL: no filter, every set slot)
 * into bits (bit s of word s/64 = slot
 * s; nwords >= (nslots + 63) / 64, the words past nslots are zeroed), the
 * number of set bits into *count and VX_META_* flags into *flags. -1 if
 * nwords is too small or out of memory (a scratch bitmap is allocated when
 * the filter has more than one answered clause). */
int vx_meta_eval(vx_meta *m, const vx_filter *f, uint64_t *bits, size_t nwords, size_t *count,
                 unsigned *flags);

/* Grows the slot range to nslots (>= the current one; smaller is a no-op):
 * the owner's slots grow as vectors are added. Takes the write lock, so it
 * never races with an eval. -1 on out of memory (nothing changed) or
 * nslots > UINT32_MAX. */
int vx_meta_grow(vx_meta *m, size_t nslots);

/* Backfills the metadata index on property from the caller's documents:
 * every slot set before the index existed ("stale") is indexed from
 * doc(ctx, slot) (NULL = no metadata), in one pass plus one sort
 * (O(n log n), not a memmove per slot), after which the index answers its
 * clauses exactly. Holds the write lock for the pass. -1 (with err) if
 * there is no such index or out of memory (the index then stays stale,
 * which is still exact through POSTFILTER). */
int vx_meta_backfill(vx_meta *m, const char *property,
                     const json_t *(*doc)(void *ctx, size_t slot), void *ctx, char *err,
                     size_t errlen);

/* Bytes held by the metadata indexes (arrays by capacity, string copies). */
size_t vx_meta_memory(vx_meta *m);

#endif
