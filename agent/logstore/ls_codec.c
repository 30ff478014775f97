/*
 * The log store's byte formats: ULIDs, metadata parsing, record payloads,
 * frames, segment headers, and the JSON a record is shown as. Everything
 * that decodes bytes read from disk checks every length against what it was
 * given before reading (recovery feeds it untrusted bytes).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "logstore/ls_internal.h"
#include "platform/pl_time.h"
#include "plugins/op_utf8.h"

/* ======================================================================== */
/* ULIDs                                                                    */
/* ======================================================================== */

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* xoshiro256**: fast, and seeded from getrandom() per thread. ULIDs need
 * uniqueness, not secrecy (reading a log still needs the account's auth). */
static _Thread_local uint64_t t_rng[4];
static _Thread_local unsigned t_rng_gen; /* 0 = unseeded */
static atomic_uint g_fork_gen = 1;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add(&g_fork_gen, 1);
}
static void atfork_init(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    unsigned gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    if (t_rng_gen != gen) {
        /* A forked child must not repeat its parent's sequence. */
        pthread_once(&g_atfork_once, atfork_init);
        uint64_t seed[4] = {0};
        ssize_t got = getrandom(seed, sizeof seed, 0);
        if (got != (ssize_t)sizeof seed) {
            /* getrandom cannot fail for 32 bytes on Linux >= 3.17; fall
             * back to clock and address entropy rather than fail a log. */
            seed[0] ^= pl_time_mono_ns();
            seed[1] ^= (uint64_t)(uintptr_t)&seed ^ ((uint64_t)getpid() << 32);
            seed[2] ^= (uint64_t)pl_time_wall_ms();
            seed[3] ^= 0x9E3779B97F4A7C15ull;
        }
        for (int i = 0; i < 4; i++)
            t_rng[i] = seed[i] | (i == 0); /* never all zero */
        t_rng_gen = gen;
    }
    uint64_t *s = t_rng;
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

ls_key ls_ulid_new(int64_t ms)
{
    ls_key k;
    k.hi = ((uint64_t)ms << 16) | (rng_next() & 0xFFFF);
    k.lo = rng_next();
    return k;
}

void ls_ulid_format(ls_key k, char out[LS_ID_LEN + 1])
{
    uint64_t hi = k.hi, lo = k.lo;
    for (int i = LS_ID_LEN - 1; i >= 0; i--) {
        out[i] = B32[lo & 31];
        lo = (lo >> 5) | (hi << 59);
        hi >>= 5;
    }
    out[LS_ID_LEN] = '\0';
}

static int b32_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'z')
        c = (unsigned char)(c - 'a' + 'A');
    const char *p = c ? memchr(B32 + 10, c, 22) : NULL;
    return p ? (int)(p - B32) : -1;
}

int ls_ulid_parse(const char *s, size_t len, ls_key *k)
{
    if (!s || len != LS_ID_LEN)
        return -EINVAL;
    uint64_t hi = 0, lo = 0;
    for (size_t i = 0; i < LS_ID_LEN; i++) {
        int d = b32_val((unsigned char)s[i]);
        if (d < 0 || (i == 0 && d > 7))
            return -EINVAL;
        hi = (hi << 5) | (lo >> 59);
        lo = (lo << 5) | (uint64_t)d;
    }
    k->hi = hi;
    k->lo = lo;
    return 0;
}

