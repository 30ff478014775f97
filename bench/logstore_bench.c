/*
 * logstore_bench: durable request-log appends per second, Outpost's log
 * store against SQLite on the same records, disk and machine.
 *
 *   build/bench/logstore_bench [-t THREADS] [-n RECORDS] [-d DIR] [-i INTERVAL_US]
 *                              [-g MAX_GROUP] [-r RATE] [--no-fsync] [--no-sqlite]
 *                              [--sync-n N]
 *
 * Phase 1 (throughput): THREADS threads append RECORDS realistic ~600-byte
 * records (pre-built, so that formatting is not measured) as fast as
 * ls_append takes them, retrying on -EAGAIN; the clock stops when the last
 * sequence number is durable (ls_wait). Durability is on (group commit,
 * fdatasync) unless --no-fsync. Prints durable records/s, MB/s, the number
 * of groups, records per group, the commit (write + fdatasync) latency
 * p50/p99 from the store's on_commit observer, and each record's
 * append-to-durable latency p50/p99. With -r RATE the threads offer RATE
 * records/s in all (paced per millisecond) instead of all they can: the
 * latencies a node sees at that load.
 *
 * Phase 2 (sync_logs latency): THREADS threads each append and wait for
 * every record (--sync-n records in all): the acknowledgement latency a
 * gateway configured with sync_logs adds to a request, p50/p99.
 *
 * Peer: SQLite (the Debian libsqlite3), WAL mode, synchronous=FULL, the
 * same records inserted from one thread (SQLite has one writer) in
 * transactions of the group size phase 1 measured, into a table with
 * indexes on time, provider, model and status. Prints records/s and the
 * ratio Outpost / SQLite. PRODUCT.md's target: 200k durable logs/s per node.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "logstore/ls_store.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

#ifdef LOGSTORE_BENCH_SQLITE
#include <sqlite3.h>
#endif

/* ======================================================================== */
/* Records                                                                  */
/* ======================================================================== */

typedef struct brec {
    ls_record r;
    char gateway[16], model[48], meta[96], event[40], req[512], resp[512];
} brec;

static const char *const PROVIDERS[] = {"openai", "workers-ai", "anthropic", "google-ai-studio"};
static const char *const MODELS[] = {"gpt-4o-mini", "@cf/meta/llama-3.1-8b-instruct",
                                     "claude-3-5-haiku", "gemini-1.5-flash", "gpt-4o",
                                     "@cf/baai/bge-small-en-v1.5"};
static const char *const WORDS[] = {"summarise", "the", "quarterly", "report", "for",
                                    "edge", "inference", "latency", "and", "cost"};

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void words(char *out, size_t cap, int n)
{
    size_t o = 0;
    for (int i = 0; i < n && o + 16 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? " " : "", WORDS[rnd() % 10]);
}

static void make_record(brec *b, long i, int64_t t0)
{
    memset(b, 0, sizeof *b);
    char text[200];
    snprintf(b->gateway, sizeof b->gateway, "gw-%ld", i % 8);
    snprintf(b->model, sizeof b->model, "%s", MODELS[rnd() % 6]);
    snprintf(b->meta, sizeof b->meta, "{\"user\":\"user-%" PRIu64 "\",\"team\":\"t%ld\",\"n\":%ld}",
             rnd() % 5000, i % 10, i % 97);
    snprintf(b->event, sizeof b->event, "evt-%016" PRIx64, rnd());
    words(text, sizeof text, 6);
    snprintf(b->req, sizeof b->req,
             "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
             "\"max_tokens\":256}",
             b->model, text);
    words(text, sizeof text, 4);
    snprintf(b->resp, sizeof b->resp,
             "{\"id\":\"chatcmpl-%" PRIx64 "\",\"choices\":[{\"message\":{\"role\":\"assistant\","
             "\"content\":\"%s\"}}]}",
             rnd(), text);
    ls_record *r = &b->r;
    r->created_ms = t0 + i / 200; /* ~200 per ms: the target rate */
    r->account = "9a7806061c88ada191ed06f989cc3dac";
    r->gateway = b->gateway;
    r->provider = PROVIDERS[rnd() % 4];
    r->model = b->model;
    r->path = "/v1/chat/completions";
    r->status = rnd() % 20 ? 200 : 429;
    r->success = r->status == 200;
    r->cached = rnd() % 10 == 0;
    r->attempts = 1;
    r->tokens_in = 31;
    r->tokens_out = 24;
    r->cost = 0.000021;
    r->duration_ms = (double)(100 + rnd() % 900);
    r->ttfb_ms = (double)(20 + rnd() % 200);
    r->metadata = b->meta;
    r->event_id = b->event;
    r->request_content_type = "application/json";
    r->response_content_type = "application/json";
    r->request_body = b->req;
    r->request_body_len = strlen(b->req);
    r->response_body = b->resp;
    r->response_body_len = strlen(b->resp);
}

