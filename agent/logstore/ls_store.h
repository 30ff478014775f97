/*
 * ls_store: the persistent request-log store of the AI gateway. Every gateway
 * request (cached or not, streamed or not) becomes one log record; the logs
 * API lists, filters, exports, patches (feedback) and deletes them. One store
 * per node holds every account's and gateway's logs, under one directory
 * (the agent uses data_dir/logs). Design, on-disk format and the replication
 * story: docs/decisions/0010-log-store.md.
 *
 * Model
 *   The store is an append-only log of framed, checksummed records in
 *   segment files (<dir>/<16 hex digits>.seg). Besides log records it holds
 *   control records: feedback patches, tombstones (ls_delete) and range
 *   tombstones (retention). Each record carries a sequence number (seq),
 *   strictly increasing across the store's life, also across reopens.
 *   In memory: a fixed-size summary per live record (interned strings,
 *   metadata as interned pairs) and time-ordered indexes, one for the whole
 *   store and one per account+gateway; all rebuilt at ls_open by scanning
 *   the segments. Bodies and rarely filtered fields stay on disk and are read
 *   with pread() for get, list and export.
 *
 * Durability: "acknowledged" = visible = durable
 *   ls_append() only copies the record into an in-memory pending buffer and
 *   returns its seq; it does no I/O on the caller's thread. One committer
 *   thread takes all pending records as one group, writes them at the end
 *   of the active segment (pwrite; a group over 4 MiB in slices, each handed
 *   to writeback with sync_file_range as it goes) and calls fdatasync() on
 *   it (group commit). It commits a group as soon as either
 *     - the oldest pending record has waited commit_interval_us (default
 *       2000 us), or
 *     - commit_max_records are pending (default 4096),
 *   and back to back while a commit took longer than the interval. Only after
 *   fdatasync() returned 0 are the group's records (and patches and
 *   tombstones) applied to the in-memory indexes, so a record is seen by
 *   ls_get, ls_list and ls_export only once it survives a crash or power
 *   loss (as far as the disk honours fdatasync). ls_wait(seq) returns when
 *   that happened to seq. A new segment file is fsync()ed together with its
 *   directory before the first record goes into it, so the file itself
 *   survives too.
 *   With fsync=false (benchmarks only) records are written but never synced:
 *   they survive a crash of the process, not of the machine.
 *
 * Failure
 *   A failed write or fdatasync leaves the page cache in an unknown state,
 *   so the store fails closed: from then on ls_append returns -EIO (counted
 *   as dropped, reason "io_error"), ls_wait for any seq not yet durable
 *   returns -EIO, reads keep working on what was durable. Restart (reopen)
 *   after fixing the disk; recovery truncates whatever was half written.
 *
 * Backpressure
 *   Pending bytes (not yet durable, being written included) never exceed
 *   max_pending_bytes: past it ls_append returns -EAGAIN at once (the record
 *   is not stored; counted as dropped, reason "backpressure"). Control
 *   records (feedback, deletes, retention) may use a quarter more, so that
 *   a flood of logs cannot block them.
 *
 * Recovery (ls_open)
 *   Every byte on disk is untrusted. Each record's magic, length, sequence
 *   (strictly increasing across the store) and CRC32C (seeded with the
 *   segment's random salt) are checked. A bad record in the middle of a
 *   segment is skipped (counted in corrupt_skipped, never served) and the
 *   scan resyncs at the next valid record; a bad tail of the last segment
 *   (a torn write) is truncated away. A segment whose header is bad is
 *   renamed to *.corrupt and ignored. Every open starts a new segment.
 *
 * Threading
 *   Every function may be called from any thread, concurrently, except
 *   ls_close (no call may be in flight or start once it is called). Readers
 *   (get, list, export) run concurrently with each other and with appends;
 *   they hold a read lock only while walking the in-memory index, never
 *   during disk reads or callbacks. The store runs two threads of its own:
 *   the committer and a maintenance thread (retention, space reclamation).
 *
 * Ownership: strings and buffers passed in are borrowed for the call only.
 *   JSON values returned (json_t) belong to the caller (json_decref).
 *
 * Errors: negative errno values. -EINVAL bad arguments (also an id or
 *   cursor that is not a ULID), -ENOENT no such record, -EAGAIN
 *   backpressure, -E2BIG record larger than max_record_bytes (or a header
 *   string over 65535 bytes), -ETIMEDOUT, -EIO disk failure or a record that
 *   fails its checksum when read back, -ESHUTDOWN store closing, -ENOMEM.
 *
 * Metrics (process-wide families; with several stores open the gauges sum)
 *   outpost_logstore_records              gauge, live records
 *   outpost_logstore_bytes                gauge, bytes of segment files
 *   outpost_logstore_commit_seconds       histogram, write+fdatasync per group
 *   outpost_logstore_appended_total       counter, records accepted by ls_append
 *   outpost_logstore_dropped_total{reason} counter, reason = backpressure |
 *                                         too_large | io_error
 */
