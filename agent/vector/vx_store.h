/*
 * vx_store: the catalog of the node's vector indexes, per account:
 * <root>/<account>/<index name>/ holds one index (vx_index.h). The store
 * opens every index found under root at start (so start-up cost is the sum
 * of the indexes' snapshot loads and log tails, reported per index), and
 * creates, finds, lists and deletes them for the API (vx_api).
 *
 * Account directory names: an account name made only of [A-Za-z0-9_-] (at
 * most 64 bytes) is used as is, anything else as "x" + hex of its bytes,
 * so no account name can escape root. A plain name that has the shape of
 * an encoded one ('x' and lowercase hex digits only, e.g. "x41") is encoded
 * too, so two accounts never share a directory. Account names are at most
 * 120 bytes (-EINVAL): the hex form must fit a file name.
 *
 * Deletion: the index is removed from the catalog at once (new requests get
 * 404), its directory renamed to <root>/.trash/<...> and removed once the
 * last request holding it released it; a leftover .trash is cleared at open.
 *
 * An index directory that fails to open (corruption refused by the WAL, an
 * unreadable index.json) is not served and not deleted: it is listed in
 * vx_store_failed() with its reason and logged, so an operator can look.
 *
 * Threading: every function is thread-safe (one mutex around the catalog;
 * index operations run outside it on a reference). Ownership: vx_store_get
 * and vx_store_create return an index reference the caller drops with
 * vx_index_unref. Errors: 0 or negative errno with err: -EEXIST, -ENOENT,
 * -EINVAL (config), -ENOSPC (too many indexes), -EIO.
 */
#ifndef VX_STORE_H
#define VX_STORE_H

#include <stddef.h>

#include "vector/vx_index.h"

#define VX_STORE_MAX_INDEXES 100 /* per account (Vectorize's default) */

typedef struct vx_store vx_store;

typedef struct vx_store_opts {
    const char *root;            /* created if missing */
    uint32_t max_dimensions;     /* 0 = VX_INDEX_DIM_MAX_DEFAULT */
    uint32_t max_indexes;        /* per account; 0 = VX_STORE_MAX_INDEXES */
    vx_index_opts index;         /* for every index */
} vx_store_opts;

int vx_store_open(const vx_store_opts *o, vx_store **out, char *err, size_t errlen);
/* Closes every index (their pending mutations are applied first). */
void vx_store_close(vx_store *s);

int vx_store_create(vx_store *s, const char *account, const vx_index_config *c, vx_index **out,
                    char *err, size_t errlen);
/* NULL when the account has no index of that name. */
vx_index *vx_store_get(vx_store *s, const char *account, const char *name);
/* The account's indexes in name order: *out gets n references (free each
 * with vx_index_unref, then free(*out)). */
int vx_store_list(vx_store *s, const char *account, vx_index ***out, size_t *n);
int vx_store_delete(vx_store *s, const char *account, const char *name, char *err, size_t errlen);

/* Indexes that failed to open: "account/name: reason" lines, valid until
 * close. */
size_t vx_store_failed_count(vx_store *s);
const char *vx_store_failed(vx_store *s, size_t i);

uint32_t vx_store_max_dimensions(const vx_store *s);

#endif
