/*
 * vx_hnsw: the graph ANN index core of Outpost's vector indexes (road step 4):
 * a Hierarchical Navigable Small World graph (Malkov & Yashunin) over
 * vectors of one fixed dimension and metric (vx_dist.h).
 *
 * Model
 *   Vectors live in *slots* 0..n-1, handed out in insertion order by
 *   vx_hnsw_insert; the caller keeps its own id <-> slot map. Slots are never
 *   reused: an update is a delete of the old slot plus an insert to a new
 *   one. Storage is columnar in growable arrays (no per-node malloc for
 *   vectors): float32 rows (exact re-ranking, persistence) and int8 codes
 *   with one scale and the float squared norm per row (graph traversal).
 *   Cosine indexes keep each vector as given (returned as is by
 *   vx_hnsw_vector) with its inverse norm, quantize the normalized vector,
 *   and normalize each query; exact cosine distances are -dot(q, row)/|row|.
 *
 *   Graph: each node draws a level floor(-ln(U) * mL), mL = 1/ln(M); it has
 *   up to 2M neighbours at layer 0 and M above. Neighbours are chosen with
 *   the paper's diverse-neighbour heuristic (a candidate is kept only if it
 *   is closer to the new node than to every neighbour already kept); links
 *   are bidirectional, and a full neighbour list is re-pruned with the same
 *   heuristic. All graph distances (construction and traversal) use the int8
 *   codes: dot ~ s_a * s_b * dot_i8(a, b), and for euclidean
 *   |a|^2 + |b|^2 - 2 dot with the exact float norms.
 *
 * Search
 *   vx_hnsw_search: greedy descent through the upper layers, then a beam of
 *   width max(ef, k * rerank_factor) at layer 0 scored with int8 codes (the
 *   query is quantized once); every candidate of the beam is re-ranked with
 *   exact float32 distances and the best k are returned as (slot, internal
 *   distance), closest first (vx_score turns a distance into the client
 *   score). An index whose live count is at most the beam width is searched
 *   exactly by brute force (so k >= live count returns every live vector).
 *
 * Filters
 *   An optional allow-bitmap over slots (bit s of allow[s / 64]; slots at or
 *   past nbits are not allowed) with its count of set bits. When fewer than
 *   max(k * filter_brute_per_k, filter_brute_fraction * live) slots are
 *   allowed, the allowed slots are scanned exactly (brute force). Otherwise
 *   the graph is traversed through every node but only allowed, live nodes
 *   enter the result beam, whose width is raised by live / allowed, bounded
 *   by max(ef, filter_ef_max).
 *
 * Deletes
 *   vx_hnsw_delete marks a tombstone: the node still routes traversals but
 *   is never returned nor chosen as a new neighbour. vx_hnsw_repair removes
 *   tombstones from every live node's lists, reconnecting each affected node
 *   to the best (heuristic) of its live neighbours and its deleted
 *   neighbours' live neighbours, and moves the entry point off a deleted
 *   node; repaired tombstones are unreachable but keep their slots (and
 *   memory). Once vx_hnsw_needs_compact says the tombstones exceed
 *   compact_fraction of the slots, the caller should rebuild a fresh index
 *   from the live vectors (vx_hnsw_vector) and remap its ids.
 *
 * Threading
 *   One writer at a time: insert, delete, repair and save serialize on an
 *   internal writer mutex. Searches run in parallel with each other and
 *   with the writer. Choice: one global rwlock (writer-preferring) taken
 *   shared by a search for its whole run and exclusively by the writer only
 *   briefly: the writer does its graph search and neighbour selection
 *   without the rwlock (it is the only thread that modifies the structure,
 *   so its unlocked reads race with nothing but other reads), then takes it
 *   exclusively to grow arrays and publish the new node's links, its
 *   neighbours' updated lists, the slot count and the entry point at once.
 *   Readers therefore always see a consistent graph. The cost: a publish
 *   waits for the searches in flight (one search, tens of microseconds),
 *   and searches arriving meanwhile wait for the publish. Scratch buffers
 *   (visited tags, heaps) come from a per-index pool, so searches do not
 *   allocate once warm. vx_hnsw_free must not race with anything.
 *
 * Errors
 *   Functions return 0 or a negative VX_HNSW_E* code; on error the index is
 *   unchanged. Non-finite vector values are refused (EINVAL).
 *
 * Persistence
 *   vx_hnsw_save writes the whole structure: a header (magic "VXHNSW01",
 *   version, dim, metric, parameters, counts, entry point), then per slot
 *   its level, tombstone flag, float row and neighbour lists, then an
 *   FNV-1a 64 checksum of every byte before it. Little-endian hosts only
 *   (the format is native). vx_hnsw_load refuses any corrupt or truncated
 *   file with a static reason string (never crashes: every level, count and
 *   neighbour id is bounds-checked, memory grows only as bytes are read).
 *   Int8 codes are recomputed on load.
 */