/* ======================================================================== */
/* Outpost                                                                  */
/* ======================================================================== */

/* Per group: write+fdatasync time, when it became durable, its last seq. */
typedef struct commits {
    uint64_t *ns, *done_at, *last_seq;
    size_t n, cap;
    uint64_t records;
} commits;

static void on_commit(void *ctx, uint64_t last_seq, uint32_t records, uint64_t bytes,
                      uint64_t write_ns, uint64_t sync_ns)
{
    (void)bytes;
    commits *c = ctx; /* only the committer thread calls this */
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 4096;
        c->ns = realloc(c->ns, c->cap * sizeof *c->ns);
        c->done_at = realloc(c->done_at, c->cap * sizeof *c->done_at);
        c->last_seq = realloc(c->last_seq, c->cap * sizeof *c->last_seq);
        if (!c->ns || !c->done_at || !c->last_seq)
            exit(1);
    }
    c->ns[c->n] = write_ns + sync_ns;
    c->done_at[c->n] = pl_time_mono_ns();
    c->last_seq[c->n++] = last_seq;
    c->records += records;
}

static void commits_free(commits *c)
{
    free(c->ns);
    free(c->done_at);
    free(c->last_seq);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

typedef struct worker {
    ls_store *s;
    brec *recs;
    long from, step, to;
    uint64_t last_seq;
    uint64_t retries;
    double rate;           /* records/s for this thread; 0 = as fast as possible */
    uint64_t start_ns;
    uint64_t *appended_at; /* by seq */
    uint64_t *lat;         /* phase 2 */
    size_t nlat;
} worker;

static void *append_main(void *arg)
{
    worker *w = arg;
    long done = 0;
    for (long i = w->from; i < w->to; i += w->step, done++) {
        if (w->rate > 0) {
            /* Paced: every millisecond, what is due by then. */
            uint64_t due_ns = w->start_ns + (uint64_t)((double)done / w->rate * 1e9);
            if (pl_time_mono_ns() < due_ns) {
                uint64_t wake = due_ns - due_ns % 1000000 + 1000000;
                struct timespec ts = {(time_t)(wake / 1000000000u), (long)(wake % 1000000000u)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
        }
        ls_record r = w->recs[i].r; /* ls_append fills id/created_ms */
        uint64_t t0 = w->appended_at ? pl_time_mono_ns() : 0;
        int rc;
        while ((rc = ls_append(w->s, &r, &w->last_seq)) == -EAGAIN) {
            w->retries++;
            sched_yield();
        }
        if (rc != 0) {
            fprintf(stderr, "ls_append: %s\n", strerror(-rc));
            exit(1);
        }
        if (w->appended_at)
            w->appended_at[w->last_seq] = t0;
    }
    return NULL;
}

/* Append-to-durable latency of every record, from the groups' times. */
static void ack_latency(const commits *c, const uint64_t *appended_at, long n, double *p50,
                        double *p99, double *max)
{
    uint64_t *lat = malloc((size_t)n * sizeof *lat);
    size_t g = 0, k = 0;
    for (uint64_t seq = 1; seq <= (uint64_t)n; seq++) {
        while (g < c->n && c->last_seq[g] < seq)
            g++;
        if (g == c->n)
            break;
        lat[k++] = c->done_at[g] - appended_at[seq];
    }
    *p50 = pct(lat, k, 0.5);
    *p99 = pct(lat, k, 0.99);
    *max = k ? (double)lat[k - 1] / 1e6 : 0;
    free(lat);
}

static void *sync_main(void *arg)
{
    worker *w = arg;
    for (long i = w->from; i < w->to; i += w->step) {
        ls_record r = w->recs[i].r;
        uint64_t t0 = pl_time_mono_ns(), seq;
        if (ls_append(w->s, &r, &seq) != 0 || ls_wait(w->s, seq, -1) != 0) {
            fprintf(stderr, "append/wait failed\n");
            exit(1);
        }
        w->lat[w->nlat++] = pl_time_mono_ns() - t0;
    }
    return NULL;
}

typedef struct cfg {
    double rate;
    int threads;
    long n, sync_n;
    const char *dir;
    uint32_t interval_us, max_group;
    bool fsync, sqlite;
} cfg;

static ls_store *open_store(const cfg *c, const char *sub, commits *cm)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", c->dir, sub);
    ls_opts o;
    ls_opts_init(&o, path);
    o.fsync = c->fsync;
    o.commit_interval_us = c->interval_us;
    o.commit_max_records = c->max_group;
    o.max_pending_bytes = 256u << 20;
    o.on_commit = on_commit;
    o.on_commit_ctx = cm;
    ls_store *s = NULL;
    char err[256];
    if (ls_open(&o, &s, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return s;
}

/* ======================================================================== */
/* SQLite                                                                   */
/* ======================================================================== */

#ifdef LOGSTORE_BENCH_SQLITE
static void sq_ok(int rc, sqlite3 *db, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "sqlite %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static double sqlite_run(const cfg *c, brec *recs, long group)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/peer.sqlite", c->dir);
    sqlite3 *db;
    sq_ok(sqlite3_open(path, &db), db, "open");
    sq_ok(sqlite3_exec(db,
                       "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                       "CREATE TABLE logs (id TEXT, created_ms INTEGER, account TEXT,"
                       " gateway TEXT, provider TEXT, model TEXT, path TEXT, status INTEGER,"
                       " success INTEGER, cached INTEGER, step INTEGER, attempts INTEGER,"
                       " tokens_in INTEGER, tokens_out INTEGER, cost REAL, duration REAL,"
                       " ttfb REAL, metadata TEXT, event_id TEXT, request_content_type TEXT,"
                       " response_content_type TEXT, request_body BLOB, response_body BLOB,"
                       " feedback INTEGER, score REAL);"
                       "CREATE INDEX logs_time ON logs(created_ms);"
                       "CREATE INDEX logs_provider ON logs(provider);"
                       "CREATE INDEX logs_model ON logs(model);"
                       "CREATE INDEX logs_status ON logs(status);",
                       NULL, NULL, NULL),
          db, "schema");
    if (!c->fsync)
        sq_ok(sqlite3_exec(db, "PRAGMA synchronous=OFF", NULL, NULL, NULL), db, "pragma");
    sqlite3_stmt *st;
    sq_ok(sqlite3_prepare_v2(db,
                             "INSERT INTO logs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                             "?,?,?,0,NULL)",
                             -1, &st, NULL),
          db, "prepare");
    uint64_t t0 = pl_time_mono_ns();
    for (long i = 0; i < c->n; i += group) {
        sq_ok(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db, "begin");
        for (long k = i; k < i + group && k < c->n; k++) {
            const ls_record *r = &recs[k].r;
            int a = 1;
            sqlite3_bind_text(st, a++, r->id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, a++, r->created_ms);
            sqlite3_bind_text(st, a++, r->account, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->gateway, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->provider, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->model, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->path, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, a++, r->status);
            sqlite3_bind_int(st, a++, r->success);
            sqlite3_bind_int(st, a++, r->cached);
            sqlite3_bind_int(st, a++, r->step);
            sqlite3_bind_int(st, a++, r->attempts);
            sqlite3_bind_int64(st, a++, (sqlite3_int64)r->tokens_in);
            sqlite3_bind_int64(st, a++, (sqlite3_int64)r->tokens_out);
            sqlite3_bind_double(st, a++, r->cost);
            sqlite3_bind_double(st, a++, r->duration_ms);
            sqlite3_bind_double(st, a++, r->ttfb_ms);
            sqlite3_bind_text(st, a++, r->metadata, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->event_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->request_content_type, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, a++, r->response_content_type, -1, SQLITE_STATIC);
            sqlite3_bind_blob(st, a++, r->request_body, (int)r->request_body_len, SQLITE_STATIC);
            sqlite3_bind_blob(st, a++, r->response_body, (int)r->response_body_len,
                              SQLITE_STATIC);
            sq_ok(sqlite3_step(st), db, "insert");
            sqlite3_reset(st);
        }
        sq_ok(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db, "commit");
    }
    double secs = (double)(pl_time_mono_ns() - t0) / 1e9;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return secs;
}
#endif

/* ======================================================================== */
/* Main                                                                     */
/* ======================================================================== */

static void usage(void)
{
    fprintf(stderr, "usage: logstore_bench [-t THREADS] [-n RECORDS] [-d DIR] [-i INTERVAL_US]"
                    " [-g MAX_GROUP] [-r RATE] [--no-fsync] [--no-sqlite] [--sync-n N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    cfg c = {.threads = 4, .n = 200000, .sync_n = 4000, .interval_us = 2000,
             .max_group = 4096, .fsync = true, .sqlite = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-fsync"))
            c.fsync = false;
        else if (!strcmp(a, "--no-sqlite"))
            c.sqlite = false;
        else if (i + 1 >= argc)
            usage();
        else if (!strcmp(a, "-r"))
            c.rate = atof(argv[++i]);
        else if (!strcmp(a, "-t"))
            c.threads = atoi(argv[++i]);
        else if (!strcmp(a, "-n"))
            c.n = atol(argv[++i]);
        else if (!strcmp(a, "-d"))
            c.dir = argv[++i];
        else if (!strcmp(a, "-i"))
            c.interval_us = (uint32_t)atol(argv[++i]);
        else if (!strcmp(a, "-g"))
            c.max_group = (uint32_t)atol(argv[++i]);
        else if (!strcmp(a, "--sync-n"))
            c.sync_n = atol(argv[++i]);
        else
            usage();
    }
    if (c.threads < 1 || c.n < 1)
        usage();
    pl_log_configure(PL_LOG_WARN, PL_LOG_FORMAT_KV);
    char tmpl[] = "/tmp/logstore-bench-XXXXXX";
    bool own_dir = !c.dir;
    if (own_dir && !(c.dir = mkdtemp(tmpl))) {
        perror("mkdtemp");
        return 1;
    }
    long nrec = c.n > c.sync_n ? c.n : c.sync_n;
    brec *recs = malloc((size_t)nrec * sizeof *recs);
    if (!recs)
        return 1;
    int64_t t0 = pl_time_wall_ms();
    for (long i = 0; i < nrec; i++)
        make_record(&recs[i], i, t0);
    double load[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(la);
    }
    if (c.rate > 0)
        printf("offered load: %.0f records/s, paced per millisecond\n", c.rate);
    printf("logstore_bench: %ld records, %d threads, fsync=%s, commit interval %u us, "
           "max group %u, dir %s, cpus %ld, load %.2f\n",
           c.n, c.threads, c.fsync ? "on" : "off", c.interval_us, c.max_group, c.dir,
           sysconf(_SC_NPROCESSORS_ONLN), load[0]);

    /* Phase 1: throughput. */
    commits cm = {0};
    ls_store *s = open_store(&c, "outpost", &cm);
    pthread_t th[256];
    worker w[256];
    int nt = c.threads > 256 ? 256 : c.threads;
    uint64_t *appended_at = calloc((size_t)c.n + 1, sizeof *appended_at);
    uint64_t start = pl_time_mono_ns();
    for (int i = 0; i < nt; i++) {
        w[i] = (worker){.s = s, .recs = recs, .from = i, .step = nt, .to = c.n,
                        .rate = c.rate / nt, .start_ns = start, .appended_at = appended_at};
        pthread_create(&th[i], NULL, append_main, &w[i]);
    }
    uint64_t last = 0, retries = 0;
    for (int i = 0; i < nt; i++) {
        pthread_join(th[i], NULL);
        if (w[i].last_seq > last)
            last = w[i].last_seq;
        retries += w[i].retries;
    }
    uint64_t appended = pl_time_mono_ns();
    if (ls_wait(s, last, -1) != 0) {
        fprintf(stderr, "ls_wait failed\n");
        return 1;
    }
    double secs = (double)(pl_time_mono_ns() - start) / 1e9;
    ls_stats st;
    ls_stats_get(s, &st);
    ls_close(s); /* the last groups' observer calls are all in */
    double rate = (double)c.n / secs;
    double group = cm.n ? (double)cm.records / (double)cm.n : 0;
    uint64_t bytes = st.bytes_on_disk;
    printf("outpost  : %9.0f durable records/s  (%.1f MB/s, %.0f B/record on disk), %.2f s; "
           "appends done after %.2f s\n",
           rate, (double)bytes / secs / 1e6, (double)bytes / (double)c.n, secs,
           (double)(appended - start) / 1e9);
    double a50, a99, amax;
    ack_latency(&cm, appended_at, c.n, &a50, &a99, &amax);
    printf("           %zu groups, %.0f records/group, commit (write+fdatasync) p50 %.2f ms, "
           "p99 %.2f ms; append-to-durable p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
           "-EAGAIN retries %" PRIu64 "\n",
           cm.n, group, pct(cm.ns, cm.n, 0.5), pct(cm.ns, cm.n, 0.99), a50, a99, amax, retries);
    /* Recovery: reopen what phase 1 wrote (every byte is read and checked). */
    {
        commits cr = {0};
        uint64_t t_open = pl_time_mono_ns();
        ls_store *r = open_store(&c, "outpost", &cr);
        double open_s = (double)(pl_time_mono_ns() - t_open) / 1e9;
        ls_stats rs;
        ls_stats_get(r, &rs);
        ls_close(r);
        commits_free(&cr);
        printf("reopen   : %.2f s for %" PRIu64 " records (%.0f MB/s), %.0f bytes of memory per "
               "record\n",
               open_s, rs.records_live, (double)rs.bytes_on_disk / open_s / 1e6,
               (double)rs.memory_bytes / (double)(rs.records_live ? rs.records_live : 1));
    }
    free(appended_at);

    /* Phase 2: per-record acknowledgement latency (sync_logs). */
    if (c.sync_n > 0) {
        commits cm2 = {0};
        s = open_store(&c, "outpost-sync", &cm2);
        size_t per = (size_t)(c.sync_n / nt + 1);
        uint64_t *lat = malloc(per * (size_t)nt * sizeof *lat);
        uint64_t t1 = pl_time_mono_ns();
        for (int i = 0; i < nt; i++) {
            w[i] = (worker){.s = s, .recs = recs, .from = i, .step = nt, .to = c.sync_n,
                            .lat = lat + (size_t)i * per};
            pthread_create(&th[i], NULL, sync_main, &w[i]);
        }
        size_t nl = 0;
        for (int i = 0; i < nt; i++) {
            pthread_join(th[i], NULL);
            memmove(lat + nl, w[i].lat, w[i].nlat * sizeof *lat);
            nl += w[i].nlat;
        }
        double s2 = (double)(pl_time_mono_ns() - t1) / 1e9;
        ls_close(s);
        printf("sync_logs: %d threads append+wait each record: %.0f records/s, ack latency p50 "
               "%.2f ms, p99 %.2f ms (%.0f records/group)\n",
               nt, (double)nl / s2, pct(lat, nl, 0.5), pct(lat, nl, 0.99),
               cm2.n ? (double)cm2.records / (double)cm2.n : 0);
        free(lat);
        commits_free(&cm2);
    }

#ifdef LOGSTORE_BENCH_SQLITE
    if (c.sqlite) {
        long g = group >= 1 ? (long)(group + 0.5) : 1;
        double sq = sqlite_run(&c, recs, g);
        printf("sqlite   : %9.0f durable records/s  (%s, WAL, synchronous=%s, %ld per "
               "transaction, 4 indexes), %.2f s\n",
               (double)c.n / sq, sqlite3_libversion(), c.fsync ? "FULL" : "OFF", g, sq);
        printf("ratio outpost/sqlite: %.1fx\n", rate / ((double)c.n / sq));
    }
#else
    if (c.sqlite)
        printf("sqlite   : not built (libsqlite3-dev missing)\n");
#endif
    commits_free(&cm);
    free(recs);
    if (own_dir) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", c.dir);
    }
    return 0;
}
