/*
 * The log store against damaged files: bytes flipped in the middle of a
 * segment (skipped, counted, the rest served), a record duplicated (its seq
 * no longer grows: skipped), the tail cut at every offset of the last
 * record (truncated away, every earlier record served), a damaged segment
 * header (quarantined), damage after open (-EIO, never served), random
 * bytes as a segment and random mutations of real segments (never a crash,
 * never a record that was not written, every served record intact).
 */
#include <inttypes.h>

#include "test_logstore_util.h"

static void quiet(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
}

TestSuite(logstore_corrupt, .init = quiet, .timeout = 120);

typedef struct frame_pos {
    uint64_t off;
    uint32_t len;
    uint8_t type;
    char id[LS_ID_LEN + 1];
} frame_pos;

typedef struct frames {
    frame_pos v[4096];
    int n;
} frames;

static int on_frame(void *ctx, const ls_frame *f, uint64_t off)
{
    frames *fr = ctx;
    cr_assert_lt(fr->n, 4096);
    frame_pos *p = &fr->v[fr->n++];
    p->off = off;
    p->len = LS_FRAME_HDR + f->len;
    p->type = f->type;
    p->id[0] = '\0';
    if (f->type == LS_REC_LOG && f->len >= LS_ID_LEN) {
        memcpy(p->id, f->payload, LS_ID_LEN);
        p->id[LS_ID_LEN] = '\0';
    }
    return 0;
}

/* The frames of a segment file, as the store's own scan sees them. */
static void seg_frames(const char *path, frames *fr)
{
    fr->n = 0;
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    uint8_t hb[LS_SEG_HDR];
    cr_assert_eq(ls_pread_full(fd, hb, sizeof hb, 0), 0);
    ls_seg_hdr h;
    cr_assert_eq(ls_seg_hdr_decode(hb, sizeof hb, &h), 0);
    ls_scan_res res;
    cr_assert_eq(ls_seg_scan(fd, (uint64_t)tl_file_size(path), h.salt, 0, on_frame, fr, &res), 0);
    cr_assert(!res.bad_tail && res.bad_regions == 0);
    close(fd);
}

static void xor_byte(const char *path, long off, uint8_t mask)
{
    int fd = open(path, O_RDWR);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, off), 1);
    b ^= mask;
    cr_assert_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*len ? *len : 1);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Records written by fill(): id and the request body each carries. */
typedef struct written {
    char id[400][LS_ID_LEN + 1];
    char body[400][64];
    int n;
} written;

static void fill(ls_store *s, written *w, int n)
{
    for (int i = 0; i < n; i++) {
        tl_rec t;
        tl_make(&t, i, 1760000000000 + i);
        snprintf(w->body[w->n], sizeof w->body[0], "body-%d-of-record", w->n);
        t.r.request_body = w->body[w->n];
        t.r.request_body_len = strlen(w->body[w->n]);
        tl_put(s, &t.r);
        strcpy(w->id[w->n++], t.r.id);
    }
}

static int widx(const written *w, const char *id)
{
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->id[i], id) == 0)
            return i;
    return -1;
}

/* Opens dir and checks: everything served is a written record, intact
 * (get, list and export agree); returns how many are served and marks
 * which in served[]. */
typedef struct served_ctx {
    const written *w;
    bool *seen;
    int n;
} served_ctx;

static int on_export(const char *line, size_t len, void *ctx)
{
    served_ctx *c = ctx;
    json_t *j = json_loadb(line, len, 0, NULL);
    cr_assert_not_null(j);
    const char *id = json_string_value(json_object_get(j, "id"));
    int i = widx(c->w, id);
    cr_assert_geq(i, 0, "served a record never written: %s", id);
    cr_assert(!c->seen[i], "served twice: %s", id);
    c->seen[i] = true;
    c->n++;
    cr_assert_str_eq(json_string_value(json_object_get(j, "request_body")), c->w->body[i]);
    cr_assert_str_eq(json_string_value(json_object_get(j, "account")), "acct");
    json_decref(j);
    return 0;
}

