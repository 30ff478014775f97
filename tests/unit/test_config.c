/*
 * op_config: loading the example, defaults, size strings, path resolution,
 * lookups, and the exact FILE:LINE:COLUMN message of every error class
 * (fixtures in tests/data/config/). Ends with truncation/mutation loops that
 * feed damaged configs through the parser: run under ASan they catch
 * over-reads, leaks and crashes.
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/op_config.h"
#include "platform/pl_file.h"

#define FIXTURES OUTPOST_SOURCE_DIR "/tests/data/config/"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Asserts errs holds exactly want (NULL-terminated), each as "NAME:" + want. */
static void assert_errors(const op_config_errors *errs, const char *name,
                          const char *const *want)
{
    size_t nw = 0;
    while (want[nw])
        nw++;
    for (size_t i = 0; i < errs->n; i++)
        cr_log_info("got: %s", errs->items[i].message);
    cr_assert_eq(errs->n, nw, "expected %zu errors, got %zu", nw, errs->n);
    for (size_t i = 0; i < nw; i++) {
        char expect[1024];
        snprintf(expect, sizeof expect, "%s:%s", name, want[i]);
        cr_assert_str_eq(errs->items[i].message, expect);
    }
}

static void expect_fixture_errors(const char *fixture, const char *const *want)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, FIXTURES "%s", fixture);
    op_config *cfg = (op_config *)0x1;
    op_config_errors errs;
    cr_assert_eq(op_config_load(path, &cfg, &errs), -1);
    cr_assert_null(cfg);
    assert_errors(&errs, path, want);
    op_config_errors_free(&errs);
}

static void expect_text_errors(const char *text, const char *const *want)
{
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_parse("t.yaml", "/cfg", text, strlen(text), &cfg, &errs), -1);
    cr_assert_null(cfg);
    assert_errors(&errs, "t.yaml", want);
    op_config_errors_free(&errs);
}