#ifndef LS_STORE_H
#define LS_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ls_store ls_store;

#define LS_ID_LEN 26            /* ULID text: 26 Crockford base32 characters */
#define LS_META_MAX 5           /* metadata entries per record */
#define LS_CURSOR_LEN 64        /* size of a next_cursor buffer */
#define LS_LIST_MAX 10000       /* ls_list returns at most this many items */
/* Hard upper bound of one framed record on disk; max_record_bytes is capped
 * by it. Recovery refuses longer lengths without reading them. */
#define LS_RECORD_HARD_MAX (64u << 20)

/* --- Options ---------------------------------------------------------- */

typedef struct ls_opts {
    const char *dir;               /* created (mkdir -p) if missing */
    uint32_t commit_interval_us;   /* 0 = 2000 */
    uint32_t commit_max_records;   /* 0 = 4096 */
    size_t max_pending_bytes;      /* 0 = 64 MiB */
    size_t segment_max_bytes;      /* 0 = 64 MiB; a segment is closed past it (max 1 GiB) */
    size_t max_record_bytes;       /* 0 = 16 MiB (framing included), max LS_RECORD_HARD_MAX */
    uint32_t maintenance_interval_ms; /* 0 = 1000: retention and reclamation passes */
    bool fsync;                    /* true: fdatasync every group (ls_opts_init sets it) */
    /* Optional observer, called on the committer thread after each group is
     * durable and visible: the group's last seq, its records and bytes,
     * nanoseconds spent in pwrite and in fdatasync. Must be quick and must
     * not call the store. */
    void (*on_commit)(void *ctx, uint64_t last_seq, uint32_t records, uint64_t bytes,
                      uint64_t write_ns, uint64_t sync_ns);
    void *on_commit_ctx;
} ls_opts;

/* Zeroes o, sets dir and fsync = true (every other field: its default). */
void ls_opts_init(ls_opts *o, const char *dir);

/* --- Records ---------------------------------------------------------- */

/* One gateway request. Everything is borrowed during ls_append only. NULL
 * strings are stored as "". The caller validated metadata and capped body
 * sizes. */
typedef struct ls_record {
    /* In/out. Empty: ls_append generates a ULID from created_ms (or now).
     * Given: must be a ULID; then created_ms must be 0 or equal to the
     * ULID's time (the id orders records, created_ms filters them: they
     * must agree). Written back as upper-case text, NUL-terminated. */
    char id[LS_ID_LEN + 1];
    int64_t created_ms;            /* in/out: Unix ms; 0 = from the id, or now */
    const char *account;
    const char *gateway;
    const char *provider;
    const char *model;
    const char *path;
    int status;                    /* HTTP status code, 0..999 */
    bool success;
    bool cached;
    int step;                      /* index of the universal-endpoint step that answered */
    int attempts;
    uint64_t tokens_in;
    uint64_t tokens_out;
    double cost;                   /* USD */
    double duration_ms;
    double ttfb_ms;                /* time to first byte */
    /* A JSON object text, at most LS_META_MAX entries whose values are
     * strings, numbers or booleans (NULL or "" = none). Anything else:
     * -EINVAL. Stored as parsed pairs; the JSON output re-creates it. */
    const char *metadata;
    const char *event_id;
    const char *request_content_type;
    const char *response_content_type;
    const void *request_body;      /* NULL = not stored (JSON null) */
    size_t request_body_len;
    const void *response_body;     /* NULL = not stored */
    size_t response_body_len;
    uint64_t request_size;         /* size before capping; 0 = request_body_len */
    uint64_t response_size;        /* 0 = response_body_len */
    int feedback;                  /* -1, 0, 1; normally 0 (set later by ls_feedback) */
    bool has_score;
    double score;
} ls_record;