/* ======================================================================== */
/* Metadata: a flat JSON object                                             */
/* ======================================================================== */

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static int hex4(const char *s, size_t i, size_t n, unsigned *out)
{
    if (n - i < 4)
        return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[i + k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t utf8_len(unsigned cp)
{
    return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

/* s[*i] is the opening quote. On success *i is past the closing quote and
 * raw/raw_len/un_len describe the contents. */
static int parse_jstring(const char *s, size_t n, size_t *i, const char **raw, size_t *raw_len,
                       size_t *un_len)
{
    size_t j = *i + 1, un = 0;
    while (j < n && s[j] != '"') {
        unsigned char c = (unsigned char)s[j];
        if (c < 0x20)
            return -EINVAL;
        if (c != '\\') {
            un++;
            j++;
            continue;
        }
        if (++j >= n)
            return -EINVAL;
        char e = s[j++];
        if (strchr("\"\\/bfnrt", e) && e) {
            un++;
            continue;
        }
        if (e != 'u')
            return -EINVAL;
        unsigned cp;
        if (hex4(s, j, n, &cp) != 0)
            return -EINVAL;
        j += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return -EINVAL;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (n - j < 6 || s[j] != '\\' || s[j + 1] != 'u' || hex4(s, j + 2, n, &lo) != 0 ||
                lo < 0xDC00 || lo > 0xDFFF)
                return -EINVAL;
            j += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp == 0) /* a NUL could not be matched by a C-string filter */
            return -EINVAL;
        un += utf8_len(cp);
    }
    if (j >= n)
        return -EINVAL;
    *raw = s + *i + 1;
    *raw_len = j - *i - 1;
    if (!op_utf8_valid(*raw, *raw_len))
        return -EINVAL;
    *un_len = un;
    *i = j + 1;
    return 0;
}

static size_t digits(const char *s, size_t i, size_t n)
{
    size_t j = i;
    while (j < n && s[j] >= '0' && s[j] <= '9')
        j++;
    return j - i;
}

/* The JSON number grammar; returns the end index or 0 if none. */
static size_t json_number(const char *s, size_t i, size_t n)
{
    size_t j = i;
    if (j < n && s[j] == '-')
        j++;
    size_t d = digits(s, j, n);
    if (d == 0 || (d > 1 && s[j] == '0'))
        return 0;
    j += d;
    if (j < n && s[j] == '.') {
        d = digits(s, j + 1, n);
        if (d == 0)
            return 0;
        j += 1 + d;
    }
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        j++;
        if (j < n && (s[j] == '+' || s[j] == '-'))
            j++;
        d = digits(s, j, n);
        if (d == 0)
            return 0;
        j += d;
    }
    return j;
}

int ls_meta_parse(const char *s, size_t n, ls_meta_tok toks[LS_META_MAX])
{
    size_t i = skip_ws(s, 0, n);
    if (i == n)
        return 0;
    if (s[i] != '{')
        return -EINVAL;
    i = skip_ws(s, i + 1, n);
    int count = 0;
    if (i < n && s[i] == '}') {
        i++;
    } else {
        for (;;) {
            if (count == LS_META_MAX || i >= n || s[i] != '"')
                return -EINVAL;
            ls_meta_tok *t = &toks[count];
            if (parse_jstring(s, n, &i, &t->key, &t->key_raw, &t->key_len) != 0)
                return -EINVAL;
            i = skip_ws(s, i, n);
            if (i >= n || s[i] != ':')
                return -EINVAL;
            i = skip_ws(s, i + 1, n);
            if (i >= n)
                return -EINVAL;
            if (s[i] == '"') {
                t->type = LS_META_STRING;
                if (parse_jstring(s, n, &i, &t->val, &t->val_raw, &t->val_len) != 0)
                    return -EINVAL;
            } else if (n - i >= 4 && memcmp(s + i, "true", 4) == 0) {
                t->type = LS_META_BOOL;
                t->val = s + i;
                t->val_raw = t->val_len = 4;
                i += 4;
            } else if (n - i >= 5 && memcmp(s + i, "false", 5) == 0) {
                t->type = LS_META_BOOL;
                t->val = s + i;
                t->val_raw = t->val_len = 5;
                i += 5;
            } else {
                size_t e = json_number(s, i, n);
                if (e == 0)
                    return -EINVAL;
                t->type = LS_META_NUMBER;
                t->val = s + i;
                t->val_raw = t->val_len = e - i;
                i = e;
            }
            count++;
            i = skip_ws(s, i, n);
            if (i < n && s[i] == ',') {
                i = skip_ws(s, i + 1, n);
                continue;
            }
            if (i < n && s[i] == '}') {
                i++;
                break;
            }
            return -EINVAL;
        }
    }
    if (skip_ws(s, i, n) != n)
        return -EINVAL;
    return count;
}

static size_t put_utf8(char *d, unsigned cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

void ls_json_unescape(const char *s, size_t n, char *d)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            *d++ = s[i++];
            continue;
        }
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case 'b': *d++ = '\b'; break;
        case 'f': *d++ = '\f'; break;
        case 'n': *d++ = '\n'; break;
        case 'r': *d++ = '\r'; break;
        case 't': *d++ = '\t'; break;
        case 'u': {
            unsigned cp = 0, lo = 0;
            hex4(s, i, n, &cp);
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                hex4(s, i + 2, n, &lo);
                i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            d += put_utf8(d, cp);
            break;
        }
        default: *d++ = e; break; /* " \ / */
        }
    }
}