static op_config *parse_ok(const char *text, const char *base_dir)
{
    op_config *cfg = NULL;
    op_config_errors errs;
    int rc = op_config_parse("t.yaml", base_dir, text, strlen(text), &cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        cr_log_error("%s", errs.items[i].message);
    cr_assert_eq(rc, 0);
    cr_assert_eq(errs.n, 0);
    cr_assert_not_null(cfg);
    return cfg;
}

static char *real_source_dir(void)
{
    char *r = realpath(OUTPOST_SOURCE_DIR, NULL);
    cr_assert_not_null(r);
    return r;
}

static void assert_path(const char *got, const char *dir, const char *rel)
{
    char want[PATH_MAX];
    snprintf(want, sizeof want, "%s%s", dir, rel);
    cr_assert_not_null(got);
    cr_assert_str_eq(got, want);
}

/* ------------------------------------------------------------------------ */
/* Good configs                                                             */
/* ------------------------------------------------------------------------ */

Test(config, example_loads_with_its_values)
{
    op_config *cfg = NULL;
    op_config_errors errs;
    const char *path = OUTPOST_SOURCE_DIR "/examples/outpost.yaml";
    int rc = op_config_load(path, &cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        cr_log_error("%s", errs.items[i].message);
    cr_assert_eq(rc, 0);
    char *src = real_source_dir();

    cr_assert_str_eq(cfg->path, path);
    assert_path(cfg->base_dir, src, "/examples");
    cr_assert_str_eq(cfg->server.listen_host, "127.0.0.1");
    cr_assert_eq(cfg->server.listen_port, 8787);
    cr_assert_eq(cfg->server.workers, 0);
    cr_assert_eq(cfg->server.max_body_bytes, 10u << 20);
    cr_assert_eq(cfg->server.max_header_bytes, 32768);
    cr_assert_eq(cfg->server.max_connections, 1024);
    cr_assert_eq(cfg->server.idle_timeout_s, 60);
    cr_assert_eq(cfg->server.request_timeout_s, 300);
    cr_assert_eq(cfg->server.shutdown_grace_s, 30);
    cr_assert_eq(cfg->server.pos.line, 9);
    cr_assert_eq(cfg->server.pos.column, 3);
    cr_assert_eq(cfg->log.level, PL_LOG_INFO);
    cr_assert_eq(cfg->log.format, PL_LOG_FORMAT_KV);
    assert_path(cfg->data_dir, src, "/var");
    cr_assert_eq(cfg->cpu_threads, 0);
    cr_assert_eq(cfg->n_plugin_dirs, 1);
    assert_path(cfg->plugin_dirs[0], src, "/build/plugins");

    cr_assert_eq(cfg->n_accounts, 1);
    cr_assert_str_eq(cfg->accounts[0].id, "local");
    cr_assert_str_eq(cfg->accounts[0].name, "Local");
    cr_assert_eq(cfg->accounts[0].n_tokens, 0);
    cr_assert_eq(op_config_find_account(cfg, "local"), &cfg->accounts[0]);
    /* The bundled models, as `make models` fetches them. */
    cr_assert_eq(cfg->n_models, 2);
    cr_assert_str_eq(cfg->models[0].id, "@local/smollm2-135m-instruct");
    cr_assert_str_eq(cfg->models[0].plugin, "llama");
    cr_assert_str_eq(cfg->models[0].task, "text-generation");
    assert_path(cfg->models[0].path, src, "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    cr_assert_eq(cfg->models[0].n_aliases, 2);
    cr_assert_str_eq(cfg->models[1].id, "@local/all-minilm-l6-v2");
    cr_assert_str_eq(cfg->models[1].plugin, "bert");
    cr_assert_str_eq(cfg->models[1].task, "text-embeddings");
    assert_path(cfg->models[1].path, src, "/models/all-MiniLM-L6-v2");

    assert_path(cfg->policy.lib_dir, src, "/lua");
    cr_assert_eq(cfg->policy.memory_bytes, 8u << 20);
    cr_assert_eq(cfg->policy.instructions, 1000000);
    cr_assert_eq(cfg->policy.n_files, 1);
    assert_path(cfg->policy.files[0], src, "/lua/examples/route.lua");
    cr_assert_eq(cfg->policy.file_pos[0].line, 68);
    cr_assert_eq(cfg->policy.file_pos[0].column, 11);
    free(src);
    op_config_free(cfg);
}

Test(config, full_fixture_every_key)
{
    op_config *cfg = NULL;
    op_config_errors errs;
    int rc = op_config_load(FIXTURES "good_full.yaml", &cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        cr_log_error("%s", errs.items[i].message);
    cr_assert_eq(rc, 0);
    char *src = real_source_dir();
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/tests/data/config", src);

    cr_assert_str_eq(cfg->server.listen_host, "::1");
    cr_assert_eq(cfg->server.listen_port, 9000);
    cr_assert_eq(cfg->server.workers, 4);
    cr_assert_eq(cfg->server.max_body_bytes, 65536);
    cr_assert_eq(cfg->server.max_header_bytes, 16384);
    cr_assert_eq(cfg->server.max_connections, 2000);
    cr_assert_eq(cfg->server.idle_timeout_s, 5);
    cr_assert_eq(cfg->server.request_timeout_s, 120);
    cr_assert_eq(cfg->server.shutdown_grace_s, 0);
    cr_assert_eq(cfg->log.level, PL_LOG_DEBUG);
    cr_assert_eq(cfg->log.format, PL_LOG_FORMAT_JSON);
    assert_path(cfg->data_dir, dir, "/state");
    cr_assert_eq(cfg->cpu_threads, 8);
    cr_assert_eq(cfg->n_plugin_dirs, 2);
    assert_path(cfg->plugin_dirs[0], dir, "/plugins");
    cr_assert_str_eq(cfg->plugin_dirs[1], "/opt/outpost/plugins");

    cr_assert_eq(cfg->n_accounts, 2);
    const op_config_account *a = op_config_find_account(cfg, "acme_1");
    cr_assert_not_null(a);
    cr_assert_str_eq(a->name, "ACME Inc.");
    cr_assert_eq(a->n_tokens, 2);
    cr_assert_str_eq(a->tokens[0].name, "ci");
    uint8_t want[PL_SHA256_LEN];
    pl_sha256("test", 4, want); /* 9f86d0...: the fixture's first hash */
    cr_assert_arr_eq(a->tokens[0].sha256, want, PL_SHA256_LEN);
    cr_assert_eq(a->tokens[0].pos.line, 24);
    cr_assert_eq(a->tokens[0].pos.column, 9);
    cr_assert_eq(a->tokens[1].sha256[0], 0x60); /* upper-case hex accepted */
    const op_config_account *local = op_config_find_account(cfg, "local");
    cr_assert_not_null(local);
    cr_assert_str_eq(local->name, "local"); /* defaults to the id */
    cr_assert_null(op_config_find_account(cfg, "nobody"));

    cr_assert_eq(cfg->n_models, 2);
    const op_config_model *m = &cfg->models[0];
    cr_assert_str_eq(m->id, "@local/echo");
    cr_assert_str_eq(m->plugin, "echo");
    cr_assert_str_eq(m->task, "text-generation");
    cr_assert_null(m->path);
    cr_assert_str_eq(m->description, "Echoes the prompt");
    cr_assert_eq(m->n_aliases, 2);
    cr_assert_str_eq(m->aliases[1], "echo");
    cr_assert_eq(m->n_options, 4);
    cr_assert_str_eq(m->options[0].key, "threads");
    cr_assert_str_eq(m->options[0].value, "2");
    cr_assert_str_eq(m->options[1].value, "true");
    cr_assert_str_eq(m->options[2].value, "0.5");
    cr_assert_str_eq(m->options[3].value, "x y");
    cr_assert_eq(m->pos.line, 30);
    cr_assert_eq(m->pos.column, 5);
    assert_path(cfg->models[1].path, src, "/tests/data/models/embed");
    cr_assert_str_eq(cfg->models[1].task, "text-embeddings");

    cr_assert_str_eq(cfg->policy.lib_dir, "/usr/share/outpost/lua");
    cr_assert_eq(cfg->policy.memory_bytes, 1u << 20);
    cr_assert_eq(cfg->policy.instructions, 5000);
    cr_assert_eq(cfg->policy.n_files, 2);
    assert_path(cfg->policy.files[0], dir, "/route.lua");
    assert_path(cfg->policy.files[1], dir, "/limits.lua");
    cr_assert_eq(cfg->policy.file_pos[1].line, 48);
    cr_assert_eq(cfg->policy.file_pos[1].column, 22);
    free(src);
    op_config_free(cfg);
}

Test(config, defaults)
{
    op_config *cfg = parse_ok("server:\n  listen: 0.0.0.0:0\n", "/etc/outpost");
    cr_assert_str_eq(cfg->path, "t.yaml");
    cr_assert_str_eq(cfg->base_dir, "/etc/outpost");
    cr_assert_str_eq(cfg->server.listen_host, "0.0.0.0");
    cr_assert_eq(cfg->server.listen_port, 0);
    cr_assert_eq(cfg->server.workers, 0);
    cr_assert_eq(cfg->server.max_body_bytes, 10u << 20);
    cr_assert_eq(cfg->server.max_header_bytes, 32u << 10);
    cr_assert_eq(cfg->server.max_connections, 1024);
    cr_assert_eq(cfg->server.idle_timeout_s, 60);
    cr_assert_eq(cfg->server.request_timeout_s, 300);
    cr_assert_eq(cfg->server.shutdown_grace_s, 30);
    cr_assert_eq(cfg->log.level, PL_LOG_INFO);
    cr_assert_eq(cfg->log.format, PL_LOG_FORMAT_KV);
    cr_assert_str_eq(cfg->data_dir, "/etc/outpost/var");
    cr_assert_eq(cfg->cpu_threads, 0);
    cr_assert_eq(cfg->n_plugin_dirs, 0);
    cr_assert_eq(cfg->n_accounts, 0);
    cr_assert_eq(cfg->n_models, 0);
    cr_assert_null(cfg->policy.lib_dir);
    cr_assert_eq(cfg->policy.memory_bytes, 8u << 20);
    cr_assert_eq(cfg->policy.instructions, 1000000);
    cr_assert_eq(cfg->policy.n_files, 0);
    op_config_free(cfg);
}

Test(config, null_values_of_optional_keys_mean_default)
{
    op_config *cfg = parse_ok("server:\n  listen: h:1\n  workers:\nlog:\naccounts: ~\n"
                              "policy:\n  lib_dir: null\n",
                              NULL);
    cr_assert_eq(cfg->server.workers, 0);
    cr_assert_eq(cfg->n_accounts, 0);
    cr_assert_null(cfg->policy.lib_dir);
    cr_assert_str_eq(cfg->data_dir, "./var"); /* no base_dir: left relative */
    op_config_free(cfg);
}

Test(config, size_strings)
{
    static const struct {
        const char *text;
        size_t bytes;
    } ok[] = {
        {"1", 1},
        {"4096", 4096},
        {"1_000", 1000},
        {"64KiB", 64 << 10},
        {"64Ki", 64 << 10},
        {"10MiB", 10 << 20},
        {"10 MiB", 10 << 20},
        {"10mib", 10 << 20},
        {"1GiB", 1u << 30},
        {"2TiB", 0}, /* over the 1 TiB cap: error, see below */
        {"1kB", 1000},
        {"1K", 1000},
        {"3MB", 3000000},
        {"1GB", 1000000000},
        {"512B", 512},
        {"\"8MiB\"", 8 << 20},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "server:\n  listen: h:1\n  max_body_bytes: %s\n", ok[i].text);
        if (ok[i].bytes == 0) {
            expect_text_errors(text,
                               (const char *const[]){
                                   "3:19: server.max_body_bytes must be between 1 and "
                                   "1099511627776 bytes, got 2TiB",
                                   NULL});
            continue;
        }
        op_config *cfg = parse_ok(text, NULL);
        cr_assert_eq(cfg->server.max_body_bytes, ok[i].bytes, "%s", ok[i].text);
        op_config_free(cfg);
    }
    static const char *const bad[] = {"ten", "1.5MiB", "-1", "10 XB", "MiB", "_1",
                                      "10MiBs", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "server:\n  listen: h:1\n  max_body_bytes: %s\n", bad[i]);
        op_config *cfg = NULL;
        op_config_errors errs;
        cr_assert_eq(op_config_parse("t.yaml", NULL, text, strlen(text), &cfg, &errs), -1,
                     "%s", bad[i]);
        cr_assert_eq(errs.n, 1);
        cr_assert(strstr(errs.items[0].message, "t.yaml:3:19: ") == errs.items[0].message,
                  "%s", errs.items[0].message);
        op_config_errors_free(&errs);
    }
}

Test(config, relative_paths_resolve_against_the_config_dir)
{
    static const struct {
        const char *base, *rel, *want;
    } cases[] = {
        {"/srv/outpost/conf", "var", "/srv/outpost/conf/var"},
        {"/srv/outpost/conf", "./a/b", "/srv/outpost/conf/a/b"},
        {"/srv/outpost/conf", "../var", "/srv/outpost/var"},
        {"/srv/outpost/conf/", "../../x", "/srv/x"},
        {"/srv", "../../../x", "/x"},
        {"/srv", "..", "/"},
        {"/srv/outpost/conf", "/abs/path", "/abs/path"},
        {"/srv/outpost/conf", "a/../b", "/srv/outpost/conf/a/../b"}, /* inner ".." kept */
        {"conf", "../x", "x"},
        {"conf", "../../x", "../x"},
        {"../conf", "../../x", "../../x"},
        {".", "../x", "../x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "server:\n  listen: h:1\ndata_dir: \"%s\"\n", cases[i].rel);
        op_config *cfg = parse_ok(text, cases[i].base);
        cr_assert_str_eq(cfg->data_dir, cases[i].want, "base %s rel %s", cases[i].base,
                         cases[i].rel);
        op_config_free(cfg);
    }
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\nplugins: {dirs: [p, /q]}\n"
                              "models: [{id: m, plugin: p, task: text-generation, path: m.gguf}]\n"
                              "policy: {lib_dir: lua, files: [a.lua]}\n",
                              "/b");
    cr_assert_str_eq(cfg->plugin_dirs[0], "/b/p");
    cr_assert_str_eq(cfg->plugin_dirs[1], "/q");
    cr_assert_str_eq(cfg->models[0].path, "/b/m.gguf");
    cr_assert_str_eq(cfg->policy.lib_dir, "/b/lua");
    cr_assert_str_eq(cfg->policy.files[0], "/b/a.lua");
    op_config_free(cfg);
}

Test(config, listen_forms)
{
    static const struct {
        const char *text, *host;
        int port;
    } cases[] = {
        {"127.0.0.1:8787", "127.0.0.1", 8787},
        {"\"[::1]:8787\"", "::1", 8787},
        {"\"[::]:0\"", "::", 0},
        {"localhost:65535", "localhost", 65535},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "server:\n  listen: %s\n", cases[i].text);
        op_config *cfg = parse_ok(text, NULL);
        cr_assert_str_eq(cfg->server.listen_host, cases[i].host);
        cr_assert_eq(cfg->server.listen_port, cases[i].port);
        op_config_free(cfg);
    }
    expect_text_errors("server:\n  listen: 8787\n",
                       (const char *const[]){"2:11: expected HOST:PORT for server.listen (IPv6 "
                                             "as [::1]:8787), got '8787'",
                                             NULL});
    expect_text_errors("server:\n  listen: \"[::1]8787\"\n",
                       (const char *const[]){"2:11: expected HOST:PORT for server.listen (IPv6 "
                                             "as [::1]:8787), got '[::1]8787'",
                                             NULL});
    expect_text_errors("server:\n  listen: h:-1\n",
                       (const char *const[]){"2:11: expected HOST:PORT for server.listen (IPv6 "
                                             "as [::1]:8787), got 'h:-1'",
                                             NULL});
}

