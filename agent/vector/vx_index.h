/*
 * vx_index: one Vectorize index: the object that ties the engine parts
 * together (vx_hnsw graph, vx_meta metadata indexes, vx_wal mutation log)
 * with the vector ids, namespaces and metadata documents. The HTTP surface
 * (vx_api) and the catalog of indexes (vx_store) sit on top of it.
 *
 * Model
 *   An index has an immutable config (name, description, dimensions, metric,
 *   preset, graph parameters) written once at creation to
 *   <dir>/index.json, and a state: vectors {id, values[dim], namespace,
 *   metadata}. Ids are unique in the index (not per namespace): an upsert of
 *   an id with another namespace moves it. Each stored vector occupies one
 *   graph slot; an update is a delete of the old slot plus an insert
 *   (vx_hnsw never reuses slots), and the graph is rebuilt from the live
 *   vectors once tombstones pass its compact threshold.
 *
 * Write path: acknowledged = durable, applied asynchronously
 *   vx_index_upsert / _insert / _delete / _meta_create / _meta_delete
 *   validate their input (nothing invalid is ever logged), encode one
 *   mutation record, append it to the WAL and return once it is durable
 *   (fdatasync, group commit across concurrent callers) with its mutation
 *   id. Returning 0 is the acknowledgement: after kill -9 the mutation is
 *   there at reopen. The mutation is then applied to the in-memory state by
 *   the index's apply thread, in mutation-id order (the WAL order), exactly
 *   as replay applies it at open, so a replica (a later issue) that replays
 *   the same log reaches the same state. Vectorize behaves the same way
 *   (mutations are asynchronous); vx_index_info's processed_upto says how far
 *   application got, and a query sees every mutation <= processed_upto and
 *   none after it. Applying a mutation of a few vectors takes well under a
 *   millisecond after it is durable; vx_index_wait_applied waits for one.
 *   insert keeps an existing id's vector (the whole vector of that id is
 *   skipped, decided when applied); upsert replaces vector, namespace and
 *   metadata whole.
 *   Backpressure: mutations appended but not yet applied are bounded
 *   (opts.max_pending_bytes of encoded records, default
 *   VX_INDEX_MAX_PENDING_BYTES); past it a writer
 *   waits up to its timeout, then gets -EAGAIN (HTTP 429 with Retry-After).
 *
 * Snapshots and start-up
 *   The apply thread snapshots the state (graph, ids, namespaces, metadata,
 *   metadata-index definitions) into the WAL's snapshot mechanism once the
 *   log since the last snapshot passes snapshot_every_bytes or
 *   snapshot_every_mutations, or holds more vectors than 16384 or an
 *   eighth of the index (whichever is more: replaying a vector costs a
 *   graph insert, loading it from a snapshot far less); older log segments
 *   are then dropped.
 *   vx_index_open loads the newest valid snapshot and replays the log tail,
 *   so start-up time is bounded by the snapshot size plus the tail;
 *   vx_index_info reports it (open_ms). The apply thread writes a snapshot
 *   between two mutations (it is the only writer, so it streams the live
 *   state while queries go on; mutations acknowledged meanwhile wait in the
 *   queue). Measured with OUTPOST_VX_BENCH=100000 test_vx_index --filter
 *   '*open_time*' (2-core VM shared with other builds, 100k x 64 cosine,
 *   4-property metadata each, 100 mutations of 1000): open from the
 *   snapshot 0.7 s, by replaying the whole log 38.7 s (the graph is rebuilt
 *   insert by insert); 1966 bytes of memory per vector (graph ~700 with
 *   f32 + int8 rows and links, the cosine originals 256, the metadata
 *   documents as json_t most of the rest).
 *
 * Graph upkeep
 *   Tombstones are repaired (vx_hnsw_repair) once they pass 2% of the slots
 *   (and 256); once vx_hnsw_needs_compact holds (and there are at least 32
 *   tombstones) the apply thread rebuilds the graph and every slot-indexed
 *   structure from the live vectors and swaps it in; queries use the old
 *   one until the swap. Applies wait meanwhile (acks do not).
 *
 * Files: <dir>/index.json (the config: written once, temp file + fsync +
 *   rename + directory fsync; open refuses a malformed one, naming the
 *   field), <dir>/wal/ (vx_wal: log segments and snapshots).
 *
 * Reads
 *   vx_index_query: nearest live vectors to a vector (or to the stored
 *   vector of an id), restricted to a namespace and a filter, scores as the
 *   metric defines them (vx_score: cosine similarity 1 = identical,
 *   euclidean distance, dot product). The filter becomes an exact
 *   allow-bitmap (metadata indexes answer the clauses they can; the
 *   remaining clauses are checked on the candidates' documents), then the
 *   graph search runs with it (exact scan when few are allowed: see
 *   vx_hnsw.h), so a selective filter keeps its recall. get_by_ids and list
 *   read the same state.
 *
 * Threading
 *   Every function is thread-safe. Queries, gets and lists run in parallel
 *   with each other and with the apply thread: the graph has its own
 *   reader/writer scheme (vx_hnsw.h); the id map, namespaces and documents
 *   sit behind an index rwlock that the apply thread takes exclusively only
 *   to publish a mutation's effect (not while it inserts into the graph).
 *   Writers append concurrently (the WAL serializes them). One apply thread
 *   and the WAL's committer thread per open index.
 *
 * Ownership
 *   vx_index_open/create return a handle with one reference; vx_index_ref /
 *   vx_index_unref share it (the catalog holds one, each request one); the
 *   last unref closes (pending mutations are applied first, then the WAL is
 *   closed). Inputs are borrowed for the call; results (vx_match arrays,
 *   vx_list pages) are owned by the caller and freed with their _free.
 *
 * Errors
 *   0 or a negative errno, with a message in err (errlen > 0) that names the
 *   limit or the field for input errors: -EINVAL bad input (the HTTP layer
 *   answers 400), -ENOENT no such vector (query by id), -EAGAIN backpressure,
 *   -EIO disk failure (the WAL failed closed), -ENOMEM, -ESHUTDOWN closing.
 */