/* ======================================================================== */
/* Frames and segment headers                                               */
/* ======================================================================== */

void ls_frame_header(uint8_t *d, uint8_t type, uint64_t seq, uint32_t len)
{
    ls_put32(d, LS_FRAME_MAGIC);
    ls_put32(d + 4, 0);
    ls_put32(d + 8, len);
    d[12] = type;
    d[13] = 0;
    ls_put16(d + 14, 0);
    ls_put64(d + 16, seq);
}

void ls_frame_seal(uint8_t *buf, uint32_t salt)
{
    uint32_t len = ls_get32(buf + 8);
    ls_put32(buf + 4, ls_crc32c(salt, buf + 8, (size_t)LS_FRAME_HDR - 8 + len));
}

int ls_frame_check(const uint8_t *b, size_t avail, uint32_t salt, uint64_t min_seq, ls_frame *f)
{
    if (avail < LS_FRAME_HDR || ls_get32(b) != LS_FRAME_MAGIC)
        return LS_FRAME_BAD;
    uint32_t len = ls_get32(b + 8);
    if (len > LS_RECORD_HARD_MAX - LS_FRAME_HDR || (size_t)LS_FRAME_HDR + len > avail)
        return LS_FRAME_BAD;
    uint64_t seq = ls_get64(b + 16);
    if (seq <= min_seq || b[13] != 0 || ls_get16(b + 14) != 0)
        return LS_FRAME_BAD;
    if (ls_crc32c(salt, b + 8, (size_t)LS_FRAME_HDR - 8 + len) != ls_get32(b + 4))
        return LS_FRAME_BAD;
    f->type = b[12];
    f->seq = seq;
    f->payload = b + LS_FRAME_HDR;
    f->len = len;
    return LS_FRAME_OK;
}

static const uint8_t SEG_MAGIC[8] = {'O', 'P', 'L', 'O', 'G', 'S', 'E', 'G'};

void ls_seg_hdr_encode(const ls_seg_hdr *h, uint8_t o[LS_SEG_HDR])
{
    memcpy(o, SEG_MAGIC, 8);
    ls_put32(o + 8, LS_SEG_VERSION);
    ls_put32(o + 12, LS_SEG_HDR);
    ls_put64(o + 16, h->no);
    ls_put64(o + 24, h->first_seq);
    ls_put64(o + 32, (uint64_t)h->created_ms);
    memcpy(o + 40, h->store_id, 16);
    ls_put32(o + 56, h->salt);
    ls_put32(o + 60, ls_crc32c(0, o, 60));
}

int ls_seg_hdr_decode(const uint8_t *in, size_t len, ls_seg_hdr *h)
{
    if (len < LS_SEG_HDR || memcmp(in, SEG_MAGIC, 8) != 0 ||
        ls_get32(in + 8) != LS_SEG_VERSION || ls_get32(in + 12) != LS_SEG_HDR ||
        ls_crc32c(0, in, 60) != ls_get32(in + 60))
        return -EINVAL;
    h->no = ls_get64(in + 16);
    h->first_seq = ls_get64(in + 24);
    h->created_ms = (int64_t)ls_get64(in + 32);
    memcpy(h->store_id, in + 40, 16);
    h->salt = ls_get32(in + 56);
    return 0;
}

/* ======================================================================== */
/* LOG payload                                                              */
/* ======================================================================== */

/*
 * Layout (v1), offsets into the payload:
 *   0   u8[26] id (ULID text)        26  i64 created_ms     34  u16 status
 *   36  u8  flags (LS_F_*)           37  i8  feedback       38  i32 step
 *   42  i32 attempts                 46  u64 tokens_in      54  u64 tokens_out
 *   62  f64 cost                     70  f64 duration_ms    78  f64 ttfb_ms
 *   86  f64 score                    94  u64 request_size   102 u64 response_size
 *   110 u32 head_len                 114 u8  n_meta
 *   115 LS_LOG_NSTR x (u16 len, bytes): account gateway provider model path
 *       event_id request_content_type response_content_type
 *       n_meta x (u8 type 's'|'n'|'b', u16 klen, key, u16 vlen, value text)
 *   head_len: u32 CRC32C (seed 0) of payload[0, head_len)
 *       u32 request body length, bytes; u32 response body length, bytes
 * The head (everything but the bodies) has its own CRC so that a list can
 * verify what it shows without reading bodies.
 */