Test(config, lookup_by_id_and_alias)
{
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\n"
                              "models:\n"
                              "  - {id: '@local/a', plugin: p, task: text-generation,"
                              " aliases: ['@cf/a', a]}\n"
                              "  - {id: '@local/b', plugin: p, task: text-embeddings}\n",
                              NULL);
    cr_assert_eq(op_config_find_model(cfg, "@local/a"), &cfg->models[0]);
    cr_assert_eq(op_config_find_model(cfg, "@cf/a"), &cfg->models[0]);
    cr_assert_eq(op_config_find_model(cfg, "a"), &cfg->models[0]);
    cr_assert_eq(op_config_find_model(cfg, "@local/b"), &cfg->models[1]);
    cr_assert_null(op_config_find_model(cfg, "@local/c"));
    cr_assert_null(op_config_find_model(cfg, NULL));
    cr_assert_null(op_config_find_model(NULL, "a"));
    op_config_free(cfg);
}

Test(config, restart_required_names_the_first_changed_key)
{
    const char *base = "server: {listen: '127.0.0.1:1', workers: 2}\nlog: {level: info}\n";
    op_config *a = parse_ok(base, "/x");
    op_config *b = parse_ok("server: {listen: '127.0.0.1:1', workers: 2}\nlog: {level: debug}\n"
                            "accounts: [{id: z}]\npolicy: {instructions: 7}\n",
                            "/x");
    op_config *c = parse_ok("server: {listen: '127.0.0.1:2', workers: 2}\n", "/x");
    op_config *d = parse_ok("server: {listen: '127.0.0.1:1', workers: 3}\n", "/x");
    op_config *e = parse_ok("server: {listen: '127.0.0.1:1', workers: 2}\ndata_dir: v2\n", "/x");
    cr_assert_null(op_config_restart_required(a, b));
    cr_assert_str_eq(op_config_restart_required(a, c), "server.listen");
    cr_assert_str_eq(op_config_restart_required(a, d), "server.workers");
    cr_assert_str_eq(op_config_restart_required(a, e), "data_dir");
    op_config_free(a);
    op_config_free(b);
    op_config_free(c);
    op_config_free(d);
    op_config_free(e);
}