#ifndef VX_INDEX_H
#define VX_INDEX_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vector/vx_dist.h"
#include "vector/vx_filter.h"
#include "vector/vx_hnsw.h"
#include "vector/vx_meta.h"

/* Vectorize's limits (each violation is -EINVAL naming the limit). */
#define VX_INDEX_NAME_MAX 64          /* index name bytes: [a-z0-9-], starts with a letter */
#define VX_INDEX_DESCRIPTION_MAX 1024 /* bytes */
#define VX_INDEX_ID_MAX 64            /* vector id bytes, non-empty */
#define VX_INDEX_NAMESPACE_MAX 64     /* namespace bytes */
#define VX_INDEX_METADATA_MAX 10240   /* metadata bytes, compact JSON */
#define VX_INDEX_DIM_MAX_DEFAULT 1536 /* vectorize.max_dimensions default */
#define VX_INDEX_TOPK_MAX 100
#define VX_INDEX_TOPK_MAX_WITH_DATA 20 /* with returnValues or returnMetadata all */
#define VX_INDEX_TOPK_DEFAULT 5
#define VX_INDEX_BATCH_MAX 5000       /* vectors per mutation (Vectorize's HTTP limit) */
#define VX_INDEX_IDS_MAX 1000         /* ids per get_by_ids / delete_by_ids */
#define VX_INDEX_LIST_MAX 1000        /* ids per list page; default 100 */
#define VX_INDEX_MAX_PENDING_BYTES (256u << 20)

typedef struct vx_index vx_index;

/* The immutable config. Strings are owned by the struct that holds them. */
typedef struct vx_index_config {
    char name[VX_INDEX_NAME_MAX + 1];
    char *description;           /* may be NULL */
    uint32_t dimensions;         /* 1..max_dimensions */
    vx_metric metric;
    char *preset;                /* the preset it was created from, else NULL */
    char *embed_model;           /* local text-embeddings model for text in, else NULL */
    int64_t created_ms;          /* Unix ms */
    int64_t modified_ms;
    vx_hnsw_params hnsw;         /* zero fields = vx_hnsw defaults */
} vx_index_config;

