/* gw_registry: config and API gateways side by side, persistence across
 * reopen, corrupt files skipped (never a crash), a failed write leaving the
 * set unchanged, settings from JSON, and lookups racing updates on threads
 * (run under ASan, a view used after its gateway was replaced would be
 * caught). */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/gw_registry.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "test_support.h"

/* A config with two gateways of account "acme", built by hand: the test
 * needs only what gw_registry reads from it. */
typedef struct test_cfg {
    op_config cfg;
    op_config_gateway gws[2];
} test_cfg;

static void test_cfg_init(test_cfg *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 2; i++)
        gw_gateway_defaults(&t->gws[i]);
    t->gws[0].account = "acme";
    t->gws[0].id = "zeta";
    t->gws[0].max_attempts = 3;
    t->gws[1].account = "acme";
    t->gws[1].id = "alpha";
    t->cfg.gateways = t->gws;
    t->cfg.n_gateways = 2;
}

static gw_registry *open_reg(const char *dir)
{
    char err[256] = "";
    gw_registry *reg = gw_registry_open(dir, err, sizeof err);
    cr_assert_not_null(reg, "%s", err);
    return reg;
}

static op_config_gateway settings(int attempts, int delay)
{
    op_config_gateway g;
    gw_gateway_defaults(&g);
    g.max_attempts = attempts;
    g.retry_delay_ms = delay;
    return g;
}

static void quiet(void) { pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV); }

TestSuite(gw_registry, .init = quiet);

Test(gw_registry, defaults_match_config_defaults)
{
    op_config_gateway g;
    gw_gateway_defaults(&g);
    cr_assert(g.collect_logs);
    cr_assert(g.log_payloads);
    cr_assert_eq(g.max_payload_bytes, 64 * 1024);
    cr_assert_eq(g.retention_max_logs, 10000000);
    cr_assert_eq(g.max_attempts, 1);
    cr_assert_eq(g.retry_delay_ms, 100);
    cr_assert_eq(g.backoff, OP_BACKOFF_EXPONENTIAL);
    cr_assert_eq(g.rate_limit_window_s, 60);
    cr_assert(!g.authentication);
    cr_assert_eq(g.n_providers, 0);
}

Test(gw_registry, id_alphabet)
{
    cr_assert(gw_id_valid("a"));
    cr_assert(gw_id_valid("my-gw_2"));
    char id[66];
    memset(id, 'a', 64);
    id[64] = '\0';
    cr_assert(gw_id_valid(id));
    id[64] = 'a';
    id[65] = '\0';
    cr_assert(!gw_id_valid(id));
    cr_assert(!gw_id_valid(""));
    cr_assert(!gw_id_valid(NULL));
    cr_assert(!gw_id_valid("Upper"));
    cr_assert(!gw_id_valid("a.b"));
    cr_assert(!gw_id_valid("../x"));
    cr_assert(!gw_id_valid("a b"));
}