/* ------------------------------------------------------------------------ */
/* Error classes, with exact positions                                      */
/* ------------------------------------------------------------------------ */

Test(config_errors, wrong_types)
{
    expect_fixture_errors(
        "bad_types.yaml",
        (const char *const[]){
            "3:12: expected an integer for server.workers, got 'abc'",
            "4:19: expected a size (bytes, or a number with KiB, MiB, GiB, kB, MB, GB ...) for "
            "server.max_body_bytes, got 'ten'",
            "5:20: expected an integer for server.max_connections, got a sequence",
            "6:19: expected an integer for server.idle_timeout_s, got '1.5'",
            "7:6: expected a mapping for log, got 'warn'",
            "8:11: expected a sequence of mappings for accounts, got a mapping",
            "10:5: expected a mapping for models[0], got 'plugin'",
            "12:10: expected a sequence of strings for policy.files, got './route.lua'",
            NULL});
}

Test(config_errors, out_of_range)
{
    expect_fixture_errors(
        "bad_range.yaml",
        (const char *const[]){
            "2:11: port of server.listen must be between 0 and 65535, got 65536",
            "3:12: server.workers must be between 0 and 1024, got -1",
            "4:19: server.max_body_bytes must be between 1 and 1099511627776 bytes, got 0",
            "5:20: server.max_connections must be between 1 and 1000000, got 0",
            "6:19: server.idle_timeout_s must be between 1 and 86400, got 99999999999999999999",
            "7:21: server.shutdown_grace_s must be between 0 and 86400, got 86401",
            "10:14: devices.cpu.threads must be between 0 and 1024, got 1025",
            "12:17: policy.memory_bytes must be between 1 and 1099511627776 bytes, got 2TiB",
            "13:17: policy.instructions must be between 1 and 2147483647, got 0",
            NULL});
}

