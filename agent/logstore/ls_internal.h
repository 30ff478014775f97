/*
 * ls_internal: what the log store's files share (not a public API; tests
 * include it to check the codec, CRC and framing directly).
 *
 *   ls_crc.c      CRC32C (SSE4.2 with a runtime check, slice-by-8 fallback)
 *   ls_codec.c    ULIDs, metadata parsing, record payload encode/decode,
 *                 frame check, segment header, JSON of a record, base64
 *   ls_index.c    interned strings, record summaries, time-ordered indexes
 *   ls_segment.c  segment files: create, scan (verify + resync), read back
 *   ls_store.c    the store: group commit, recovery, reads, maintenance
 *
 * Byte order on disk is little-endian everywhere, written byte by byte
 * (no struct is ever written or read as memory).
 */
#ifndef LS_INTERNAL_H
#define LS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "logstore/ls_store.h"

/* ======================================================================== */
/* CRC32C (Castagnoli)                                                      */
/* ======================================================================== */

/* Standard CRC32C with pre/post inversion; crc is the value of a previous
 * call (0 to start), so calls chain. ls_crc32c picks the hardware path when
 * the CPU has SSE4.2; ls_crc32c_sw is the portable table version. */
uint32_t ls_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t ls_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* ======================================================================== */
/* Little-endian helpers                                                    */
/* ======================================================================== */

static inline void ls_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void ls_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void ls_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t ls_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ls_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t ls_get64(const uint8_t *p)
{
    return (uint64_t)ls_get32(p) | ((uint64_t)ls_get32(p + 4) << 32);
}

/* ======================================================================== */
/* ULIDs                                                                    */
/* ======================================================================== */

/* A ULID as two words: hi = 48-bit Unix ms << 16 | 16 random bits,
 * lo = 64 random bits. Ordering (hi, lo) is the ULID text's order. */
typedef struct ls_key {
    uint64_t hi, lo;
} ls_key;

#define LS_MS_MAX ((INT64_C(1) << 48) - 1)