static double f64_of(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}
static uint64_t u64_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static const char *nz(const char *s)
{
    return s ? s : "";
}

int ls_log_prepare(ls_record *rec, int64_t now_ms, ls_log_prep *p)
{
    memset(p, 0, sizeof *p);
    size_t idlen = strnlen(rec->id, sizeof rec->id);
    if (idlen > 0) {
        if (ls_ulid_parse(rec->id, idlen, &p->key) != 0)
            return -EINVAL;
        if (rec->created_ms != 0 && rec->created_ms != ls_key_ms(p->key))
            return -EINVAL;
        rec->created_ms = ls_key_ms(p->key);
    } else {
        int64_t ms = rec->created_ms ? rec->created_ms : now_ms;
        if (ms < 0 || ms > LS_MS_MAX)
            return -EINVAL;
        p->key = ls_ulid_new(ms);
        rec->created_ms = ms;
    }
    ls_ulid_format(p->key, rec->id);
    if (rec->status < 0 || rec->status > 999 || rec->feedback < -1 || rec->feedback > 1)
        return -EINVAL;
    if (!isfinite(rec->cost) || !isfinite(rec->duration_ms) || !isfinite(rec->ttfb_ms) ||
        (rec->has_score && !isfinite(rec->score)))
        return -EINVAL;
    const char *strs[LS_LOG_NSTR] = {rec->account, rec->gateway, rec->provider,
                                     rec->model, rec->path, rec->event_id,
                                     rec->request_content_type, rec->response_content_type};
    size_t len = LS_LOG_FIXED;
    for (int i = 0; i < LS_LOG_NSTR; i++) {
        size_t n = strlen(nz(strs[i]));
        if (n > UINT16_MAX)
            return -E2BIG;
        len += 2 + n;
    }
    const char *md = nz(rec->metadata);
    int nm = ls_meta_parse(md, strlen(md), p->meta);
    if (nm < 0)
        return -EINVAL;
    p->n_meta = nm;
    for (int i = 0; i < nm; i++) {
        if (p->meta[i].key_len > UINT16_MAX || p->meta[i].val_len > UINT16_MAX)
            return -E2BIG;
        len += 5 + p->meta[i].key_len + p->meta[i].val_len;
    }
    size_t rq = rec->request_body ? rec->request_body_len : 0;
    size_t rs = rec->response_body ? rec->response_body_len : 0;
    if (rq > LS_RECORD_HARD_MAX || rs > LS_RECORD_HARD_MAX)
        return -E2BIG;
    len += 4 + 4 + rq + 4 + rs;
    p->payload_len = len;
    return 0;
}

static uint8_t *put_str(uint8_t *d, const char *s, size_t n)
{
    ls_put16(d, (uint16_t)n);
    memcpy(d + 2, s, n);
    return d + 2 + n;
}