Test(config_errors, missing_required_keys_at_their_mapping)
{
    expect_fixture_errors("bad_missing.yaml",
                          (const char *const[]){
                              "2:3: missing required key 'listen' in server",
                              "4:5: missing required key 'id' in accounts[0]",
                              "6:9: missing required key 'name' in accounts[0].tokens[0]",
                              "8:5: missing required key 'plugin' in models[0]",
                              "8:5: missing required key 'task' in models[0]",
                              NULL});
    expect_fixture_errors("bad_missing_server.yaml",
                          (const char *const[]){"1:1: missing required key 'server' at top level",
                                                NULL});
    expect_text_errors("server:\n", (const char *const[]){
                                        "1:8: missing required key 'listen' in server", NULL});
    expect_text_errors("server:\n  listen:\n",
                       (const char *const[]){
                           "2:10: empty value for required key 'listen' in server", NULL});
}

Test(config_errors, duplicate_keys_and_ids)
{
    expect_fixture_errors(
        "bad_duplicates.yaml",
        (const char *const[]){
            "4:3: duplicate key 'workers' in server (first at 3:3)",
            "5:20: duplicate key 'level' in log (first at 5:7)",
            "11:9: duplicate token name 't' (first at 9:9)",
            "15:9: duplicate token sha256 (first at 9:9)",
            "17:9: duplicate account id 'a' (first at 7:9)",
            "22:26: duplicate model id or alias '@cf/one' (first at 22:15)",
            "23:9: duplicate model id or alias '@cf/one' (first at 22:15)",
            "26:1: duplicate key 'server' at top level (first at 1:1)",
            NULL});
}

