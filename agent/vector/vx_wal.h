/*
 * vx_wal: the durable write path of one vector index: a checksummed
 * write-ahead log of mutations plus periodic snapshots, one directory per
 * index. The index encodes its mutations (vectors, ids, metadata) into opaque
 * payloads; the WAL orders them, makes them durable, and replays them at
 * open. Same techniques as the request-log store (docs/decisions/
 * 0010-log-store.md: CRC32C framing, group commit, torn tails), with one
 * difference of policy: an index must never serve a state that skips a
 * mutation, so damage in the middle of the log is refused, not skipped.
 *
 * Model
 *   Every mutation gets a mutation id: 1, 2, 3, ... with no gaps, strictly
 *   increasing across the index's life (also across reopens and snapshots).
 *   Vectorize's mutationId is its decimal text (vx_wal_id_text).
 *   A record is {id, wall-clock ms at append, type byte, payload}. The type
 *   is opaque to the WAL except that 0 is invalid; VX_WAL_* names the ones
 *   the index uses.
 *
 * Durability: acknowledged = durable
 *   vx_wal_append() copies the framed record into a pending buffer under a
 *   mutex and returns its id; no I/O on the caller's thread. One committer
 *   thread takes everything pending as one group, writes it at the end of the
 *   active segment and fdatasync()s it (group commit: records arriving during
 *   a sync form the next group). vx_wal_wait(id) returns 0 once the group
 *   holding id is synced; vx_wal_append_sync() is append + wait. A record is
 *   acknowledged only when wait returned 0: after kill -9 or a power cut
 *   (as far as the disk honours fdatasync) it is there at reopen. A new
 *   segment file is fsynced with its directory before records go into it.
 *   fsync = false (tests, benchmarks) skips fdatasync: records then survive a
 *   crash of the process, not of the machine.
 *
 * Failure: a failed write or fdatasync leaves the page cache in an unknown
 *   state, so the WAL fails closed: the group is truncated back, every later
 *   append returns -EIO, waits for ids not yet durable return -EIO. Reopen
 *   after fixing the disk.
 *
 * Snapshots
 *   vx_wal_snapshot_begin(M) / _write / _commit: the caller streams an opaque
 *   blob that covers every mutation <= M (the index captures its state at M
 *   under its own lock, then streams without blocking appends). It goes to a
 *   temp file; commit waits until M is durable in the log, writes the header
 *   (M, length, CRC32C of the blob), fdatasyncs, renames it into place and
 *   fsyncs the directory. Then only the newest keep_snapshots (default 2)
 *   snapshots are kept, and closed log segments whose records are all <= the
 *   oldest kept snapshot's M are deleted: the log always reaches back to
 *   every kept snapshot, so a newest snapshot damaged later still has a
 *   valid predecessor to fall back to (keep_snapshots = 1 frees the most
 *   disk, and a damaged snapshot then makes open refuse).
 *
 * Recovery (vx_wal_open): every byte on disk is untrusted
 *   1. Snapshots, newest first: header CRC, length = file size, blob CRC
 *      (the whole file is read and checked before on_snapshot sees a byte),
 *      and the log must reach back to M+1. The first that passes is loaded
 *      through on_snapshot; damaged or unusable ones are counted in
 *      snapshots_skipped (never deleted by open). None usable: replay starts
 *      from an empty index, which is refused (-EBADMSG) if the log does not
 *      start at id 1.
 *   2. Segments in order: header (magic, version, CRC, number), then each
 *      frame: magic, a length that fits the file and VX_WAL_RECORD_HARD_MAX
 *      (checked before reading), id = previous + 1 (gapless, also across
 *      segments), CRC32C seeded with the segment's random salt. Records with
 *      id > M go to on_record in id order.
 *   3. A bad frame in the LAST segment with no valid frame of this segment
 *      anywhere after it is a torn write (never acknowledged: groups are
 *      synced whole before acks): truncated away and synced
 *      (truncated_bytes). A last segment of at most a header's size with a
 *      bad header is a torn creation: removed.
 *      Damage confined to the tail of the last segment (e.g. a flipped bit in
      its last record) cannot be told from a torn write and is cut the same
      way; and a power cut that persisted a later page of an unacknowledged
      group but not an earlier one looks like case 4 (refused; reopen with
      truncate_corrupt, which then loses only unacknowledged records).
   4. Anything else (a bad frame followed by a good one, a bad frame or
 *      header in an earlier segment, a gap in ids) is corruption of data
 *      that may have been acknowledged. Default: vx_wal_open fails with
 *      -EBADMSG and says where in err; later records are NOT replayed. With
 *      opts.truncate_corrupt the log is cut at that point instead (the
 *      segment truncated there, every later segment renamed *.corrupt and
 *      kept for inspection), counted in corrupt_truncated_bytes and
 *      segments_quarantined, and open succeeds with the prefix.
 *   Callbacks run during open, on the calling thread, before the committer
 *   starts. If open then fails (a later corruption, a callback's error), the
 *   caller must discard whatever it built from them. Open time is bounded by
 *   reading the snapshot plus the log tail after the oldest kept snapshot.
 *
 * On-disk format (version 1, little-endian, byte by byte)
 *   <dir>/LOCK                       flock()ed while open (-EBUSY otherwise)
 *   <dir>/<16 hex: segment no>.wal   log segments
 *   <dir>/<16 hex: M>.snap           snapshots (*.snap.tmp: unfinished, removed)
 *   Segment header, 40 bytes: "OPVXWAL1", u32 version 1, u32 header length
 *     40, u64 segment no, u64 first id, u32 salt, u32 CRC32C of bytes 0..36.
 *   Frame: u32 magic 0x52585756 "VWXR", u32 CRC32C seeded with the salt of
 *     bytes 8..32+len, u32 len, u8 type, u8 flags 0, u16 0, u64 id, i64 ms,
 *     payload.
 *   Snapshot header, 48 bytes: "OPVXSNAP", u32 version 1, u32 header length
 *     48, u64 M, i64 ms (wall clock at snapshot begin, >= M's time), u64 blob
 *     length, u32 CRC32C of the blob, u32 CRC32C of bytes 0..44; the blob.
 *
 * Replication (a later issue; the format is ready for it)
 *   Records are self-describing (id, time, type, payload) and ids are
 *   gapless, so a follower that has everything <= N asks for N+1 and can
 *   check it received a gapless prefix. The bytes of a committed group are
 *   final once synced (a segment is only ever appended to, and truncated
 *   only at open, past anything acknowledged), so a leader ships raw bytes
 *   from (segment no, offset): on_commit reports exactly that range after
 *   each group is durable. The follower verifies frames with the segment's
 *   salt (from the header it received first) and applies them like replay.
 *   A follower too far behind (its segment deleted after a snapshot) gets
 *   the newest snapshot file, whose header and CRC make it verifiable on its
 *   own, then the log after its M.
 *
 * Threading: every function may be called from any thread, concurrently,
 *   except vx_wal_close (nothing in flight or starting once called). One
 *   snapshot may be in progress at a time; its handle is used by one thread.
 *   The WAL runs one thread of its own, the committer.
 *
 * Ownership: payloads and blobs passed in are borrowed for the call only;
 *   records handed to on_record are valid during the call only.
 *
 * Errors: negative errno. -EINVAL bad arguments, -E2BIG record larger than
 *   max_record_bytes, -EAGAIN backpressure (pending bytes over
 *   max_pending_bytes; nothing stored), -EIO disk failure (fails closed),
 *   -ETIMEDOUT, -ESHUTDOWN closing, -EBUSY directory open elsewhere or a
 *   snapshot already in progress, -EBADMSG corruption refused at open,
 *   -ENOMEM.
 */