static int check_served(const char *dir, const written *w, bool *seen, ls_stats *st_out,
                        bool fsync)
{
    ls_opts o;
    ls_opts_init(&o, dir);
    o.fsync = fsync;
    o.commit_interval_us = 100;
    ls_store *s = tl_open_opts(&o);
    memset(seen, 0, (size_t)w->n * sizeof *seen);
    served_ctx c = {w, seen, 0};
    cr_assert_eq(ls_export(s, NULL, on_export, &c), 0);
    for (int i = 0; i < w->n; i++) {
        json_t *j = NULL;
        int rc = ls_get(s, NULL, NULL, w->id[i], &j);
        cr_assert_eq(rc, seen[i] ? 0 : -ENOENT, "get %d: %d", i, rc);
        json_decref(j);
    }
    char(*ids)[LS_ID_LEN + 1];
    size_t n = tl_list_all(s, NULL, 50, false, &ids);
    cr_assert_eq((int)n, c.n);
    free(ids);
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq((int)st.records_live, c.n);
    if (st_out)
        *st_out = st;
    /* It still works: a new record goes in and comes back (then goes, so
     * that the next check sees only written records). */
    tl_rec t;
    tl_make(&t, 3, 0);
    t.r.account = "probe";
    tl_put(s, &t.r);
    json_t *j = NULL;
    cr_assert_eq(ls_get(s, NULL, NULL, t.r.id, &j), 0);
    json_decref(j);
    ls_filter f;
    ls_filter_init(&f);
    f.account = "probe";
    uint64_t nd;
    cr_assert_eq(ls_delete(s, &f, &nd), 0);
    cr_assert_eq(nd, 1);
    ls_close(s);
    return c.n;
}

Test(logstore_corrupt, flipped_bytes_mid_segment_are_skipped)
{
    char *dir = ts_tmpdir();
    static written w;
    w.n = 0;
    ls_store *s = tl_open(dir);
    fill(s, &w, 60);
    ls_close(s);
    s = tl_open(dir); /* a second segment, so the first is not the last */
    fill(s, &w, 60);
    ls_close(s);
    char segs[8][512];
    cr_assert_geq(tl_segments(dir, segs, 8), 2);
    static frames fr;
    seg_frames(segs[0], &fr);
    cr_assert_eq(fr.n, 60);
    /* A byte in the body of record 10, the magic of record 20, the length
     * of record 30: each is skipped, the scan resyncs on the next one. */
    xor_byte(segs[0], (long)(fr.v[10].off + fr.v[10].len - 5), 0x01);
    xor_byte(segs[0], (long)fr.v[20].off, 0xFF);
    xor_byte(segs[0], (long)(fr.v[30].off + 9), 0x10);
    /* In the second segment, a byte in the middle of record 5. */
    static frames fr2;
    seg_frames(segs[1], &fr2);
    xor_byte(segs[1], (long)(fr2.v[5].off + fr2.v[5].len / 2), 0x40);
    bool seen[400];
    ls_stats st;
    int n = check_served(dir, &w, seen, &st, true);
    cr_assert_eq(n, 116);
    cr_assert(!seen[10] && !seen[20] && !seen[30] && !seen[65]);
    cr_assert_eq(st.corrupt_skipped, 4);
    /* Twice: the damage stays skipped, nothing else changes. */
    cr_assert_eq(check_served(dir, &w, seen, &st, true), 116);
    cr_assert_eq(st.corrupt_skipped, 4);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore_corrupt, duplicated_record_is_skipped)
{
    char *dir = ts_tmpdir();
    static written w;
    w.n = 0;
    ls_store *s = tl_open(dir);
    fill(s, &w, 10);
    ls_close(s);
    char segs[8][512];
    cr_assert_eq(tl_segments(dir, segs, 8), 1);
    static frames fr;
    seg_frames(segs[0], &fr);
    size_t len;
    char *b = slurp(segs[0], &len);
    /* [0..4] [4 again] [5..9]: the copy has a seq that does not grow. */
    size_t cut = fr.v[5].off;
    char *nb = malloc(len + fr.v[4].len);
    memcpy(nb, b, cut);
    memcpy(nb + cut, b + fr.v[4].off, fr.v[4].len);
    memcpy(nb + cut + fr.v[4].len, b + cut, len - cut);
    spit(segs[0], nb, len + fr.v[4].len);
    free(b);
    free(nb);
    bool seen[400];
    ls_stats st;
    cr_assert_eq(check_served(dir, &w, seen, &st, true), 10);
    cr_assert_eq(st.corrupt_skipped, 1);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore_corrupt, tail_cut_at_every_offset_of_the_last_record)
{
    char *src = ts_tmpdir();
    static written w;
    w.n = 0;
    ls_opts o;
    ls_opts_init(&o, src);
    o.fsync = false;
    ls_store *s = tl_open_opts(&o);
    fill(s, &w, 8);
    ls_close(s);
    char segs[8][512];
    cr_assert_eq(tl_segments(src, segs, 8), 1);
    static frames fr;
    seg_frames(segs[0], &fr);
    cr_assert_eq(fr.n, 8);
    size_t len;
    char *b = slurp(segs[0], &len);
    uint64_t start = fr.v[7].off;
    cr_assert_eq(start + fr.v[7].len, len);
    char *dir = ts_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, strrchr(segs[0], '/') + 1);
    bool seen[400];
    for (uint64_t cut = start; cut < len; cut++) {
        /* A fresh copy each time: every open adds a segment. */
        ts_tmpdir_remove(dir);
        cr_assert_eq(mkdir(dir, 0700), 0);
        spit(path, b, cut);
        ls_stats st;
        int n = check_served(dir, &w, seen, &st, false);
        cr_assert_eq(n, 7, "cut at %" PRIu64, cut);
        cr_assert(!seen[7]);
        cr_assert_eq(st.truncated_bytes, cut - start, "cut at %" PRIu64, cut);
        cr_assert_eq(st.corrupt_skipped, 0);
        cr_assert_eq(tl_file_size(path), (long)start, "truncated back to the last good frame");
    }
    /* Uncut, all 8 are there. */
    ts_tmpdir_remove(dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    spit(path, b, len);
    cr_assert_eq(check_served(dir, &w, seen, NULL, false), 8);
    free(b);
    ts_tmpdir_remove(dir);
    ts_tmpdir_remove(src);
    free(dir);
    free(src);
}