typedef struct vx_index_opts {
    bool fsync;                        /* default true (vx_index_opts_init) */
    uint64_t snapshot_every_bytes;     /* 0 = 64 MiB of log since the last snapshot */
    uint64_t snapshot_every_mutations; /* 0 = 10000 */
    int write_timeout_ms;              /* backpressure wait; 0 = 30000 */
    uint64_t max_pending_bytes;        /* logged, not applied; 0 = VX_INDEX_MAX_PENDING_BYTES */
} vx_index_opts;

void vx_index_opts_init(vx_index_opts *o);

/* Checks a config for creation (name rules, dimensions 1..max_dim, metric,
 * hnsw params in range, description length). 0 or -EINVAL with err. */
int vx_index_config_check(const vx_index_config *c, uint32_t max_dim, char *err, size_t errlen);
void vx_index_config_free(vx_index_config *c); /* frees the strings, not c */

/* Creates a new index in dir (which must not exist; made with its parents'
 * last level), writes index.json durably, opens it. */
int vx_index_create(const char *dir, const vx_index_config *c, const vx_index_opts *o,
                    vx_index **out, char *err, size_t errlen);
/* Opens an existing index directory (index.json, snapshot, log tail). */
int vx_index_open(const char *dir, const vx_index_opts *o, vx_index **out, char *err,
                  size_t errlen);
/* Removes an index directory tree (nothing may have it open): vx_store's
 * deletion and cleanup. 0 or -errno. */
int vx_index_remove_dir(const char *dir);
/* Deletion: after the last reference closes the index, its directory tree
 * at dir (where the caller has renamed it: vx_store's trash) is removed.
 * The index keeps working until then (its open files follow the rename). */
int vx_index_remove_on_close(vx_index *x, const char *dir);
void vx_index_ref(vx_index *x);
void vx_index_unref(vx_index *x); /* NULL ok; the last one closes */

/* The config (valid as long as the caller's reference). */
const vx_index_config *vx_index_get_config(const vx_index *x);
const char *vx_index_dir(const vx_index *x);

/* --- Mutations (see "Write path") ------------------------------------------ */

/* For callers that parse vectors (the HTTP layer): -EINVAL with a message
 * naming the dimensions when n is not the index's dimensions (a float
 * pointer cannot carry its length, so this check is the caller's). */
int vx_index_check_dimensions(const vx_index *x, size_t n, char *err, size_t errlen);

/* One vector of an insert/upsert. values has the index's dimensions. */
typedef struct vx_vector_in {
    const char *id;              /* NUL-terminated, 1..64 bytes */
    const float *values;
    const char *ns;              /* namespace, NULL or "" = none */
    const json_t *metadata;      /* object or NULL */
} vx_vector_in;

/* Validates every vector (ids, duplicate ids in the batch are allowed: the
 * last one wins for upsert, the first for insert; values finite, metadata
 * size, namespace), then logs them as one mutation. n 1..VX_INDEX_BATCH_MAX. */
int vx_index_insert(vx_index *x, const vx_vector_in *v, size_t n, uint64_t *mutation_id,
                    char *err, size_t errlen);
int vx_index_upsert(vx_index *x, const vx_vector_in *v, size_t n, uint64_t *mutation_id,
                    char *err, size_t errlen);
/* Ids that are not stored are ignored when applied. n 1..VX_INDEX_IDS_MAX. */
int vx_index_delete_ids(vx_index *x, const char *const *ids, size_t n, uint64_t *mutation_id,
                        char *err, size_t errlen);
/* Metadata indexes (at most VX_META_MAX_INDEXES; property rules of vx_meta).
 * Creating one for a property that has one, or deleting a missing one, is
 * -EEXIST / -ENOENT at call time (checked against applied state plus
 * mutations pending). Vectors stored before the create are indexed too
 * (the documents are kept, so the apply backfills). */
int vx_index_meta_create(vx_index *x, const char *property, vx_meta_type type,
                         uint64_t *mutation_id, char *err, size_t errlen);
int vx_index_meta_delete(vx_index *x, const char *property, uint64_t *mutation_id, char *err,
                         size_t errlen);