#ifndef VX_WAL_H
#define VX_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct vx_wal vx_wal;
typedef struct vx_wal_snap vx_wal_snap;
typedef struct vx_wal_snap_reader vx_wal_snap_reader;

/* Record types the index uses; any other non-zero byte is stored as is. */
enum {
    VX_WAL_INSERT = 1,
    VX_WAL_UPSERT = 2,
    VX_WAL_DELETE = 3,
    VX_WAL_METADATA_INDEX_CREATE = 4,
    VX_WAL_METADATA_INDEX_DELETE = 5,
};

/* Hard upper bound of one record's payload; max_record_bytes is capped by
 * it and recovery refuses longer lengths without reading them. */
#define VX_WAL_RECORD_HARD_MAX (64u << 20)
#define VX_WAL_ID_TEXT 21 /* u64 decimal + NUL */

typedef struct vx_wal_opts {
    const char *dir;            /* created (one level) if missing */
    size_t segment_max_bytes;   /* 0 = 64 MiB: a new segment past it */
    size_t max_record_bytes;    /* 0 = 16 MiB payload, max VX_WAL_RECORD_HARD_MAX */
    size_t max_pending_bytes;   /* 0 = 64 MiB not yet durable */
    uint32_t keep_snapshots;    /* 0 = 2 */
    bool fsync;                 /* vx_wal_opts_init sets true */
    bool truncate_corrupt;      /* see Recovery 4; default false = refuse */
    /* Optional, on the committer thread after each group is durable: the
     * group's bytes are [offset, offset+len) of segment seg_no, its ids end
     * at last_id. Must be quick and must not call the WAL. */
    void (*on_commit)(void *ctx, uint64_t seg_no, uint64_t offset, uint64_t len,
                      uint64_t last_id);
    void *on_commit_ctx;
} vx_wal_opts;

/* Zeroes o, sets dir and fsync = true. */
void vx_wal_opts_init(vx_wal_opts *o, const char *dir);

/* One replayed record; payload valid during on_record only. */
typedef struct vx_wal_rec {
    uint64_t id;
    int64_t ms;                 /* wall clock at append, Unix ms */
    uint8_t type;
    const uint8_t *payload;
    size_t len;
} vx_wal_rec;