Test(config_errors, model_id_equal_to_an_earlier_alias)
{
    expect_text_errors("server: {listen: 'h:1'}\n"
                       "models:\n"
                       "  - id: '@local/a'\n"
                       "    plugin: p\n"
                       "    task: text-generation\n"
                       "    aliases: ['@cf/x']\n"
                       "  - id: '@cf/x'\n"
                       "    plugin: p\n"
                       "    task: text-generation\n",
                       (const char *const[]){
                           "7:9: duplicate model id or alias '@cf/x' (first at 6:15)", NULL});
    /* and the other way round: an alias naming an earlier id */
    expect_text_errors("server: {listen: 'h:1'}\n"
                       "models:\n"
                       "  - {id: a, plugin: p, task: text-generation}\n"
                       "  - {id: b, plugin: p, task: text-generation, aliases: [a]}\n",
                       (const char *const[]){
                           "4:57: duplicate model id or alias 'a' (first at 3:10)", NULL});
    /* within one model, whichever comes first in the file is "first" */
    expect_text_errors("server: {listen: 'h:1'}\n"
                       "models:\n"
                       "  - {aliases: [a], id: a, plugin: p, task: text-generation}\n",
                       (const char *const[]){
                           "3:24: duplicate model id or alias 'a' (first at 3:16)", NULL});
}

Test(config_errors, unknown_enum_values_list_the_valid_ones)
{
    expect_fixture_errors(
        "bad_enum.yaml",
        (const char *const[]){
            "4:10: unknown value 'verbose' for log.level (expected one of: debug, info, warn, "
            "error, off)",
            "5:11: unknown value 'xml' for log.format (expected one of: kv, json)",
            "9:11: unknown value 'chat' for models[0].task (expected one of: text-generation, "
            "text-embeddings, text-classification)",
            NULL});
}

Test(config_errors, unknown_keys_with_suggestions)
{
    expect_fixture_errors(
        "bad_unknown.yaml",
        (const char *const[]){
            "2:3: unknown key 'listn' in server (did you mean 'listen'?)",
            "4:3: unknown key 'port' in server",
            "6:3: unknown key 'gpu' in devices (did you mean 'cpu'?)",
            "9:5: unknown key 'token' in accounts[0] (did you mean 'tokens'?)",
            "10:1: unknown key 'servers' at top level (did you mean 'server'?)",
            NULL});
}

Test(config_errors, bad_values)
{
    expect_fixture_errors(
        "bad_values.yaml",
        (const char *const[]){
            "2:11: expected HOST:PORT for server.listen (IPv6 as [::1]:8787), got '::1:8787'",
            "3:11: data_dir must not be empty",
            "5:9: accounts[0].id must be 1 to 64 characters of A-Z a-z 0-9 _ -, got 'has space'",
            "8:17: expected 64 hex digits for accounts[0].tokens[0].sha256 (the token's SHA-256, "
            "from: outpostctl hash-token TOKEN; value not shown)",
            "10:9: models[0].id must be 1 to 128 printable ASCII characters without spaces, got "
            "'@local/a b'",
            "11:13: models[0].plugin must be 1 to 64 characters of a-z 0-9 _ -, got 'Llama'",
            "13:19: models[0].aliases[1] must be 1 to 128 printable ASCII characters without "
            "spaces, got ''",
            "13:23: expected a string for models[0].aliases[2], got a mapping",
            "14:24: expected a scalar for models[0].options.threads, got a sequence",
            NULL});
}