typedef struct vx_meta_def {
    char property[VX_FILTER_MAX_KEY * 4 + 1];
    vx_meta_type type;
} vx_meta_def;
/* The metadata indexes as applied: up to VX_META_MAX_INDEXES into defs. */
size_t vx_index_meta_list(vx_index *x, vx_meta_def defs[VX_META_MAX_INDEXES]);

/* Waits until every mutation <= id is applied. 0, -ETIMEDOUT, -ESHUTDOWN,
 * -EIO (the index failed: its log failed or a mutation could not be
 * applied, e.g. out of memory; it keeps serving reads of what it has and
 * refuses writes; reopen to recover from the log). */
int vx_index_wait_applied(vx_index *x, uint64_t id, int timeout_ms);

/* --- Reads ---------------------------------------------------------------- */

typedef enum vx_return_meta {
    VX_RETURN_META_NONE = 0,
    VX_RETURN_META_INDEXED = 1,  /* only properties that have a metadata index */
    VX_RETURN_META_ALL = 2,
} vx_return_meta;

typedef struct vx_query {
    const float *vector;         /* dimensions floats, or NULL with by_id */
    const char *by_id;           /* query with this stored vector's values */
    uint32_t top_k;              /* 1..100 (..20 with values or all metadata) */
    const char *ns;              /* only this namespace; NULL = all */
    const vx_filter *filter;     /* NULL = none */
    bool return_values;
    vx_return_meta return_metadata;
    uint32_t ef;                 /* beam width; 0 = the index's ef_search */
} vx_query;

/* One result (query match or get_by_ids vector). */
typedef struct vx_match {
    char *id;
    float score;                 /* query only */
    float *values;               /* when asked (get_by_ids: always), else NULL */
    char *ns;                    /* NULL = none */
    json_t *metadata;            /* one reference, when asked (get: all), else NULL; a
                                  * copy of the stored document ({} when the vector has
                                  * none; only the indexed properties for INDEXED) */
} vx_match;

/* Matches best first into *out (caller frees with vx_matches_free), count in
 * *n (fewer than top_k when fewer qualify). -EINVAL: bad top_k / vector;
 * -ENOENT: by_id names no stored vector. */
int vx_index_query(vx_index *x, const vx_query *q, vx_match **out, size_t *n, char *err,
                   size_t errlen);
/* The stored vectors among ids (missing ones skipped), in the order asked. */
int vx_index_get(vx_index *x, const char *const *ids, size_t n, vx_match **out, size_t *nout,
                 char *err, size_t errlen);
void vx_matches_free(vx_match *m, size_t n);

/* A page of ids in byte order after the cursor (the last id of the previous
 * page; NULL or "" = from the start). Consistent across pages: every id
 * stored for the whole listing appears exactly once, in order; ids added
 * or removed meanwhile may or may not appear. */
typedef struct vx_list_page {
    char **ids;
    size_t count;
    size_t total;                /* vectors stored now */
    bool truncated;              /* more after the last id */
} vx_list_page;
int vx_index_list(vx_index *x, const char *after, size_t count, vx_list_page *out, char *err,
                  size_t errlen);
void vx_list_page_free(vx_list_page *p);

/* --- Observation ---------------------------------------------------------- */

typedef struct vx_index_info {
    uint32_t dimensions;
    uint64_t vector_count;       /* live vectors as applied */
    uint64_t processed_upto;     /* last applied mutation id, 0 = none */
    int64_t processed_upto_ms;   /* its append time, Unix ms; 0 = none */
    uint64_t last_mutation;      /* last acknowledged (logged) id */
    uint64_t namespaces;
    uint64_t deleted_slots;      /* tombstones in the graph */
    size_t memory_bytes;         /* graph + ids + documents + metadata indexes */
    uint64_t disk_bytes;         /* log + snapshots */
    uint64_t snapshot_id;        /* newest snapshot's mutation id */
    double open_ms;              /* start-up: snapshot load + log replay */
    uint64_t replayed_records;   /* log records replayed at open */
    uint64_t compactions;        /* graph rebuilds since open */
} vx_index_info;

void vx_index_info_get(vx_index *x, vx_index_info *out);

#endif