/* Callbacks of vx_wal_open; either may be NULL (then that part is verified
 * but not delivered). A non-zero return aborts open (see vx_wal_open). */
typedef struct vx_wal_replay {
    int (*on_snapshot)(void *ctx, vx_wal_snap_reader *r, uint64_t upto_id);
    int (*on_record)(void *ctx, const vx_wal_rec *rec);
    void *ctx;
} vx_wal_replay;

typedef struct vx_wal_replay_stats {
    uint64_t snapshot_id;           /* M of the snapshot loaded, 0 = none */
    uint64_t snapshot_bytes;        /* its blob length */
    uint32_t snapshots_skipped;     /* newer snapshots damaged or unusable */
    uint64_t records;               /* replayed through on_record (id > M) */
    uint64_t bytes;                 /* their payload bytes */
    uint64_t last_id;               /* highest id recovered (snapshot or log) */
    uint64_t truncated_bytes;       /* torn tail cut from the last segment */
    uint64_t corrupt_truncated_bytes; /* truncate_corrupt: cut at the damage */
    uint32_t segments_quarantined;  /* truncate_corrupt: renamed *.corrupt */
    double ms;                      /* wall time of the whole open */
} vx_wal_replay_stats;

/*
 * Opens (creating if needed) the WAL in o->dir, recovers (see Recovery),
 * starts the committer. stats may be NULL. Returns 0 and *out, or a negative
 * errno (a callback's non-zero return r is passed through when negative,
 * else -ECANCELED) with a message in err (if errlen > 0).
 */
int vx_wal_open(const vx_wal_opts *o, const vx_wal_replay *cb, vx_wal **out,
                vx_wal_replay_stats *stats, char *err, size_t errlen);

/* Makes everything pending durable, stops the committer, frees. NULL ok. */
void vx_wal_close(vx_wal *w);

/* Queues a record; *id (may be NULL) receives its mutation id. type != 0.
 * Returns 0, -EINVAL, -E2BIG, -EAGAIN, -EIO or -ESHUTDOWN. */
int vx_wal_append(vx_wal *w, uint8_t type, const void *payload, size_t len, uint64_t *id);

/* Blocks until id is durable. timeout_ms < 0 forever, 0 polls. Returns 0,
 * -ETIMEDOUT, -EIO (failed before id was durable), -EINVAL (id never
 * issued). */
int vx_wal_wait(vx_wal *w, uint64_t id, int timeout_ms);

/* vx_wal_append, then vx_wal_wait(id, -1). */
int vx_wal_append_sync(vx_wal *w, uint8_t type, const void *payload, size_t len, uint64_t *id);

/* Writes id's decimal text (Vectorize's mutationId). */
void vx_wal_id_text(uint64_t id, char out[VX_WAL_ID_TEXT]);

/* --- Snapshots ----------------------------------------------------------- */

/* Starts a snapshot covering every id <= upto_id (upto_id must have been
 * issued, and be greater than the newest committed snapshot's). Returns 0,
 * -EINVAL, -EBUSY (one in progress), -EIO, -ESHUTDOWN. */
int vx_wal_snapshot_begin(vx_wal *w, uint64_t upto_id, vx_wal_snap **out);
/* Appends bytes to the blob. Returns 0 or -EIO (the snapshot must then be
 * aborted). */
int vx_wal_snapshot_write(vx_wal_snap *s, const void *buf, size_t len);
/* Waits until upto_id is durable, makes the snapshot durable and current,
 * drops older snapshots beyond keep_snapshots and the log segments they no
 * longer need. Frees s in every case. Returns 0, -EIO or the wait's error
 * (then no snapshot was added). */
int vx_wal_snapshot_commit(vx_wal_snap *s);
/* Discards an unfinished snapshot; frees s. NULL ok. */
void vx_wal_snapshot_abort(vx_wal_snap *s);

/* Inside on_snapshot: reads up to cap bytes of the blob; returns the count,
 * 0 at the end, or -EIO / -EBADMSG (the file changed since it was checked:
 * the CRC of what was delivered does not match; open then fails). */
ssize_t vx_wal_snap_read(vx_wal_snap_reader *r, void *buf, size_t cap);
/* The blob's length. */
uint64_t vx_wal_snap_size(const vx_wal_snap_reader *r);

/* --- Observation -------------------------------------------------------- */

typedef struct vx_wal_info {
    uint64_t last_id;               /* last issued id */
    uint64_t durable_id;            /* every id <= this is durable */
    int64_t durable_ms;             /* its append time (processedUpToDatetime); 0 = none */
    uint64_t snapshot_id;           /* newest committed snapshot's M, 0 = none */
    uint64_t bytes_on_disk;         /* segments + snapshots */
    uint32_t segments;
    uint32_t snapshots;
    uint64_t commits;               /* groups since open */
    uint64_t pending_bytes;         /* appended, not yet durable */
    bool failed;
} vx_wal_info;

void vx_wal_info_get(vx_wal *w, vx_wal_info *info);

#endif
