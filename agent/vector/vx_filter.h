/*
 * vx_filter: Vectorize v2 metadata filters, parsed once into a compiled
 * predicate that is matched against each candidate's metadata (issue 5).
 *
 * Accepted forms (Cloudflare Vectorize v2 query "filter"):
 *   {"genre": "drama"}                       bare value = $eq
 *   {"genre": {"$ne": "drama"}}              one operator
 *   {"year": {"$gte": 1990, "$lt": 2000}}    several operators on a key: AND
 *   {"genre": "drama", "year": 1999}         several keys: implicit AND
 *   {"pandas.nice": true}                    dotted key: metadata
 *                                            {"pandas": {"nice": true}}
 *   {"genre": {"$in": ["drama", "comedy"]}}  $in / $nin: non-empty arrays
 * Operators: $eq $ne $in $nin $lt $lte $gt $gte. Operand types: string,
 * number, boolean, null; range operators take a number or a string only.
 *
 * Semantics, where Cloudflare's documentation is silent we chose:
 *   - Types never coerce: a clause compares values of the same JSON type
 *     only (true is not 1, "1" is not 1). Numbers compare as doubles
 *     (integer and real JSON numbers are the same type). Strings compare
 *     bytewise (memcmp, then length), which is code-point order for UTF-8.
 *   - $eq / $in / ranges match only when the key is present with a value of
 *     the operand's type that satisfies the comparison; a missing key, a
 *     type mismatch, an array or an object value never matches.
 *   - $ne / $nin are exact negations of $eq / $in: they match a missing key,
 *     a value of another type, and array/object values (MongoDB-like).
 *   - {"k": null} ($eq null) matches an explicit JSON null only, not a
 *     missing key.
 *   - A dotted key only walks nested objects; a literal top-level key that
 *     contains a '.' cannot be addressed. Segments must be non-empty
 *     ("a..b", ".a", "a." are rejected).
 *   - Duplicate keys or operators in the text are refused as invalid JSON
 *     (a jansson object cannot hold them either); keys containing NUL
 *     (possible in a json_t) are refused.
 *
 * Limits (Cloudflare's; each violation fails the parse with a message naming
 * the limit or the offending key/operator; the HTTP layer returns it as a
 * 400): the filter is a non-empty object whose compact JSON encoding is
 * shorter than VX_FILTER_MAX_BYTES bytes (whitespace in the text as sent
 * does not count); keys non-empty, at most VX_FILTER_MAX_KEY characters
 * (UTF-8 code points), no '"', not starting with '$'. Ours: $in/$nin take
 * 1..VX_FILTER_MAX_IN values (Cloudflare documents no bound; the byte limit
 * already caps it near 1000).
 * "No filter" is the caller's NULL: vx_filter_match(NULL, md) is true.
 *
 * Ownership: vx_filter_parse* return a heap object owned by the caller
 * (vx_filter_free); the filter copies what it needs, the input json may be
 * freed afterwards. Pointers returned by accessors live as long as the
 * filter. Threading: a parsed filter is immutable; vx_filter_match may run
 * on many threads at once. Errors: parse returns NULL and writes a
 * NUL-terminated message into err (truncated to errlen); nothing else fails.
 */
#ifndef VX_FILTER_H
#define VX_FILTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define VX_FILTER_MAX_BYTES 2048 /* the compact encoding must be shorter */
#define VX_FILTER_MAX_KEY 512 /* characters */
#define VX_FILTER_MAX_IN 256

typedef enum vx_op {
    VX_OP_EQ = 0,
    VX_OP_NE,
    VX_OP_IN,
    VX_OP_NIN,
    VX_OP_LT,
    VX_OP_LTE,
    VX_OP_GT,
    VX_OP_GTE,
    VX_OP_COUNT_,
} vx_op;

/* Bit (1u << op) per operator, for vx_filter_key_ops. */
#define VX_OP_BIT(op) (1u << (unsigned)(op))

typedef enum vx_vtype { VX_V_NULL = 0, VX_V_BOOL, VX_V_NUMBER, VX_V_STRING } vx_vtype;

/* One operand. str is NUL-terminated but may contain NULs: use len. */
typedef struct vx_value {
    vx_vtype type;
    bool b;
    double num;
    const char *str;
    size_t len;
} vx_value;

/* One compiled clause: key <op> values (nvalues is 1 except for $in/$nin). */
typedef struct vx_clause {
    const char *key; /* the dotted key as written */
    size_t key_index; /* index into the filter's distinct keys */
    vx_op op;
    const vx_value *values;
    size_t nvalues;
} vx_clause;

typedef struct vx_filter vx_filter;

/* Parses a filter object. err/errlen receive the message on failure. */
vx_filter *vx_filter_parse(const json_t *filter, char *err, size_t errlen);
/* Parses JSON text (len bytes, need not be NUL-terminated); the byte limit
 * is checked on the compact re-encoding, as for vx_filter_parse. The caller
 * bounds len (the HTTP body limit). */
vx_filter *vx_filter_parse_text(const char *text, size_t len, char *err, size_t errlen);
void vx_filter_free(vx_filter *f);

/* True when metadata (an object, or NULL for "no metadata") satisfies every
 * clause; f NULL (no filter) matches everything. */
bool vx_filter_match(const vx_filter *f, const json_t *metadata);

/* For the index planner: the distinct keys (in order of first appearance)
 * and, per key, the VX_OP_BIT mask of operators applied to it. */
size_t vx_filter_nkeys(const vx_filter *f);
const char *vx_filter_key(const vx_filter *f, size_t i);
unsigned vx_filter_key_ops(const vx_filter *f, size_t i);

/* The clauses, in input order. */
size_t vx_filter_nclauses(const vx_filter *f);
const vx_clause *vx_filter_clause(const vx_filter *f, size_t i);

/* "$eq" ... "$gte". */
const char *vx_op_name(vx_op op);

/* Compares two values of the same type: <0, 0, >0 (strings bytewise, then
 * by length; false < true; nulls equal). Shared with vx_meta. */
int vx_value_cmp(const vx_value *a, const vx_value *b);

#endif