Test(gw_registry, config_first_then_api)
{
    char *dir = ts_tmpdir();
    test_cfg t;
    test_cfg_init(&t);
    gw_registry *reg = open_reg(dir);
    gw_gateway_view v;

    cr_assert(gw_registry_get(reg, &t.cfg, "acme", "zeta", &v));
    cr_assert(!v.from_api);
    cr_assert_eq(v.cfg, &t.gws[0], "config views point into the config");
    cr_assert_eq(v.created_ms, 0);
    gw_gateway_view_release(&v);
    cr_assert(!gw_registry_get(reg, &t.cfg, "acme", "nope", &v));
    cr_assert_null(v.cfg);
    cr_assert(!gw_registry_get(reg, &t.cfg, "other", "zeta", &v), "account scoping");

    op_config_gateway s = settings(2, 250);
    s.account = "ignored";
    char err[256] = "";
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "beta", &s, &v, err, sizeof err), 0,
                 "%s", err);
    cr_assert(v.from_api);
    cr_assert_str_eq(v.cfg->account, "acme");
    cr_assert_str_eq(v.cfg->id, "beta");
    cr_assert_eq(v.cfg->max_attempts, 2);
    cr_assert_eq(v.cfg->retry_delay_ms, 250);
    cr_assert(v.created_ms > 0);
    cr_assert_eq(v.created_ms, v.modified_ms);
    gw_gateway_view_release(&v);
    cr_assert_null(v.ref_, "release zeroes the view");
    gw_gateway_view_release(&v); /* twice is harmless */

    cr_assert(gw_registry_get(reg, &t.cfg, "acme", "beta", &v));
    cr_assert(v.from_api);
    gw_gateway_view_release(&v);
    /* Without a config only the API ones exist. */
    cr_assert(!gw_registry_get(reg, NULL, "acme", "zeta", &v));
    cr_assert(gw_registry_get(reg, NULL, "acme", "beta", &v));
    gw_gateway_view_release(&v);

    /* Conflicts and read-only config gateways. */
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "beta", &s, NULL, err, sizeof err),
                 -EEXIST);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "zeta", &s, NULL, err, sizeof err),
                 -EEXIST);
    cr_assert(strstr(err, "config file"), "%s", err);
    cr_assert_eq(gw_registry_replace(reg, &t.cfg, "acme", "zeta", &s, NULL, err, sizeof err),
                 -EROFS);
    cr_assert(strstr(err, "defined in the config file"), "%s", err);
    cr_assert_eq(gw_registry_delete(reg, &t.cfg, "acme", "alpha", err, sizeof err), -EROFS);
    cr_assert_eq(gw_registry_replace(reg, &t.cfg, "acme", "nope", &s, NULL, err, sizeof err),
                 -ENOENT);
    cr_assert_eq(gw_registry_delete(reg, &t.cfg, "acme", "nope", err, sizeof err), -ENOENT);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "Bad.Id", &s, NULL, err, sizeof err),
                 -EINVAL);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "../etc", "x", &s, NULL, err, sizeof err),
                 -EINVAL, "an account that is no file name is refused");
    cr_assert_eq(gw_registry_api_count(reg), 1);

    gw_registry_close(reg);
    ts_tmpdir_remove(dir);
    free(dir);
}

typedef struct seen {
    char ids[16][GW_ID_MAX + 1];
    bool api[16];
    int n;
} seen;

static void collect(const gw_gateway_view *v, void *ctx)
{
    seen *s = ctx;
    cr_assert_lt(s->n, 16);
    snprintf(s->ids[s->n], sizeof s->ids[0], "%s", v->cfg->id);
    s->api[s->n] = v->from_api;
    s->n++;
}