/* --- Filters ---------------------------------------------------------- */

typedef struct ls_filter {
    const char *account;           /* NULL = any */
    const char *gateway;           /* NULL = any */
    int64_t from_ms, to_ms;        /* created_ms in [from_ms, to_ms], inclusive; 0 = open */
    const char *provider;          /* NULL = any */
    const char *model;             /* NULL = any */
    int status;                    /* 0 = any */
    int success;                   /* -1 any, 0, 1 */
    int cached;                    /* -1 any, 0, 1 */
    int feedback;                  /* -2 any, else -1, 0, 1 */
    double min_duration_ms;        /* negative = open; bounds inclusive */
    double max_duration_ms;        /* negative = open */
    /* All must match: the stored value's text form equals value (strings
     * without quotes; numbers and booleans as written in the record's
     * metadata JSON, e.g. "42", "1.5", "true"). */
    struct {
        const char *key;
        const char *value;
    } meta[LS_META_MAX];
    size_t n_meta;
} ls_filter;

/* Matches everything: no account/gateway, open ranges, -1/-2 for "any". */
void ls_filter_init(ls_filter *f);

/* --- Lifecycle --------------------------------------------------------- */

/*
 * Opens (creating if needed) the store in o->dir: scans and verifies every
 * segment, truncates a torn tail, rebuilds the indexes, starts a new segment
 * and the store's threads. Time and memory are proportional to the data
 * (see the decision record for per-record memory). Returns 0 and *out, or a
 * negative errno with a message in err (if errlen > 0).
 */
int ls_open(const ls_opts *o, ls_store **out, char *err, size_t errlen);

/* Makes every pending record durable, stops the threads, frees the store.
 * NULL is a no-op. */
void ls_close(ls_store *s);

/* --- Writing ------------------------------------------------------------ */

/*
 * Queues rec for the next group commit; no I/O. Fills rec->id and
 * rec->created_ms when empty/0. *seq (may be NULL) receives the record's
 * sequence number for ls_wait. Returns 0, -EINVAL (bad id, metadata,
 * feedback or status), -E2BIG, -EAGAIN (backpressure), -EIO (failed store)
 * or -ESHUTDOWN.
 */
int ls_append(ls_store *s, ls_record *rec, uint64_t *seq);

/* Blocks until seq is durable and visible. timeout_ms < 0 waits forever, 0
 * polls. Returns 0, -ETIMEDOUT, -EIO (the store failed before seq was
 * durable) or -EINVAL (seq was never issued). */
int ls_wait(ls_store *s, uint64_t seq, int timeout_ms);

/*
 * Sets feedback (-1, 0, 1) and, if score is not NULL, the score of a record,
 * through a durable patch record: returns once the change is durable and
 * visible. account/gateway NULL = any. Only a visible record can be patched
 * (one still pending is -ENOENT). Returns 0, -ENOENT, -EINVAL, or an
 * append/wait error.
 */
int ls_feedback(ls_store *s, const char *account, const char *gateway, const char *id,
                int feedback, const double *score);

/*
 * Deletes every visible record matching f (NULL = all) through durable
 * tombstones: they are never served again, also after reopen; disk space
 * comes back when whole segments are dead (maintenance). Records still
 * pending when the call starts are not affected. *n_deleted (may be NULL)
 * receives how many were deleted. Returns 0, -EINVAL, or an append/wait
 * error (then some may be deleted already).
 */