void ls_log_encode(uint8_t *d, const ls_record *r, const ls_log_prep *p)
{
    memcpy(d, r->id, LS_ID_LEN);
    ls_put64(d + 26, (uint64_t)r->created_ms);
    ls_put16(d + 34, (uint16_t)r->status);
    uint8_t flags = (r->success ? LS_F_SUCCESS : 0) | (r->cached ? LS_F_CACHED : 0) |
                    (r->request_body ? LS_F_REQ_BODY : 0) |
                    (r->response_body ? LS_F_RESP_BODY : 0) | (r->has_score ? LS_F_SCORE : 0);
    d[36] = flags;
    d[37] = (uint8_t)(int8_t)r->feedback;
    ls_put32(d + 38, (uint32_t)r->step);
    ls_put32(d + 42, (uint32_t)r->attempts);
    ls_put64(d + 46, r->tokens_in);
    ls_put64(d + 54, r->tokens_out);
    ls_put64(d + 62, u64_of(r->cost));
    ls_put64(d + 70, u64_of(r->duration_ms));
    ls_put64(d + 78, u64_of(r->ttfb_ms));
    ls_put64(d + 86, u64_of(r->has_score ? r->score : 0.0));
    size_t rq = r->request_body ? r->request_body_len : 0;
    size_t rs = r->response_body ? r->response_body_len : 0;
    ls_put64(d + 94, r->request_size ? r->request_size : rq);
    ls_put64(d + 102, r->response_size ? r->response_size : rs);
    d[114] = (uint8_t)p->n_meta;
    const char *strs[LS_LOG_NSTR] = {r->account, r->gateway, r->provider,
                                     r->model, r->path, r->event_id,
                                     r->request_content_type, r->response_content_type};
    uint8_t *w = d + LS_LOG_FIXED;
    for (int i = 0; i < LS_LOG_NSTR; i++) {
        const char *s = nz(strs[i]);
        w = put_str(w, s, strlen(s));
    }
    for (int i = 0; i < p->n_meta; i++) {
        const ls_meta_tok *t = &p->meta[i];
        *w++ = t->type;
        ls_put16(w, (uint16_t)t->key_len);
        ls_json_unescape(t->key, t->key_raw, (char *)w + 2);
        w += 2 + t->key_len;
        ls_put16(w, (uint16_t)t->val_len);
        if (t->type == LS_META_STRING)
            ls_json_unescape(t->val, t->val_raw, (char *)w + 2);
        else
            memcpy(w + 2, t->val, t->val_len);
        w += 2 + t->val_len;
    }
    uint32_t head_len = (uint32_t)(w - d);
    ls_put32(d + 110, head_len);
    ls_put32(w, ls_crc32c(0, d, head_len));
    w += 4;
    ls_put32(w, (uint32_t)rq);
    if (rq)
        memcpy(w + 4, r->request_body, rq);
    w += 4 + rq;
    ls_put32(w, (uint32_t)rs);
    if (rs)
        memcpy(w + 4, r->response_body, rs);
}

size_t ls_log_head_need(const uint8_t *p, size_t len)
{
    if (len < LS_LOG_FIXED)
        return 0;
    uint32_t head_len = ls_get32(p + 110);
    if (head_len < LS_LOG_FIXED || head_len > LS_RECORD_HARD_MAX)
        return 0;
    return (size_t)head_len + 4;
}

/* Reads a u16-prefixed string at *off, within [0, end). */
static int get_str(const uint8_t *p, size_t end, size_t *off, ls_str *out)
{
    if (end - *off < 2)
        return -1;
    uint16_t n = ls_get16(p + *off);
    if (end - *off - 2 < n)
        return -1;
    out->p = (const char *)p + *off + 2;
    out->n = n;
    *off += 2 + (size_t)n;
    return 0;
}