Test(gw_registry, each_lists_config_then_api_by_id_and_shadows)
{
    char *dir = ts_tmpdir();
    test_cfg t;
    test_cfg_init(&t);
    gw_registry *reg = open_reg(dir);
    op_config_gateway s = settings(1, 100);
    char err[256];
    /* Created before the config had "alpha": a reload may add it later. */
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "alpha", &s, NULL, err, sizeof err), 0);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "mid", &s, NULL, err, sizeof err), 0);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acme", "beta", &s, NULL, err, sizeof err), 0);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acmf", "other", &s, NULL, err, sizeof err), 0);
    cr_assert_eq(gw_registry_create(reg, &t.cfg, "acm", "other2", &s, NULL, err, sizeof err), 0);

    seen got = {0};
    gw_registry_each(reg, &t.cfg, "acme", collect, &got);
    cr_assert_eq(got.n, 4, "zeta, alpha (config), beta, mid (api); api alpha shadowed");
    cr_assert_str_eq(got.ids[0], "zeta");
    cr_assert(!got.api[0]);
    cr_assert_str_eq(got.ids[1], "alpha");
    cr_assert(!got.api[1]);
    cr_assert_str_eq(got.ids[2], "beta");
    cr_assert(got.api[2]);
    cr_assert_str_eq(got.ids[3], "mid");

    /* The shadowed API gateway is back once the config drops its twin. */
    gw_gateway_view v;
    cr_assert(gw_registry_get(reg, &t.cfg, "acme", "alpha", &v));
    cr_assert(!v.from_api);
    gw_gateway_view_release(&v);
    t.cfg.n_gateways = 1;
    cr_assert(gw_registry_get(reg, &t.cfg, "acme", "alpha", &v));
    cr_assert(v.from_api);
    gw_gateway_view_release(&v);

    memset(&got, 0, sizeof got);
    gw_registry_each(reg, NULL, "acmf", collect, &got);
    cr_assert_eq(got.n, 1);
    cr_assert_str_eq(got.ids[0], "other");
    memset(&got, 0, sizeof got);
    gw_registry_each(reg, NULL, "nobody", collect, &got);
    cr_assert_eq(got.n, 0);

    gw_registry_close(reg);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(gw_registry, persists_across_reopen)
{
    char *dir = ts_tmpdir();
    char err[256] = "";
    gw_registry *reg = open_reg(dir);
    op_config_gateway s = settings(4, 1234);
    s.authentication = true;
    s.collect_logs = false;
    s.log_payloads = false;
    s.cache_ttl_s = 300;
    s.rate_limit = 10;
    s.rate_limit_window_s = 30;
    s.rate_limit_sliding = true;
    s.retention_max_logs = 0;
    s.backoff = OP_BACKOFF_LINEAR;
    s.max_payload_bytes = 1000;
    s.request_timeout_ms = 5000;
    s.retention_max_age_s = 86400;
    s.sync_logs = true;
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "keep", &s, NULL, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "gone", &s, NULL, err, sizeof err), 0);
    gw_gateway_view before;
    cr_assert(gw_registry_get(reg, NULL, "acme", "keep", &before));
    int64_t created = before.created_ms;
    usleep(5000);
    s.max_attempts = 5;
    gw_gateway_view after;
    cr_assert_eq(gw_registry_replace(reg, NULL, "acme", "keep", &s, &after, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(before.cfg->max_attempts, 4, "a held view keeps its settings");
    cr_assert_eq(after.cfg->max_attempts, 5);
    cr_assert_eq(after.created_ms, created);
    cr_assert_gt(after.modified_ms, created);
    int64_t modified = after.modified_ms;
    gw_gateway_view_release(&before);
    gw_gateway_view_release(&after);
    cr_assert_eq(gw_registry_delete(reg, NULL, "acme", "gone", err, sizeof err), 0, "%s", err);
    gw_registry_close(reg);

    reg = open_reg(dir);
    cr_assert_eq(gw_registry_api_count(reg), 1);
    gw_gateway_view v;
    cr_assert(!gw_registry_get(reg, NULL, "acme", "gone", &v));
    cr_assert(gw_registry_get(reg, NULL, "acme", "keep", &v));
    const op_config_gateway *g = v.cfg;
    cr_assert_eq(v.created_ms, created);
    cr_assert_eq(v.modified_ms, modified);
    cr_assert_eq(g->max_attempts, 5);
    cr_assert_eq(g->retry_delay_ms, 1234);
    cr_assert(g->authentication);
    cr_assert(!g->collect_logs);
    cr_assert(!g->log_payloads);
    cr_assert_eq(g->cache_ttl_s, 300);
    cr_assert_eq(g->rate_limit, 10);
    cr_assert_eq(g->rate_limit_window_s, 30);
    cr_assert(g->rate_limit_sliding);
    cr_assert_eq(g->retention_max_logs, 0);
    cr_assert_eq(g->backoff, OP_BACKOFF_LINEAR);
    cr_assert_eq(g->max_payload_bytes, 1000);
    cr_assert_eq(g->request_timeout_ms, 5000);
    cr_assert_eq(g->retention_max_age_s, 86400);
    cr_assert(g->sync_logs);
    gw_gateway_view_release(&v);
    gw_registry_close(reg);

    char path[512];
    snprintf(path, sizeof path, "%s/gateways/acme.keep.json", dir);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "one file per gateway, named ACCOUNT.ID.json");
    snprintf(path, sizeof path, "%s/gateways/acme.gone.json", dir);
    cr_assert_neq(stat(path, &st), 0, "deleted gateways leave no file");
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(gw_registry, corrupt_files_are_skipped)
{
    char *dir = ts_tmpdir();
    char err[256];
    gw_registry *reg = open_reg(dir);
    op_config_gateway s = settings(2, 100);
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "good", &s, NULL, err, sizeof err), 0);
    gw_registry_close(reg);

    char gdir[512];
    snprintf(gdir, sizeof gdir, "%s/gateways", dir);
    static const char *const bad[][2] = {
        {"acme.notjson.json", "{\"format\":1, \"account\":"},
        {"acme.empty.json", ""},
        {"acme.array.json", "[1,2,3]"},
        {"acme.nofmt.json", "{\"account\":\"acme\",\"id\":\"nofmt\",\"created_ms\":1,"
                            "\"modified_ms\":1}"},
        {"acme.fmt2.json", "{\"format\":2,\"account\":\"acme\",\"id\":\"fmt2\",\"created_ms\":1,"
                           "\"modified_ms\":1}"},
        {"acme.renamed.json", "{\"format\":1,\"account\":\"acme\",\"id\":\"other\","
                              "\"created_ms\":1,\"modified_ms\":1}"},
        {"acme.badval.json", "{\"format\":1,\"account\":\"acme\",\"id\":\"badval\","
                             "\"created_ms\":1,\"modified_ms\":1,\"max_attempts\":99}"},
        {"acme.badkey.json", "{\"format\":1,\"account\":\"acme\",\"id\":\"badkey\","
                             "\"created_ms\":1,\"modified_ms\":1,\"providers\":[{\"x\":1}]}"},
        {"acme.neg.json", "{\"format\":1,\"account\":\"acme\",\"id\":\"neg\","
                          "\"created_ms\":-5,\"modified_ms\":1}"},
        {"acme.dup.json", "{\"format\":1,\"format\":1,\"account\":\"acme\",\"id\":\"dup\","
                          "\"created_ms\":1,\"modified_ms\":1}"},
        {"bin.x.json", "\x01\xff\xfe{{{"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (bad[i][1])
            free(ts_write_file(gdir, bad[i][0], bad[i][1]));
    /* A directory named like a gateway file, a file too large to be one,
     * and a temp file left by a crash (removed at open). */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/acme.adir.json", gdir);
    cr_assert_eq(mkdir(sub, 0750), 0);
    char *big = malloc(200000);
    memset(big, ' ', 199999);
    big[199999] = '\0';
    big[0] = '{';
    big[199998] = '}';
    free(ts_write_file(gdir, "acme.big.json", big));
    free(big);
    free(ts_write_file(gdir, "acme.good.json.tmp", "{half"));
    free(ts_write_file(gdir, "README", "not a gateway"));

    reg = open_reg(dir);
    cr_assert_eq(gw_registry_api_count(reg), 1, "only the valid file loads");
    gw_gateway_view v;
    cr_assert(gw_registry_get(reg, NULL, "acme", "good", &v));
    cr_assert_eq(v.cfg->max_attempts, 2);
    gw_gateway_view_release(&v);
    cr_assert(!gw_registry_get(reg, NULL, "acme", "other", &v));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/acme.good.json.tmp", gdir);
    struct stat st;
    cr_assert_neq(stat(tmp, &st), 0, "the crash leftover is removed");
    snprintf(tmp, sizeof tmp, "%s/acme.badval.json", gdir);
    cr_assert_eq(stat(tmp, &st), 0, "skipped files stay for the operator");
    gw_registry_close(reg);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(gw_registry, failed_write_changes_nothing)
{
    char *dir = ts_tmpdir();
    char err[256] = "";
    gw_registry *reg = open_reg(dir);
    op_config_gateway s = settings(2, 100);
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "a", &s, NULL, err, sizeof err), 0);
    /* A directory where the temp file must go makes the open fail (root
     * ignores permissions, so permissions cannot). */
    char p[600];
    snprintf(p, sizeof p, "%s/gateways/acme.a.json.tmp", dir);
    cr_assert_eq(mkdir(p, 0750), 0);
    snprintf(p, sizeof p, "%s/gateways/acme.b.json.tmp", dir);
    cr_assert_eq(mkdir(p, 0750), 0);

    s.max_attempts = 5;
    int rc = gw_registry_replace(reg, NULL, "acme", "a", &s, NULL, err, sizeof err);
    cr_assert_eq(rc, -EISDIR, "rc %d", rc);
    cr_assert(strstr(err, "cannot save gateway"), "%s", err);
    gw_gateway_view v;
    cr_assert(gw_registry_get(reg, NULL, "acme", "a", &v));
    cr_assert_eq(v.cfg->max_attempts, 2, "the old settings stay");
    gw_gateway_view_release(&v);
    cr_assert_eq(gw_registry_create(reg, NULL, "acme", "b", &s, NULL, err, sizeof err), -EISDIR);
    cr_assert(!gw_registry_get(reg, NULL, "acme", "b", &v));
    cr_assert_eq(gw_registry_api_count(reg), 1);
    gw_registry_close(reg);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(gw_registry, open_fails_when_the_directory_cannot_exist)
{
    char *dir = ts_tmpdir();
    free(ts_write_file(dir, "gateways", "a file where the directory should be"));
    char err[256] = "";
    cr_assert_null(gw_registry_open(dir, err, sizeof err));
    cr_assert(strstr(err, "gateways"), "%s", err);
    ts_tmpdir_remove(dir);
    free(dir);
}

static int apply(op_config_gateway *g, const char *text, char *err, size_t errlen)
{
    json_error_t je;
    json_t *o = json_loads(text, JSON_DECODE_ANY, &je);
    cr_assert_not_null(o, "%s", text);
    int rc = gw_gateway_apply_json(g, o, err, errlen);
    json_decref(o);
    return rc;
}

Test(gw_registry, settings_from_json)
{
    op_config_gateway g;
    gw_gateway_defaults(&g);
    char err[256] = "";
    cr_assert_eq(apply(&g,
                       "{\"id\":\"x\",\"cache_ttl\":60,\"collect_logs\":false,"
                       "\"rate_limiting_interval\":10,\"rate_limiting_limit\":5.0,"
                       "\"rate_limiting_technique\":\"sliding\",\"authentication\":true,"
                       "\"log_management\":5000,\"log_management_strategy\":\"DELETE_OLDEST\","
                       "\"cache_invalidate_on_update\":true,\"logpush\":false,"
                       "\"max_attempts\":3,\"retry_delay_ms\":0,\"backoff\":\"constant\","
                       "\"log_payloads\":false,\"max_payload_bytes\":100,"
                       "\"request_timeout_ms\":900,\"log_max_age_s\":60,\"sync_logs\":true,"
                       "\"created_at\":\"2020-01-01T00:00:00Z\",\"source\":\"api\","
                       "\"providers\":[]}",
                       err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(g.cache_ttl_s, 60);
    cr_assert(!g.collect_logs);
    cr_assert_eq(g.rate_limit_window_s, 10);
    cr_assert_eq(g.rate_limit, 5);
    cr_assert(g.rate_limit_sliding);
    cr_assert(g.authentication);
    cr_assert_eq(g.retention_max_logs, 5000);
    cr_assert_eq(g.max_attempts, 3);
    cr_assert_eq(g.retry_delay_ms, 0);
    cr_assert_eq(g.backoff, OP_BACKOFF_CONSTANT);
    cr_assert(!g.log_payloads);
    cr_assert_eq(g.max_payload_bytes, 100);
    cr_assert_eq(g.request_timeout_ms, 900);
    cr_assert_eq(g.retention_max_age_s, 60);
    cr_assert(g.sync_logs);

    /* null: the default (log_management null: no limit, as Cloudflare). */
    cr_assert_eq(apply(&g, "{\"max_attempts\":null,\"backoff\":null,\"log_management\":null}",
                       err, sizeof err),
                 0);
    cr_assert_eq(g.max_attempts, 1);
    cr_assert_eq(g.backoff, OP_BACKOFF_EXPONENTIAL);
    cr_assert_eq(g.retention_max_logs, 0);
    /* each boolean back to its own default (collect_logs and log_payloads
     * default on, authentication and sync_logs off) */
    cr_assert_eq(apply(&g, "{\"collect_logs\":null,\"log_payloads\":null,"
                           "\"authentication\":null,\"sync_logs\":null}",
                       err, sizeof err),
                 0, "%s", err);
    cr_assert(g.collect_logs);
    cr_assert(g.log_payloads);
    cr_assert(!g.authentication);
    cr_assert(!g.sync_logs);

    static const char *const bad[][2] = {
        {"[]", "body"},
        {"{\"max_attempts\":6}", "max_attempts"},
        {"{\"max_attempts\":0}", "max_attempts"},
        {"{\"max_attempts\":2.5}", "max_attempts"},
        {"{\"max_attempts\":\"2\"}", "max_attempts"},
        {"{\"retry_delay_ms\":5001}", "retry_delay_ms"},
        {"{\"cache_ttl\":-1}", "cache_ttl"},
        {"{\"collect_logs\":1}", "collect_logs"},
        {"{\"rate_limiting_interval\":0}", "rate_limiting_interval"},
        {"{\"rate_limiting_limit\":-1}", "rate_limiting_limit"},
        {"{\"rate_limiting_technique\":\"leaky\"}", "rate_limiting_technique"},
        {"{\"backoff\":\"random\"}", "backoff"},
        {"{\"log_management_strategy\":\"STOP_INSERTING\"}", "log_management_strategy"},
        {"{\"logpush\":true}", "logpush"},
        {"{\"max_payload_bytes\":99999999}", "max_payload_bytes"},
        {"{\"providers\":[{\"name\":\"x\"}]}", "providers"},
        {"{\"colect_logs\":true}", "colect_logs: unknown field"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        op_config_gateway h;
        gw_gateway_defaults(&h);
        err[0] = '\0';
        cr_assert_eq(apply(&h, bad[i][0], err, sizeof err), -EINVAL, "%s", bad[i][0]);
        cr_assert(strncmp(err, bad[i][1], strlen(bad[i][1])) == 0, "%s -> %s", bad[i][0], err);
    }
}

Test(gw_registry, json_form)
{
    test_cfg t;
    test_cfg_init(&t);
    op_config_provider p = {.name = "openai", .kind = OP_PROVIDER_OPENAI,
                            .base_url = "https://api.openai.com/v1", .api_key = "sk-secret"};
    t.gws[0].providers = &p;
    t.gws[0].n_providers = 1;
    gw_gateway_view v = {.cfg = &t.gws[0]};
    json_t *o = gw_gateway_to_json(&v);
    cr_assert_not_null(o);
    char *s = json_dumps(o, JSON_COMPACT);
    cr_assert(strstr(s, "\"id\":\"zeta\""), "%s", s);
    cr_assert(strstr(s, "\"source\":\"config\""), "%s", s);
    cr_assert(strstr(s, "\"created_at\":null"), "%s", s);
    cr_assert(strstr(s, "\"max_attempts\":3"), "%s", s);
    cr_assert(strstr(s, "\"rate_limiting_interval\":60"), "%s", s);
    cr_assert(strstr(s, "\"log_management\":10000000"), "%s", s);
    cr_assert(strstr(s, "\"name\":\"openai\""), "%s", s);
    cr_assert_null(strstr(s, "sk-secret"), "never the provider key: %s", s);
    free(s);
    /* What GET shows, PUT accepts back (providers aside). */
    json_object_set_new(o, "providers", json_array());
    op_config_gateway g;
    gw_gateway_defaults(&g);
    char err[256] = "";
    cr_assert_eq(gw_gateway_apply_json(&g, o, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.max_attempts, 3);
    json_decref(o);

    v.from_api = true;
    v.created_ms = 1700000000123;
    v.modified_ms = 1700000000456;
    o = gw_gateway_to_json(&v);
    cr_assert_str_eq(json_string_value(json_object_get(o, "created_at")),
                     "2023-11-14T22:13:20.123Z");
    cr_assert_str_eq(json_string_value(json_object_get(o, "source")), "api");
    json_decref(o);
}

/* ---- concurrency: lookups racing replacements, creations, deletions ---- */

typedef struct race {
    gw_registry *reg;
    test_cfg *t;
    atomic_bool stop;
    atomic_long lookups;
    atomic_int bad;
} race;

static void *reader(void *arg)
{
    race *r = arg;
    while (!atomic_load(&r->stop)) {
        gw_gateway_view v;
        if (gw_registry_get(r->reg, &r->t->cfg, "acme", "hot", &v)) {
            /* The writer keeps retry_delay_ms == 10 * max_attempts: a torn
             * or freed gateway breaks it. */
            if (v.cfg->retry_delay_ms != 10 * v.cfg->max_attempts ||
                strcmp(v.cfg->id, "hot") != 0)
                atomic_fetch_add(&r->bad, 1);
            gw_gateway_view_release(&v);
        } else {
            atomic_fetch_add(&r->bad, 1);
        }
        if (gw_registry_get(r->reg, &r->t->cfg, "acme", "flicker", &v)) {
            if (strcmp(v.cfg->id, "flicker") != 0)
                atomic_fetch_add(&r->bad, 1);
            gw_gateway_view_release(&v);
        }
        if (gw_registry_get(r->reg, &r->t->cfg, "acme", "zeta", &v))
            gw_gateway_view_release(&v);
        atomic_fetch_add(&r->lookups, 1);
    }
    return NULL;
}

Test(gw_registry, lookups_race_updates)
{
    char *dir = ts_tmpdir();
    test_cfg t;
    test_cfg_init(&t);
    race r = {.reg = open_reg(dir), .t = &t};
    char err[256];
    op_config_gateway s = settings(1, 10);
    cr_assert_eq(gw_registry_create(r.reg, &t.cfg, "acme", "hot", &s, NULL, err, sizeof err), 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, reader, &r);
    for (int i = 0; i < 150; i++) {
        s = settings(1 + i % 5, 10 * (1 + i % 5));
        cr_assert_eq(gw_registry_replace(r.reg, &t.cfg, "acme", "hot", &s, NULL, err,
                                         sizeof err),
                     0, "%s", err);
        if (i % 2 == 0)
            cr_assert_eq(gw_registry_create(r.reg, &t.cfg, "acme", "flicker", &s, NULL, err,
                                            sizeof err),
                         0, "%s", err);
        else
            cr_assert_eq(gw_registry_delete(r.reg, &t.cfg, "acme", "flicker", err, sizeof err),
                         0, "%s", err);
    }
    atomic_store(&r.stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(atomic_load(&r.bad), 0);
    cr_assert_gt(atomic_load(&r.lookups), 100);
    gw_registry_close(r.reg);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* The hot path: one lookup per gateway request. Bound loose enough for
 * sanitizer builds; the release figure is printed (--verbose). */
Test(gw_registry, lookup_cost)
{
    char *dir = ts_tmpdir();
    test_cfg t;
    test_cfg_init(&t);
    gw_registry *reg = open_reg(dir);
    op_config_gateway s = settings(1, 100);
    char err[256];
    for (int i = 0; i < 500; i++) {
        char id[16];
        snprintf(id, sizeof id, "gw%03d", i);
        cr_assert_eq(gw_registry_create(reg, NULL, "acme", id, &s, NULL, err, sizeof err), 0);
    }
    const int n = 200000;
    uint64_t t0 = pl_time_mono_ns();
    int hits = 0;
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "gw%03d", i % 500);
        gw_gateway_view v;
        hits += gw_registry_get(reg, &t.cfg, "acme", id, &v);
        gw_gateway_view_release(&v);
    }
    double ns = (double)(pl_time_mono_ns() - t0) / n;
    cr_assert_eq(hits, n);
    cr_log_info("gw_registry_get: %.0f ns per lookup+release (500 API gateways, 2 config)", ns);
    cr_assert_lt(ns, 5000.0);
    gw_registry_close(reg);
    ts_tmpdir_remove(dir);
    free(dir);
}