Test(config_errors, token_secret_is_never_echoed)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, FIXTURES "bad_values.yaml");
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_load(path, &cfg, &errs), -1);
    for (size_t i = 0; i < errs.n; i++)
        cr_assert_null(strstr(errs.items[i].message, "my-secret-token"));
    op_config_errors_free(&errs);
}

Test(config_errors, yaml_syntax_error_at_problem_mark)
{
    expect_fixture_errors("bad_syntax.yaml",
                          (const char *const[]){"4:4: YAML syntax error: did not find expected "
                                                "',' or ']' (while parsing a flow sequence at "
                                                "3:12)",
                                                NULL});
    expect_text_errors("server:\n\tlisten: x\n",
                       (const char *const[]){
                           "2:1: YAML syntax error: found character that cannot start any token "
                           "(while scanning for the next token at 2:1)",
                           NULL});
    /* invalid UTF-8: a reader error, placed from its byte offset */
    expect_text_errors("server:\n  listen: h:1\nx: \xff\n",
                       (const char *const[]){"3:4: YAML syntax error: invalid leading UTF-8 octet",
                                             NULL});
}

Test(config_errors, anchors_aliases_and_tags_are_refused)
{
    expect_fixture_errors(
        "bad_alias.yaml",
        (const char *const[]){
            "1:9: anchors are not supported (&srv): write each value where it is used",
            "4:10: aliases are not supported (*srv): write each value where it is used",
            "5:12: tags are not supported (!!str)", NULL});
}

Test(config_errors, top_level_must_be_a_non_empty_mapping)
{
    expect_fixture_errors("bad_toplevel.yaml",
                          (const char *const[]){
                              "1:1: expected a mapping at top level, got a sequence", NULL});
    const char *empty_msg = "1:1: the configuration is empty: expected a mapping with at least "
                            "'server'";
    expect_fixture_errors("empty.yaml", (const char *const[]){empty_msg, NULL});
    expect_fixture_errors("comments_only.yaml", (const char *const[]){empty_msg, NULL});
    expect_text_errors("just text\n", (const char *const[]){
                                          "1:1: expected a mapping at top level, got 'just text'",
                                          NULL});
    expect_fixture_errors("bad_two_docs.yaml",
                          (const char *const[]){
                              "3:1: only one YAML document is allowed in a config file", NULL});
}

Test(config_errors, io_error_is_file_0_0)
{
    const char *path = FIXTURES "no_such_file.yaml";
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_load(path, &cfg, &errs), -1);
    assert_errors(&errs, path, (const char *const[]){"0:0: No such file or directory", NULL});
    op_config_errors_free(&errs);
    cr_assert_eq(op_config_load(FIXTURES, &cfg, &errs), -1);
    assert_errors(&errs, FIXTURES, (const char *const[]){"0:0: Is a directory", NULL});
    op_config_errors_free(&errs);
}

Test(config_errors, null_errs_is_allowed)
{
    op_config *cfg = (op_config *)0x1;
    cr_assert_eq(op_config_parse("t", NULL, "x: 1\n", 5, &cfg, NULL), -1);
    cr_assert_null(cfg);
}

Test(config_errors, many_errors_are_capped)
{
    size_t cap = 200 * 16 + 64;
    char *text = malloc(cap);
    size_t n = (size_t)snprintf(text, cap, "server: {listen: 'h:1'}\n");
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(text + n, cap - n, "k%03d: 1\n", i);
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_parse("t.yaml", NULL, text, n, &cfg, &errs), -1);
    cr_assert_eq(errs.n, 101);
    cr_assert_str_eq(errs.items[0].message, "t.yaml:2:1: unknown key 'k000' at top level");
    cr_assert_str_eq(errs.items[100].message, "t.yaml:0:0: 100 more errors not shown");
    op_config_errors_free(&errs);
    free(text);
}

/* ------------------------------------------------------------------------ */
/* Bounds                                                                   */
/* ------------------------------------------------------------------------ */