int ls_delete(ls_store *s, const ls_filter *f, uint64_t *n_deleted);

/*
 * Retention for one account+gateway, kept in memory (the agent sets it from
 * its config after ls_open): keep at most max_logs records (0 = no limit),
 * none older than max_age_s seconds (0 = no limit). Enforced by the
 * maintenance pass (every maintenance_interval_ms, or ls_maintain) with a
 * durable range tombstone: the oldest records (by id, i.e. created_at) go
 * first; records still pending when a pass starts are judged by the next.
 */
void ls_set_retention(ls_store *s, const char *account, const char *gateway, uint64_t max_logs,
                      int64_t max_age_s);

/*
 * Runs one maintenance pass now, on the calling thread (the background
 * thread runs the same): retention, then unlinking of segments whose log
 * records are all dead (control records that still matter are first copied
 * forward, durably), then freeing of in-memory summaries. Returns 0 or the
 * first error.
 */
int ls_maintain(ls_store *s);

/* --- Reading ------------------------------------------------------------ */

/*
 * The record with this id as a JSON object (every field, bodies included;
 * see the decision record for the shape). account/gateway NULL = any; when
 * given, a record of another account or gateway is -ENOENT. Returns 0,
 * -EINVAL (id not a ULID), -ENOENT, -EIO (checksum failed) or -ENOMEM.
 */
int ls_get(ls_store *s, const char *account, const char *gateway, const char *id, json_t **out);

/*
 * One page of records matching f, newest first (ascending = oldest first),
 * as a JSON array of objects without bodies. cursor: NULL/"" for the first
 * page, else a next_cursor from the previous page (same filter and order).
 * Pagination is stable while records are appended: a page continues
 * strictly after the last id returned, so no record is returned twice and
 * none that existed when the first page was read is skipped. limit 0 = 50,
 * capped at LS_LIST_MAX. next_cursor receives "" when no more records match.
 * total_matching (may be NULL) receives the number of all matching records
 * (this scans the whole range: cost grows with it). A record that cannot
 * be read back or fails its check is left out of the page (and logged).
 * Returns 0, -EINVAL (bad cursor or filter) or -ENOMEM.
 */
int ls_list(ls_store *s, const ls_filter *f, const char *cursor, size_t limit, bool ascending,
            json_t **items, char next_cursor[LS_CURSOR_LEN], size_t *total_matching);

/*
 * Calls fn once per matching record, oldest first, with one NDJSON line (the
 * JSON object with bodies, '\n'-terminated; line is valid during the call).
 * fn returns non-zero to stop; ls_export then returns that value. A record
 * that fails its checksum is skipped (and logged). Returns 0, fn's value, or
 * a negative errno.
 */
int ls_export(ls_store *s, const ls_filter *f, int (*fn)(const char *line, size_t len, void *ctx),
              void *ctx);

/* --- Observation -------------------------------------------------------- */

typedef struct ls_stats {
    uint64_t records_live;         /* visible, not deleted */
    uint64_t bytes_on_disk;        /* sum of segment file sizes */
    uint32_t segments;
    uint64_t commits;              /* groups committed since open */
    uint64_t pending_records;      /* appended, not yet durable */
    uint64_t pending_bytes;
    uint64_t appended;             /* accepted by ls_append since open */
    uint64_t dropped;              /* refused by ls_append since open (-EAGAIN, -E2BIG, -EIO) */
    uint64_t corrupt_skipped;      /* bad regions skipped at open (each >= 1 record) */
    uint64_t truncated_bytes;      /* torn tail cut from the last segment at open */
    uint64_t durable_seq;          /* every seq <= this is durable and visible */
    uint64_t memory_bytes;         /* summaries, metadata pairs and index blocks */
    uint64_t last_commit_ns;       /* write + fdatasync of the last group */
    bool failed;                   /* the store failed closed (see Failure) */
} ls_stats;

void ls_stats_get(ls_store *s, ls_stats *st);

#endif