int ls_log_decode(const uint8_t *p, size_t len, bool head_only, ls_logview *v)
{
    memset(v, 0, sizeof *v);
    size_t need = ls_log_head_need(p, len);
    if (need == 0 || need > len)
        return -EINVAL;
    size_t head_len = need - 4;
    if (ls_crc32c(0, p, head_len) != ls_get32(p + head_len))
        return -EINVAL;
    if (ls_ulid_parse((const char *)p, LS_ID_LEN, &v->key) != 0)
        return -EINVAL;
    v->created_ms = (int64_t)ls_get64(p + 26);
    v->status = ls_get16(p + 34);
    v->flags = p[36];
    v->feedback = (int8_t)p[37];
    v->step = (int32_t)ls_get32(p + 38);
    v->attempts = (int32_t)ls_get32(p + 42);
    v->tokens_in = ls_get64(p + 46);
    v->tokens_out = ls_get64(p + 54);
    v->cost = f64_of(ls_get64(p + 62));
    v->duration_ms = f64_of(ls_get64(p + 70));
    v->ttfb_ms = f64_of(ls_get64(p + 78));
    v->score = f64_of(ls_get64(p + 86));
    v->request_size = ls_get64(p + 94);
    v->response_size = ls_get64(p + 102);
    v->head_len = (uint32_t)head_len;
    v->n_meta = p[114];
    if (v->n_meta > LS_META_MAX || v->feedback < -1 || v->feedback > 1)
        return -EINVAL;
    size_t off = LS_LOG_FIXED;
    ls_str *strs[LS_LOG_NSTR] = {&v->account, &v->gateway, &v->provider, &v->model,
                                 &v->path,    &v->event_id, &v->req_ct,  &v->resp_ct};
    for (int i = 0; i < LS_LOG_NSTR; i++)
        if (get_str(p, head_len, &off, strs[i]) != 0)
            return -EINVAL;
    for (int i = 0; i < v->n_meta; i++) {
        if (off >= head_len)
            return -EINVAL;
        uint8_t t = p[off++];
        if (t != LS_META_STRING && t != LS_META_NUMBER && t != LS_META_BOOL)
            return -EINVAL;
        v->meta[i].type = t;
        if (get_str(p, head_len, &off, &v->meta[i].key) != 0 ||
            get_str(p, head_len, &off, &v->meta[i].val) != 0)
            return -EINVAL;
    }
    if (off != head_len)
        return -EINVAL;
    if (head_only)
        return 0;
    off = head_len + 4;
    uint32_t n;
    if (len - off < 4)
        return -EINVAL;
    n = ls_get32(p + off);
    if (len - off - 4 < n)
        return -EINVAL;
    v->req_body = (ls_str){(const char *)p + off + 4, n};
    off += 4 + (size_t)n;
    if (len - off < 4)
        return -EINVAL;
    n = ls_get32(p + off);
    if (len - off - 4 != n)
        return -EINVAL;
    v->resp_body = (ls_str){(const char *)p + off + 4, n};
    v->has_bodies = true;
    return 0;
}

/* ======================================================================== */
/* Control payloads                                                         */
/* ======================================================================== */

void ls_patch_encode(uint8_t *d, const ls_patch *p)
{
    char id[LS_ID_LEN + 1];
    ls_put64(d, p->target);
    ls_ulid_format(p->key, id);
    memcpy(d + 8, id, LS_ID_LEN);
    d[34] = (uint8_t)p->feedback;
    d[35] = p->has_score ? 1 : 0;
    ls_put64(d + 36, u64_of(p->has_score ? p->score : 0.0));
}

int ls_patch_decode(const uint8_t *d, size_t len, ls_patch *out)
{
    if (len != LS_PATCH_LEN)
        return -EINVAL;
    out->target = ls_get64(d);
    if (ls_ulid_parse((const char *)d + 8, LS_ID_LEN, &out->key) != 0)
        return -EINVAL;
    out->feedback = (int8_t)d[34];
    out->has_score = d[35] != 0;
    out->score = f64_of(ls_get64(d + 36));
    if (out->feedback < -1 || out->feedback > 1 || d[35] > 1 ||
        (out->has_score && !isfinite(out->score)))
        return -EINVAL;
    return 0;
}

size_t ls_tomb_len(size_t n)
{
    return 4 + 8 * n;
}

void ls_tomb_encode(uint8_t *d, const uint64_t *seqs, uint32_t n)
{
    ls_put32(d, n);
    for (uint32_t i = 0; i < n; i++)
        ls_put64(d + 4 + 8 * (size_t)i, seqs[i]);
}

int ls_tomb_decode(const uint8_t *d, size_t len)
{
    if (len < 4)
        return -EINVAL;
    uint32_t n = ls_get32(d);
    if (n > LS_TOMB_MAX || len != ls_tomb_len(n))
        return -EINVAL;
    return (int)n;
}

size_t ls_range_len(const ls_range *r)
{
    return 2 + r->account.n + 2 + r->gateway.n + 24;
}

void ls_range_encode(uint8_t *d, const ls_range *r)
{
    d = put_str(d, r->account.p, r->account.n);
    d = put_str(d, r->gateway.p, r->gateway.n);
    ls_put64(d, r->cut.hi);
    ls_put64(d + 8, r->cut.lo);
    ls_put64(d + 16, r->max_seq);
}

int ls_range_decode(const uint8_t *d, size_t len, ls_range *out)
{
    size_t off = 0;
    if (get_str(d, len, &off, &out->account) != 0 || get_str(d, len, &off, &out->gateway) != 0 ||
        len - off != 24)
        return -EINVAL;
    out->cut.hi = ls_get64(d + off);
    out->cut.lo = ls_get64(d + off + 8);
    out->max_seq = ls_get64(d + off + 16);
    return 0;
}