#ifndef VX_HNSW_H
#define VX_HNSW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vector/vx_dist.h"

enum {
    VX_HNSW_OK = 0,
    VX_HNSW_EINVAL = -1,   /* bad argument (dim, slot, non-finite value) */
    VX_HNSW_ENOMEM = -2,
    VX_HNSW_EIO = -3,      /* write failed */
    VX_HNSW_ECORRUPT = -4, /* load: bad or truncated file */
    VX_HNSW_EFULL = -5,    /* 2^31 - 1 slots used */
};

#define VX_HNSW_MAX_DIM 65536u
#define VX_HNSW_MAX_LEVEL 24u

typedef struct vx_hnsw_params {
    uint32_t M;                   /* links per node above layer 0 (2M at 0); 16; 2..128 */
    uint32_t ef_construction;     /* beam width while inserting; 200 */
    uint32_t ef_search;           /* default beam width of a search; 64 */
    uint32_t rerank_factor;       /* beam >= k * this, all re-ranked in f32; 4 */
    uint32_t filter_brute_per_k;  /* brute force below k * this allowed slots; 50 */
    double filter_brute_fraction; /* ... or below this fraction of live slots; 0.02 */
    uint32_t filter_ef_max;       /* bound of the raised filtered beam; 2000 */
    double compact_fraction;      /* vx_hnsw_needs_compact threshold; 0.10 */
    uint64_t seed;                /* level draws; 0x5eed */
} vx_hnsw_params;

typedef struct vx_hnsw vx_hnsw;

typedef struct vx_hnsw_hit {
    uint32_t slot;
    float distance; /* internal distance (vx_dist.h): smaller is closer */
} vx_hnsw_hit;

typedef struct vx_hnsw_filter {
    const uint64_t *allow; /* bit s set = slot s allowed; borrowed for the call */
    uint32_t nbits;        /* bits in allow; slots >= nbits are not allowed */
    uint32_t n_allowed;    /* number of set bits (drives the strategy) */
} vx_hnsw_filter;

void vx_hnsw_params_default(vx_hnsw_params *p);

/* A new empty index; p NULL = defaults (zero fields of p also take their
 * defaults). The caller owns *out (vx_hnsw_free). */
int vx_hnsw_create(uint32_t dim, vx_metric metric, const vx_hnsw_params *p, vx_hnsw **out);
void vx_hnsw_free(vx_hnsw *idx);

uint32_t vx_hnsw_dim(const vx_hnsw *idx);
vx_metric vx_hnsw_metric(const vx_hnsw *idx);
void vx_hnsw_get_params(const vx_hnsw *idx, vx_hnsw_params *out);
uint32_t vx_hnsw_count(vx_hnsw *idx);   /* slots used (live + deleted) */
uint32_t vx_hnsw_live(vx_hnsw *idx);
uint32_t vx_hnsw_deleted(vx_hnsw *idx);
bool vx_hnsw_is_deleted(vx_hnsw *idx, uint32_t slot); /* true for slots >= count */
bool vx_hnsw_needs_compact(vx_hnsw *idx);
/* Copies the stored row of slot (the vector as inserted, also for cosine)
 * into out[dim]. */
int vx_hnsw_vector(vx_hnsw *idx, uint32_t slot, float *out);

/* Inserts vec[dim] (copied) into the next slot, written to *slot. */
int vx_hnsw_insert(vx_hnsw *idx, const float *vec, uint32_t *slot);
/* Tombstones slot; EINVAL if out of range or already deleted. */
int vx_hnsw_delete(vx_hnsw *idx, uint32_t slot);
/* Reconnects around every tombstone (see Deletes). */
int vx_hnsw_repair(vx_hnsw *idx);

/* Up to k nearest live (and allowed) slots to query[dim]; ef 0 = the
 * index's ef_search; filter NULL = every slot. results has room for k;
 * *n receives the number written (fewer than k when fewer qualify). */
int vx_hnsw_search(vx_hnsw *idx, const float *query, uint32_t k, uint32_t ef,
                   const vx_hnsw_filter *filter, vx_hnsw_hit *results, uint32_t *n);

/* Bytes held by the index (arrays at capacity, links, scratch pool). */
size_t vx_hnsw_memory_bytes(vx_hnsw *idx);

int vx_hnsw_save(vx_hnsw *idx, FILE *f);
/* On failure *err (if err) points to a static reason. */
int vx_hnsw_load(FILE *f, vx_hnsw **out, const char **err);

#endif