Test(logstore_corrupt, bad_header_quarantined_torn_creation_removed)
{
    char *dir = ts_tmpdir();
    static written w;
    w.n = 0;
    for (int k = 0; k < 3; k++) {
        ls_store *s = tl_open(dir);
        fill(s, &w, 5);
        ls_close(s);
    }
    char segs[8][512];
    cr_assert_eq(tl_segments(dir, segs, 8), 3);
    xor_byte(segs[1], 30, 0x01); /* first_seq: the header CRC fails */
    /* A segment file whose creation was torn: empty, or a partial header. */
    char torn[600];
    snprintf(torn, sizeof torn, "%s/00000000000000ff.seg", dir);
    spit(torn, "OPLOG", 5);
    bool seen[400];
    ls_stats st;
    cr_assert_eq(check_served(dir, &w, seen, &st, true), 10);
    for (int i = 0; i < 15; i++)
        cr_assert_eq(seen[i], i < 5 || i >= 10, "record %d", i);
    cr_assert_eq(st.corrupt_skipped, 1);
    cr_assert_eq(tl_count_files(dir, ".corrupt"), 1);
    cr_assert_eq(access(torn, F_OK), -1, "torn creation removed");
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore_corrupt, damage_after_open_is_never_served)
{
    char *dir = ts_tmpdir();
    static written w;
    w.n = 0;
    ls_store *s = tl_open(dir);
    fill(s, &w, 20);
    char segs[8][512];
    cr_assert_eq(tl_segments(dir, segs, 8), 1);
    static frames fr;
    seg_frames(segs[0], &fr);
    /* Record 3: its body (head intact). Record 4: its head. */
    xor_byte(segs[0], (long)(fr.v[3].off + fr.v[3].len - 3), 0x02);
    xor_byte(segs[0], (long)(fr.v[4].off + LS_FRAME_HDR + 60), 0x02);
    json_t *j = NULL;
    cr_assert_eq(ls_get(s, NULL, NULL, w.id[3], &j), -EIO);
    cr_assert_eq(ls_get(s, NULL, NULL, w.id[4], &j), -EIO);
    cr_assert_eq(ls_get(s, NULL, NULL, w.id[5], &j), 0);
    json_decref(j);
    char(*ids)[LS_ID_LEN + 1];
    size_t n = tl_list_all(s, NULL, 50, true, &ids);
    cr_assert_eq(n, 19, "the damaged head is left out of lists");
    for (size_t i = 0; i < n; i++)
        cr_assert_str_neq(ids[i], w.id[4]);
    free(ids);
    bool seen[400] = {0};
    served_ctx c = {&w, seen, 0};
    cr_assert_eq(ls_export(s, NULL, on_export, &c), 0);
    cr_assert_eq(c.n, 18);
    cr_assert(!seen[3] && !seen[4]);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

Test(logstore_corrupt, random_bytes_as_a_segment)
{
    char *dir = ts_tmpdir();
    static written w;
    w.n = 0;
    bool seen[400];
    char path[600];
    snprintf(path, sizeof path, "%s/0000000000000001.seg", dir);
    uint8_t hdr[LS_SEG_HDR];
    ls_seg_hdr h = {.no = 1, .first_seq = 1, .created_ms = 1, .salt = 0x5EED};
    ls_seg_hdr_encode(&h, hdr);
    for (int iter = 0; iter < 60; iter++) {
        ts_tmpdir_remove(dir);
        cr_assert_eq(mkdir(dir, 0700), 0);
        size_t len = (size_t)(rnd() % 20000);
        uint8_t *b = malloc(len + LS_SEG_HDR + 64);
        for (size_t i = 0; i < len + LS_SEG_HDR + 64; i++)
            b[i] = (uint8_t)rnd();
        if (iter % 2) { /* a valid header: the records are what is random */
            memcpy(b, hdr, LS_SEG_HDR);
            /* and frames that look plausible: magic, lengths near the end */
            for (size_t at = LS_SEG_HDR; at + 24 < len + LS_SEG_HDR; at += 97) {
                ls_put32(b + at, LS_FRAME_MAGIC);
                ls_put32(b + at + 8, (uint32_t)(rnd() % 3 == 0 ? 0xFFFFFFF0u : rnd() % 200));
            }
        }
        spit(path, b, len + LS_SEG_HDR);
        free(b);
        cr_assert_eq(check_served(dir, &w, seen, NULL, false), 0);
    }
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore_corrupt, random_mutations_of_real_segments)
{
    char *src = ts_tmpdir();
    static written w;
    w.n = 0;
    ls_opts o;
    ls_opts_init(&o, src);
    o.fsync = false;
    o.segment_max_bytes = 8192;
    ls_store *s = tl_open_opts(&o);
    fill(s, &w, 80);
    /* and control records: a delete and feedback */
    ls_filter f;
    ls_filter_init(&f);
    f.gateway = "gw2";
    f.status = 429;
    uint64_t nd;
    cr_assert_eq(ls_delete(s, &f, &nd), 0);
    cr_assert_eq(ls_feedback(s, NULL, NULL, w.id[0], 1, NULL), 0);
    ls_close(s);
    char segs[64][512];
    int nseg = tl_segments(src, segs, 64);
    cr_assert_gt(nseg, 3);
    static char *orig[64];
    static size_t olen[64];
    for (int i = 0; i < nseg; i++)
        orig[i] = slurp(segs[i], &olen[i]);
    char *dir = ts_tmpdir();
    bool seen[400];
    for (int iter = 0; iter < 150; iter++) {
        ts_tmpdir_remove(dir);
        cr_assert_eq(mkdir(dir, 0700), 0);
        for (int i = 0; i < nseg; i++) {
            char *b = malloc(olen[i] + 1);
            memcpy(b, orig[i], olen[i]);
            size_t len = olen[i];
            int muts = (int)(rnd() % 4);
            for (int m = 0; m < muts && len > 0; m++) {
                switch (rnd() % 4) {
                case 0: b[rnd() % len] ^= (char)(1 + rnd() % 255); break;
                case 1: len = (size_t)(rnd() % len); break;
                case 2: { /* overwrite a run with zeros */
                    size_t at = (size_t)(rnd() % len), n = (size_t)(rnd() % 64);
                    memset(b + at, 0, at + n > len ? len - at : n);
                    break;
                }
                default: { /* copy a run from elsewhere */
                    size_t a = (size_t)(rnd() % len), c = (size_t)(rnd() % len);
                    size_t n = (size_t)(rnd() % 200);
                    if (a + n > len)
                        n = len - a;
                    if (c + n > len)
                        n = len - c;
                    memmove(b + a, b + c, n);
                }
                }
            }
            char p[600];
            snprintf(p, sizeof p, "%s/%s", dir, strrchr(segs[i], '/') + 1);
            spit(p, b, len);
            free(b);
        }
        int n = check_served(dir, &w, seen, NULL, false);
        cr_assert_leq(n, 80);
    }
    for (int i = 0; i < nseg; i++)
        free(orig[i]);
    ts_tmpdir_remove(dir);
    ts_tmpdir_remove(src);
    free(dir);
    free(src);
}