/* ======================================================================== */
/* JSON                                                                     */
/* ======================================================================== */

size_t ls_base64(const uint8_t *in, size_t len, char *out)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
        out[o++] = A[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = i + 1 < len ? A[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* A JSON string of bytes that should be UTF-8 text: bad bytes become U+FFFD
 * (a log shows what a client sent; it must still be valid JSON). */
static json_t *text(ls_str s)
{
    if (op_utf8_valid(s.p, s.n))
        return json_stringn_nocheck(s.p, s.n);
    char *buf = malloc(OP_UTF8_STREAM_CAP(s.n));
    if (!buf)
        return NULL;
    op_utf8_tail tail = {0};
    size_t n = op_utf8_stream(&tail, s.p, s.n, true, buf);
    json_t *j = json_stringn_nocheck(buf, n);
    free(buf);
    return j;
}

static json_t *real_or_null(double d)
{
    return isfinite(d) ? json_real(d) : json_null();
}

static json_t *uint_json(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *meta_value(uint8_t type, ls_str v)
{
    if (type != LS_META_STRING) {
        json_t *j = json_loadb(v.p, v.n, JSON_DECODE_ANY, NULL);
        if (j && (json_is_number(j) || json_is_boolean(j)))
            return j;
        json_decref(j);
    }
    return text(v);
}

static int body(json_t *o, const char *key, const char *enc_key, bool present, ls_str b)
{
    if (!present)
        return json_object_set_new(o, key, json_null());
    if (op_utf8_valid(b.p, b.n))
        return json_object_set_new(o, key, json_stringn_nocheck(b.p, b.n));
    size_t cap = 4 * ((b.n + 2) / 3) + 1;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    size_t n = ls_base64((const uint8_t *)b.p, b.n, buf);
    int rc = json_object_set_new(o, key, json_stringn_nocheck(buf, n));
    free(buf);
    if (rc == 0)
        rc = json_object_set_new(o, enc_key, json_string("base64"));
    return rc;
}

json_t *ls_log_json(const ls_logview *v, int feedback, bool has_score, double score)
{
    char id[LS_ID_LEN + 1], ts[40];
    ls_ulid_format(v->key, id);
    pl_time_format_rfc3339(v->created_ms, ts, sizeof ts);
    json_t *meta = json_object();
    for (int i = 0; meta && i < v->n_meta; i++) {
        json_t *key = text(v->meta[i].key);
        if (key)
            json_object_set_new(meta, json_string_value(key), meta_value(v->meta[i].type,
                                                                           v->meta[i].val));
        json_decref(key);
    }
    json_t *o = json_pack(
        "{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:i, s:b, s:b, s:i, s:i, s:o, s:o, s:o, s:o, s:o,"
        " s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:o}",
        "id", id, "created_at", ts, "account", text(v->account), "gateway", text(v->gateway),
        "provider", text(v->provider), "model", text(v->model), "path", text(v->path),
        "status_code", (int)v->status, "success", (v->flags & LS_F_SUCCESS) != 0, "cached",
        (v->flags & LS_F_CACHED) != 0, "step", (int)v->step, "attempts", (int)v->attempts,
        "tokens_in", uint_json(v->tokens_in), "tokens_out", uint_json(v->tokens_out), "cost",
        real_or_null(v->cost), "duration", real_or_null(v->duration_ms), "ttfb",
        real_or_null(v->ttfb_ms), "metadata", meta ? meta : json_object(), "event_id",
        text(v->event_id), "request_content_type", text(v->req_ct), "response_content_type",
        text(v->resp_ct), "request_size", uint_json(v->request_size), "response_size",
        uint_json(v->response_size), "feedback", feedback, "score",
        has_score ? real_or_null(score) : json_null());
    if (!o)
        return NULL;
    if (v->has_bodies &&
        (body(o, "request_body", "request_body_encoding", v->flags & LS_F_REQ_BODY,
              v->req_body) != 0 ||
         body(o, "response_body", "response_body_encoding", v->flags & LS_F_RESP_BODY,
              v->resp_body) != 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}