static char *write_temp(const char *text, size_t len)
{
    char *path = strdup("/tmp/outpost-test-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

/* A valid config padded with comments to exactly len bytes. */
static char *padded_config(size_t len)
{
    char *text = malloc(len + 1);
    const char *head = "server:\n  listen: 127.0.0.1:1\n";
    size_t hl = strlen(head);
    memcpy(text, head, hl);
    memset(text + hl, '#', len - hl);
    for (size_t i = hl + 79; i < len; i += 80)
        text[i] = '\n';
    text[len] = '\0';
    return text;
}

Test(config_bounds, file_of_exactly_1_mib_loads_one_byte_more_is_refused)
{
    char *text = padded_config(OP_CONFIG_MAX_BYTES);
    char *path = write_temp(text, OP_CONFIG_MAX_BYTES);
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_load(path, &cfg, &errs), 0);
    op_config_free(cfg);
    unlink(path);
    free(path);
    free(text);

    text = padded_config(OP_CONFIG_MAX_BYTES + 1);
    path = write_temp(text, OP_CONFIG_MAX_BYTES + 1);
    cr_assert_eq(op_config_load(path, &cfg, &errs), -1);
    assert_errors(&errs, path,
                  (const char *const[]){"0:0: file is larger than 1048576 bytes (1 MiB): refused",
                                        NULL});
    op_config_errors_free(&errs);
    cr_assert_eq(op_config_parse("t.yaml", NULL, text, OP_CONFIG_MAX_BYTES + 1, &cfg, &errs), -1);
    assert_errors(&errs, "t.yaml",
                  (const char *const[]){"0:0: file is larger than 1048576 bytes (1 MiB): refused",
                                        NULL});
    op_config_errors_free(&errs);
    unlink(path);
    free(path);
    free(text);
}

static char *nested(int levels)
{
    /* "server: ...\nx: " then `levels` flow sequences: the root mapping is
     * level 1, so x's value holds levels + 1 nested collections. */
    char *t = malloc(64 + 2 * (size_t)levels);
    size_t n = (size_t)sprintf(t, "server: {listen: 'h:1'}\nx: ");
    memset(t + n, '[', (size_t)levels);
    memset(t + n + levels, ']', (size_t)levels);
    t[n + 2 * (size_t)levels] = '\0';
    return t;
}

Test(config_bounds, nesting_deeper_than_32_is_refused)
{
    char *ok = nested(31); /* 32 levels in all */
    expect_text_errors(ok, (const char *const[]){"2:1: unknown key 'x' at top level", NULL});
    free(ok);
    char *deep = nested(32);
    expect_text_errors(deep, (const char *const[]){"2:35: nesting deeper than 32 levels", NULL});
    free(deep);
    char *huge = nested(200000); /* well under 1 MiB, far too deep */
    expect_text_errors(huge, (const char *const[]){"2:35: nesting deeper than 32 levels", NULL});
    free(huge);
}

/* ------------------------------------------------------------------------ */
/* Damaged input never crashes                                              */
/* ------------------------------------------------------------------------ */

/* Parses exactly len bytes from a heap block of that size, so a read past
 * the end is an ASan error instead of luck. */
static void parse_exact(const char *src, size_t len)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, src, len);
    op_config *cfg = NULL;
    op_config_errors errs;
    int rc = op_config_parse("f.yaml", "/base", buf, len, &cfg, &errs);
    if (rc == 0) {
        cr_assert_not_null(cfg);
        cr_assert_eq(errs.n, 0);
        op_config_free(cfg);
    } else {
        cr_assert_eq(rc, -1);
        cr_assert_null(cfg);
        cr_assert_geq(errs.n, 1);
        for (size_t i = 0; i < errs.n; i++)
            cr_assert(strncmp(errs.items[i].message, "f.yaml:", 7) == 0);
        op_config_errors_free(&errs);
    }
    free(buf);
}

Test(config_fuzz, every_prefix_of_a_valid_config)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(pl_file_read_all(FIXTURES "good_full.yaml", 1 << 20, &text, &len), 0);
    size_t ok = 0;
    for (size_t i = 0; i <= len; i++) {
        parse_exact(text, i);
        op_config *cfg = NULL;
        if (op_config_parse("f.yaml", "/base", text, i, &cfg, NULL) == 0) {
            ok++;
            op_config_free(cfg);
        }
    }
    cr_assert_gt(ok, 0); /* the whole file, at least */
    free(text);
}

Test(config_fuzz, byte_mutations_of_a_valid_config)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(pl_file_read_all(FIXTURES "good_full.yaml", 1 << 20, &text, &len), 0);
    static const char subst[] = {'[', '{', ':', '-', '&', '*', '!', '"', '\0', '\t', '\n', ' ',
                                 '#', '\xc3'};
    for (size_t i = 0; i < len; i++) {
        char saved = text[i];
        for (size_t j = 0; j < sizeof subst; j++) {
            text[i] = subst[j];
            parse_exact(text, len);
        }
        text[i] = saved;
    }
    free(text);
}