static inline int64_t ls_key_ms(ls_key k)
{
    return (int64_t)(k.hi >> 16);
}
static inline int ls_key_cmp(ls_key a, ls_key b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

/* A fresh ULID for ms (0 <= ms <= LS_MS_MAX) from a per-thread generator
 * seeded by getrandom() (reseeded in a forked child). */
ls_key ls_ulid_new(int64_t ms);
/* 26 upper-case Crockford base32 characters + NUL. */
void ls_ulid_format(ls_key k, char out[LS_ID_LEN + 1]);
/* Parses exactly len == 26 characters (either case; no I/L/O/U aliases);
 * the first must be 0..7. Returns 0 or -EINVAL. */
int ls_ulid_parse(const char *s, size_t len, ls_key *k);

/* ======================================================================== */
/* Metadata                                                                 */
/* ======================================================================== */

enum { LS_META_STRING = 's', LS_META_NUMBER = 'n', LS_META_BOOL = 'b' };

/* One entry of a metadata object, as spans of the JSON text: a string's span
 * is between its quotes, still escaped; *_len is its unescaped length. */
typedef struct ls_meta_tok {
    uint8_t type;
    const char *key;
    size_t key_raw, key_len;
    const char *val;
    size_t val_raw, val_len;
} ls_meta_tok;

/* Parses a flat JSON object of at most LS_META_MAX entries whose values are
 * strings, numbers or true/false; strings must be valid UTF-8 after
 * unescaping. Whitespace around the object is fine; "" is no entries.
 * Returns the number of entries, or -EINVAL. */
int ls_meta_parse(const char *text, size_t len, ls_meta_tok toks[LS_META_MAX]);
/* Writes the unescaped form of a span ls_meta_parse accepted into dst
 * (exactly the *_len bytes it reported). */
void ls_json_unescape(const char *raw, size_t raw_len, char *dst);

/* ======================================================================== */
/* Framing                                                                  */
/* ======================================================================== */

/*
 * A record on disk:
 *   0  u32 magic  LS_FRAME_MAGIC
 *   4  u32 crc    CRC32C, seeded with the segment's salt, of bytes 8 .. 24+len
 *   8  u32 len    payload bytes
 *   12 u8  type   LS_REC_*
 *   13 u8  flags  0 (reserved)
 *   14 u16 0      reserved
 *   16 u64 seq
 *   24 payload
 */
#define LS_FRAME_MAGIC 0x5253504Fu /* "OPSR" little-endian */
#define LS_FRAME_HDR 24u

enum { LS_REC_LOG = 1, LS_REC_PATCH = 2, LS_REC_TOMB = 3, LS_REC_RANGE = 4 };

typedef struct ls_frame {
    uint8_t type;
    uint64_t seq;
    const uint8_t *payload;
    uint32_t len;
} ls_frame;

/* Writes a frame header (crc 0: ls_frame_seal fills it) at dst. */
void ls_frame_header(uint8_t *dst, uint8_t type, uint64_t seq, uint32_t len);
/* Computes and stores the CRC of the frame at buf (header + payload). */
void ls_frame_seal(uint8_t *buf, uint32_t salt);

enum { LS_FRAME_OK = 0, LS_FRAME_BAD = -1 };
/* Checks the frame at buf, of which avail bytes are readable: magic, a
 * length that fits avail and LS_RECORD_HARD_MAX, seq > min_seq, CRC.
 * Returns LS_FRAME_OK (f filled) or LS_FRAME_BAD. Never reads past avail. */
int ls_frame_check(const uint8_t *buf, size_t avail, uint32_t salt, uint64_t min_seq,
                   ls_frame *f);

/* ======================================================================== */
/* Segment header                                                           */
/* ======================================================================== */

/*
 *   0  u8[8] "OPLOGSEG"
 *   8  u32   version (1)
 *   12 u32   header length (64)
 *   16 u64   segment number (also its file name, %016llx.seg)
 *   24 u64   first seq: every record in it has seq >= this
 *   32 i64   created, Unix ms
 *   40 u8[16] store id (random at store creation)
 *   56 u32   salt: CRC seed of this segment's records
 *   60 u32   CRC32C of bytes 0..60
 */
#define LS_SEG_HDR 64u
#define LS_SEG_VERSION 1u

typedef struct ls_seg_hdr {
    uint64_t no;
    uint64_t first_seq;
    int64_t created_ms;
    uint8_t store_id[16];
    uint32_t salt;
} ls_seg_hdr;

void ls_seg_hdr_encode(const ls_seg_hdr *h, uint8_t out[LS_SEG_HDR]);
/* Returns 0 or -EINVAL (magic, version, length or CRC wrong). */
int ls_seg_hdr_decode(const uint8_t *in, size_t len, ls_seg_hdr *h);

/* ======================================================================== */
/* Record payloads                                                          */
/* ======================================================================== */

typedef struct ls_str {
    const char *p;
    uint32_t n;
} ls_str;

/* LOG payload flags. */
enum {
    LS_F_SUCCESS = 1,
    LS_F_CACHED = 2,
    LS_F_REQ_BODY = 4,
    LS_F_RESP_BODY = 8,
    LS_F_SCORE = 16,
};

#define LS_LOG_FIXED 115u /* fixed part of a LOG payload, see ls_codec.c */
#define LS_LOG_NSTR 8     /* account gateway provider model path event_id req_ct resp_ct */

/* A decoded LOG payload; every span points into the decoded buffer. */
typedef struct ls_logview {
    ls_key key;
    int64_t created_ms;
    uint16_t status;
    uint8_t flags;
    int8_t feedback;
    int32_t step, attempts;
    uint64_t tokens_in, tokens_out;
    double cost, duration_ms, ttfb_ms, score;
    uint64_t request_size, response_size;
    uint32_t head_len;
    ls_str account, gateway, provider, model, path, event_id, req_ct, resp_ct;
    uint8_t n_meta;
    struct {
        uint8_t type;
        ls_str key, val;
    } meta[LS_META_MAX];
    bool has_bodies;            /* decoded with bodies */
    ls_str req_body, resp_body; /* valid when has_bodies */
} ls_logview;

/* Everything ls_log_encode needs beyond the record: the id and metadata
 * already checked and parsed by ls_log_prepare. */
typedef struct ls_log_prep {
    ls_key key;
    int n_meta;
    ls_meta_tok meta[LS_META_MAX];
    size_t payload_len;
} ls_log_prep;

/* Validates rec (id/created_ms, status, feedback, string lengths, metadata)
 * and computes the payload length. now_ms is used when both id and
 * created_ms are empty. Fills rec->id / created_ms. Returns 0, -EINVAL or
 * -E2BIG (a header string over 65535 bytes). */
int ls_log_prepare(ls_record *rec, int64_t now_ms, ls_log_prep *p);
/* Writes the payload (p->payload_len bytes) at dst. */
void ls_log_encode(uint8_t *dst, const ls_record *rec, const ls_log_prep *p);
/* Decodes a LOG payload of len bytes. head_only: only the head (up to
 * head_len + 4 bytes are needed; len may be just that) and its own CRC is
 * checked; else the whole payload's structure is checked too. Returns 0 or
 * -EINVAL; never reads outside [p, p+len). */
int ls_log_decode(const uint8_t *p, size_t len, bool head_only, ls_logview *v);
/* Bytes of a LOG payload ls_log_decode needs in head_only mode, read from
 * its fixed part (len >= LS_LOG_FIXED), or 0 if implausible. */
size_t ls_log_head_need(const uint8_t *p, size_t len);

/* PATCH: u64 target seq, u8[26] target id, i8 feedback, u8 has_score, f64 score */
#define LS_PATCH_LEN 44u
typedef struct ls_patch {
    uint64_t target;
    ls_key key;
    int8_t feedback;
    bool has_score;
    double score;
} ls_patch;
void ls_patch_encode(uint8_t *dst, const ls_patch *p);
int ls_patch_decode(const uint8_t *p, size_t len, ls_patch *out);

/* TOMB: u32 n, u64 seq[n] */
#define LS_TOMB_MAX 8192u /* seqs per tombstone record */
size_t ls_tomb_len(size_t n);
void ls_tomb_encode(uint8_t *dst, const uint64_t *seqs, uint32_t n);
/* Returns the count (then seq i is ls_get64(p + 4 + 8 * i)) or -EINVAL. */
int ls_tomb_decode(const uint8_t *p, size_t len);

/* RANGE: u16 alen, account, u16 glen, gateway, u64 cut.hi, u64 cut.lo, u64 max_seq:
 * every record of account+gateway with seq <= max_seq and id <= cut is dead. */
typedef struct ls_range {
    ls_str account, gateway;
    ls_key cut;
    uint64_t max_seq;
} ls_range;
size_t ls_range_len(const ls_range *r);
void ls_range_encode(uint8_t *dst, const ls_range *r);
int ls_range_decode(const uint8_t *p, size_t len, ls_range *out);

/* ======================================================================== */
/* JSON                                                                     */
/* ======================================================================== */

/* The record as the logs API shows it. feedback/score are the current
 * values (patches applied), not the payload's. Bodies are added when the
 * view has them. NULL on allocation failure. */
json_t *ls_log_json(const ls_logview *v, int feedback, bool has_score, double score);

/* Standard base64 with padding; out must hold 4 * ((len + 2) / 3) + 1 bytes. */
size_t ls_base64(const uint8_t *in, size_t len, char *out);

/* ======================================================================== */
/* In-memory indexes (ls_index.c)                                           */
/* ======================================================================== */

/* Interned strings: account, gateway, provider, model, metadata keys and
 * values. Atoms are never freed before the store closes (their number is
 * bounded by the distinct strings seen). Not thread-safe: the store's lock. */
typedef struct ls_atoms {
    char **str;
    uint32_t *len;
    uint32_t n, cap;
    uint32_t *slot; /* open addressing; 0 empty, else atom + 1 */
    uint32_t nslot; /* power of two */
} ls_atoms;

void ls_atoms_free(ls_atoms *a);
/* The atom of s[0..n), or -1. */
int64_t ls_atoms_find(const ls_atoms *a, const char *s, size_t n);
/* The atom of s[0..n), created if new; -ENOMEM. */
int64_t ls_atoms_intern(ls_atoms *a, const char *s, size_t n);

/* The fixed-size summary of one log record: what filters need, plus where
 * the record is on disk. 72 bytes. */
typedef struct ls_sum {
    ls_key key;
    uint64_t seq;
    double duration_ms;
    double score;
    uint32_t seg_no;
    uint32_t off;      /* frame offset in the segment */
    uint32_t len;      /* frame length */
    uint32_t ag;       /* index into the store's account+gateway table */
    uint32_t provider; /* atoms */
    uint32_t model;
    uint32_t meta;     /* 0 none, else 1 + offset in its chunk's meta array */
    uint16_t status;
    int8_t feedback;
    uint8_t flags;     /* LS_S_* */
} ls_sum;

enum { LS_S_SUCCESS = 1, LS_S_CACHED = 2, LS_S_SCORE = 4, LS_S_DEAD = 8 };

/* Summaries live in chunks, in seq order; a position (uint64) names one
 * for the store's life. A chunk whose records are all dead is freed (after
 * the indexes dropped their entries for it). */
#define LS_CHUNK 16384u
typedef struct ls_chunk {
    uint32_t n, n_dead;
    ls_key kmin, kmax;  /* key range of its summaries */
    uint32_t *meta;     /* per record with metadata: n, then n (key, value) atoms */
    uint32_t meta_n, meta_cap;
    ls_sum s[LS_CHUNK];
} ls_chunk;

typedef struct ls_cref {
    ls_chunk *c;        /* NULL once freed */
    uint64_t first_seq, last_seq;
} ls_cref;

typedef struct ls_sums {
    ls_cref *v;         /* v[i] is chunk number base + i */
    size_t n, cap;
    uint64_t base;
    uint64_t next;      /* next position */
} ls_sums;

void ls_sums_free(ls_sums *ss);
/* NULL if pos was never added or its chunk was freed. */
static inline ls_sum *ls_sums_at(const ls_sums *ss, uint64_t pos)
{
    if (pos >= ss->next || pos / LS_CHUNK < ss->base)
        return NULL;
    ls_chunk *c = ss->v[pos / LS_CHUNK - ss->base].c;
    return c ? &c->s[pos % LS_CHUNK] : NULL;
}
static inline ls_chunk *ls_sums_chunk(const ls_sums *ss, uint64_t pos)
{
    if (pos >= ss->next || pos / LS_CHUNK < ss->base)
        return NULL;
    return ss->v[pos / LS_CHUNK - ss->base].c;
}
/* Appends a zeroed summary (seq must exceed every earlier one); NULL on
 * ENOMEM. */
ls_sum *ls_sums_add(ls_sums *ss, uint64_t seq, ls_key key, uint64_t *pos);
/* The position of the summary with this seq, or -1. */
int64_t ls_sums_find_seq(const ls_sums *ss, uint64_t seq);
/* Stores n metadata pairs for the summary at pos; returns its meta value or
 * 0 on ENOMEM (the record then just has no metadata in memory). */
uint32_t ls_sums_meta(ls_sums *ss, uint64_t pos, const uint32_t *pairs, uint32_t n);
/* The metadata pairs of s (in the chunk of pos): count, and pairs. */
static inline const uint32_t *ls_sums_meta_get(const ls_sums *ss, uint64_t pos,
                                               const ls_sum *s, uint32_t *n)
{
    ls_chunk *c = ls_sums_chunk(ss, pos);
    if (!c || s->meta == 0 || s->meta > c->meta_n) {
        *n = 0;
        return NULL;
    }
    *n = c->meta[s->meta - 1];
    return &c->meta[s->meta];
}

/* A time-ordered index: positions sorted by (key, seq), in blocks of up to
 * LS_BLK (a two-level B-tree). Appends in order go to the end without
 * moving anything; out-of-order ones move at most one block. Every entry's
 * summary exists (entries are purged before their chunk is freed). */
#define LS_BLK 512u
typedef struct ls_blk {
    uint32_t n;
    uint64_t pos[LS_BLK];
} ls_blk;

typedef struct ls_tix {
    ls_blk **b;
    uint32_t nb, cap;
    uint64_t n;         /* entries, dead ones included */
} ls_tix;

typedef struct ls_tpos {
    uint32_t b, i;
} ls_tpos;

void ls_tix_free(ls_tix *t);
int ls_tix_insert(ls_tix *t, const ls_sums *ss, uint64_t pos);
/* First entry whose key is >= k (upper: > k); may be the end. */
ls_tpos ls_tix_seek(const ls_tix *t, const ls_sums *ss, ls_key k, bool upper);
static inline bool ls_tix_end(const ls_tix *t, ls_tpos p)
{
    return p.b >= t->nb;
}
static inline uint64_t ls_tix_at(const ls_tix *t, ls_tpos p)
{
    return t->b[p.b]->pos[p.i];
}
static inline ls_tpos ls_tix_first(const ls_tix *t)
{
    (void)t;
    return (ls_tpos){0, 0};
}
static inline ls_tpos ls_tix_next(const ls_tix *t, ls_tpos p)
{
    if (++p.i >= t->b[p.b]->n) {
        p.b++;
        p.i = 0;
    }
    return p;
}
/* The entry before p; returns false at the beginning. */
static inline bool ls_tix_prev(const ls_tix *t, ls_tpos *p)
{
    if (p->b < t->nb && p->i > 0) {
        p->i--;
        return true;
    }
    if (p->b == 0)
        return false;
    p->b--;
    p->i = t->b[p->b]->n - 1;
    return true;
}
/* Drops dead entries at the front. */
void ls_tix_purge_prefix(ls_tix *t, const ls_sums *ss);
/* Drops dead entries in the blocks that may hold keys in [lo, hi]. */
void ls_tix_purge_range(ls_tix *t, const ls_sums *ss, ls_key lo, ls_key hi);

/* ======================================================================== */
/* Segment files (ls_segment.c)                                             */
/* ======================================================================== */

/* "%016llx.seg" + NUL */
#define LS_SEG_NAME_LEN 20
void ls_seg_name(uint64_t no, char out[LS_SEG_NAME_LEN + 1]);
/* Parses a segment file name; false if name is not one. */
bool ls_seg_name_parse(const char *name, uint64_t *no);

/* Creates dir/name exclusively and writes the header; with sync, the file
 * and the directory are made durable before it returns. Returns 0 and an
 * O_RDWR fd, or -errno. */
int ls_seg_create(int dirfd, const ls_seg_hdr *h, bool sync, int *fd_out);

int ls_pread_full(int fd, void *buf, size_t len, uint64_t off);
int ls_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Called for each good frame, in file order; the frame's bytes are valid
 * during the call only. Non-zero stops the scan (ls_seg_scan returns it). */
typedef int (*ls_scan_fn)(void *ctx, const ls_frame *f, uint64_t off);

typedef struct ls_scan_res {
    uint64_t end;         /* offset just past the last good frame */
    uint64_t bad_regions; /* bad byte ranges followed by a good frame */
    bool bad_tail;        /* [end, size) holds no good frame */
    uint64_t last_seq;    /* seq of the last good frame (min_seq if none) */
    uint64_t frames;
} ls_scan_res;

/*
 * Reads the records of a segment file of size bytes, from LS_SEG_HDR on,
 * checking each frame (ls_frame_check with salt; seqs strictly increasing
 * from min_seq). After a bad frame it resyncs: it searches the next offset
 * holding a good frame. Memory: a window of 1 MiB, more only for a longer
 * frame (at most LS_RECORD_HARD_MAX). Returns 0, fn's non-zero value, or
 * -errno on a read error.
 */
int ls_seg_scan(int fd, uint64_t size, uint32_t salt, uint64_t min_seq, ls_scan_fn fn, void *ctx,
                ls_scan_res *res);

#endif
