/*
 * Helpers shared by the log-store tests (test_logstore*.c): a deterministic
 * record generator, opening a store in a temp dir, collecting ids.
 */
#ifndef TEST_LOGSTORE_UTIL_H
#define TEST_LOGSTORE_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "logstore/ls_internal.h"
#include "logstore/ls_store.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "test_support.h"

static const char *const TL_PROVIDERS[] = {"openai", "workers-ai", "anthropic"};
static const char *const TL_MODELS[] = {"gpt-4o-mini", "@cf/meta/llama-3.1-8b", "claude-3",
                                        "gpt-4o"};
static const int TL_STATUS[] = {200, 200, 429, 500};

/* What the generator put in record i (strings in its buffers). */
typedef struct tl_rec {
    ls_record r;
    char gateway[16], meta[128], req[64], resp[96], event[32];
} tl_rec;

static inline void tl_make(tl_rec *t, int i, int64_t created_ms)
{
    memset(t, 0, sizeof *t);
    snprintf(t->gateway, sizeof t->gateway, "gw%d", i % 3);
    snprintf(t->meta, sizeof t->meta, "{\"user\":\"u%d\",\"n\":%d,\"flag\":%s}", i % 4, i % 3,
             i % 2 ? "true" : "false");
    snprintf(t->req, sizeof t->req, "{\"prompt\":\"request %d\"}", i);
    snprintf(t->resp, sizeof t->resp, "{\"response\":\"answer number %d\"}", i);
    snprintf(t->event, sizeof t->event, "ev-%d", i);
    ls_record *r = &t->r;
    r->created_ms = created_ms;
    r->account = "acct";
    r->gateway = t->gateway;
    r->provider = TL_PROVIDERS[i % 3];
    r->model = TL_MODELS[i % 4];
    r->path = "/v1/chat/completions";
    r->status = TL_STATUS[i % 4];
    r->success = r->status == 200;
    r->cached = i % 5 == 0;
    r->step = i % 2;
    r->attempts = 1 + i % 3;
    r->tokens_in = 10 + (uint64_t)i;
    r->tokens_out = 20 + (uint64_t)i;
    r->cost = 0.0001 * i;
    r->duration_ms = (double)((i * 7) % 100);
    r->ttfb_ms = 1.5;
    r->metadata = t->meta;
    r->event_id = t->event;
    r->request_content_type = "application/json";
    r->response_content_type = "application/json";
    r->request_body = t->req;
    r->request_body_len = strlen(t->req);
    r->response_body = t->resp;
    r->response_body_len = strlen(t->resp);
}

static inline ls_store *tl_open_opts(ls_opts *o)
{
    ls_store *s = NULL;
    char err[256];
    int rc = ls_open(o, &s, err, sizeof err);
    cr_assert_eq(rc, 0, "ls_open: %d %s", rc, err);
    return s;
}

static inline ls_store *tl_open(const char *dir)
{
    ls_opts o;
    ls_opts_init(&o, dir);
    o.commit_interval_us = 200;
    return tl_open_opts(&o);
}

/* Appends and waits. */
static inline void tl_put(ls_store *s, ls_record *r)
{
    uint64_t seq;
    int rc = ls_append(s, r, &seq);
    cr_assert_eq(rc, 0, "ls_append: %d", rc);
    cr_assert_eq(ls_wait(s, seq, 10000), 0);
}

static inline int tl_count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), sl = strlen(suffix);
        if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

/* Paths of the segment files, sorted; returns the count. */
static inline int tl_segments(const char *dir, char paths[][512], int max)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t no;
        if (ls_seg_name_parse(de->d_name, &no) && n < max)
            snprintf(paths[n++], 512, "%s/%s", dir, de->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(paths[i], paths[j]) > 0) {
                char tmp[512];
                memcpy(tmp, paths[i], 512);
                memcpy(paths[i], paths[j], 512);
                memcpy(paths[j], tmp, 512);
            }
    return n;
}

static inline long tl_file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return (long)st.st_size;
}

/* Every page of ls_list (newest first) for f, as a malloc'd array of ids. */
static inline size_t tl_list_all(ls_store *s, const ls_filter *f, size_t page, bool asc,
                                 char (**ids)[LS_ID_LEN + 1])
{
    size_t n = 0, cap = 64;
    *ids = malloc(cap * sizeof **ids);
    char cursor[LS_CURSOR_LEN] = "";
    for (;;) {
        json_t *items = NULL;
        char next[LS_CURSOR_LEN];
        int rc = ls_list(s, f, cursor, page, asc, &items, next, NULL);
        cr_assert_eq(rc, 0, "ls_list: %d", rc);
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it) {
            if (n == cap) {
                cap *= 2;
                *ids = realloc(*ids, cap * sizeof **ids);
            }
            const char *id = json_string_value(json_object_get(it, "id"));
            cr_assert_not_null(id);
            snprintf((*ids)[n++], LS_ID_LEN + 1, "%s", id);
        }
        json_decref(items);
        if (!next[0])
            break;
        strcpy(cursor, next);
    }
    return n;
}

#endif
