/*
 * op_config: loading the example, defaults, size strings, path resolution,
 * lookups, and the exact FILE:LINE:COLUMN message of every error class
 * (fixtures in tests/data/config/); the AI gateway sections (gateways,
 * providers, prices, gateway:) with inline configs, including that no
 * provider secret reaches an error. Ends with truncation/mutation loops that
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

/* ------------------------------------------------------------------------ */
/* AI gateway: gateways, providers, prices, the gateway section             */
/* ------------------------------------------------------------------------ */

#define HASH_TEST "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

/* Every gateway key away from its default; line numbers in the comments. */
static const char gw_full[] =
    "server: {listen: '127.0.0.1:1'}\n"                  /* 1 */
    "accounts: [{id: local}, {id: acme}]\n"              /* 2 */
    "gateway:\n"                                         /* 3 */
    "  cache_bytes: 1GiB\n"                              /* 4 */
    "  upstream_threads: 4\n"                            /* 5 */
    "  log_commit_interval_us: 500\n"                    /* 6 */
    "  log_fsync: false\n"                               /* 7 */
    "  log_segment_bytes: 8MiB\n"                        /* 8 */
    "gateways:\n"                                        /* 9 */
    "  - account: local\n"                               /* 10 */
    "    id: default\n"                                  /* 11 */
    "    authentication: true\n"                         /* 12 */
    "    tokens:\n"                                      /* 13 */
    "      - name: app\n"                                /* 14 */
    "        sha256: \"" HASH_TEST "\"\n"                /* 15 */
    "    collect_logs: false\n"                          /* 16 */
    "    log_payloads: False\n"                          /* 17 */
    "    max_payload_bytes: 16MiB\n"                     /* 18 */
    "    retention: {max_logs: 0, max_age_s: 86400}\n"   /* 19 */
    "    cache_ttl_s: 31536000\n"                        /* 20 */
    "    request_timeout_ms: 3600000\n"                  /* 21 */
    "    max_attempts: 5\n"                              /* 22 */
    "    retry_delay_ms: 0\n"                            /* 23 */
    "    backoff: linear\n"                              /* 24 */
    "    rate_limit: {limit: 2.5, window_s: 1, technique: sliding}\n" /* 25 */
    "    sync_logs: TRUE\n"                              /* 26 */
    "    providers:\n"                                   /* 27 */
    "      - name: openai\n"                             /* 28 */
    "        kind: openai\n"                             /* 29 */
    "        base_url: https://api.openai.com/v1/\n"     /* 30 */
    "        api_key: \"sk-test-123\"\n"                 /* 31 */
    "        headers: {X-Org: abc, x-n: 2}\n"            /* 32 */
    "        timeout_ms: 1\n"                            /* 33 */
    "        connect_timeout_ms: 3600000\n"              /* 34 */
    "      - name: cf_2\n"                               /* 35 */
    "        kind: workers-ai\n"                         /* 36 */
    "        base_url: \"http://10.0.0.2:8787/client/v4/accounts/x\"\n" /* 37 */
    "  - account: acme\n"                                /* 38 */
    "    id: default\n"                                  /* 39 */
    "prices:\n"                                          /* 40 */
    "  - model: \"gpt-4o-mini\"\n"                       /* 41 */
    "    input: 0.15\n"                                  /* 42 */
    "    output: 0.60\n"                                 /* 43 */
    "  - {model: \"@local/x\", input: 1_000.5e-3, output: 7}\n"; /* 44 */

Test(config_gateway, full_config_parses_into_its_values)
{
    op_config *cfg = parse_ok(gw_full, "/cfg");
    cr_assert_eq(cfg->gateway.cache_bytes, 1u << 30);
    cr_assert_eq(cfg->gateway.upstream_threads, 4);
    cr_assert_eq(cfg->gateway.log_commit_interval_us, 500);
    cr_assert_eq(cfg->gateway.log_fsync, false);
    cr_assert_eq(cfg->gateway.log_segment_bytes, 8u << 20);
    cr_assert_eq(cfg->gateway.pos.line, 4);
    cr_assert_eq(cfg->gateway.pos.column, 3);

    cr_assert_eq(cfg->n_gateways, 2);
    const op_config_gateway *g = op_config_find_gateway(cfg, "local", "default");
    cr_assert_eq(g, &cfg->gateways[0]);
    cr_assert_eq(op_config_find_gateway(cfg, "acme", "default"), &cfg->gateways[1]);
    cr_assert_null(op_config_find_gateway(cfg, "local", "other"));
    cr_assert_null(op_config_find_gateway(cfg, "nobody", "default"));
    cr_assert_str_eq(g->account, "local");
    cr_assert_str_eq(g->id, "default");
    cr_assert_eq(g->pos.line, 10);
    cr_assert_eq(g->pos.column, 5);
    cr_assert(g->authentication);
    cr_assert_eq(g->n_tokens, 1);
    cr_assert_str_eq(g->tokens[0].name, "app");
    uint8_t want[PL_SHA256_LEN];
    pl_sha256("test", 4, want);
    cr_assert_arr_eq(g->tokens[0].sha256, want, PL_SHA256_LEN);
    cr_assert_eq(g->tokens[0].pos.line, 14);
    cr_assert_not(g->collect_logs);
    cr_assert_not(g->log_payloads);
    cr_assert_eq(g->max_payload_bytes, 16u << 20);
    cr_assert_eq(g->retention_max_logs, 0);
    cr_assert_eq(g->retention_max_age_s, 86400);
    cr_assert_eq(g->cache_ttl_s, 31536000);
    cr_assert_eq(g->request_timeout_ms, 3600000);
    cr_assert_eq(g->max_attempts, 5);
    cr_assert_eq(g->retry_delay_ms, 0);
    cr_assert_eq(g->backoff, OP_BACKOFF_LINEAR);
    cr_assert_float_eq(g->rate_limit, 2.5, 1e-12);
    cr_assert_float_eq(g->rate_limit_window_s, 1.0, 1e-12);
    cr_assert(g->rate_limit_sliding);
    cr_assert(g->sync_logs);

    cr_assert_eq(g->n_providers, 2);
    const op_config_provider *p = &g->providers[0];
    cr_assert_str_eq(p->name, "openai");
    cr_assert_eq(p->kind, OP_PROVIDER_OPENAI);
    cr_assert_str_eq(p->base_url, "https://api.openai.com/v1"); /* one '/' stripped */
    cr_assert_str_eq(p->api_key, "sk-test-123");
    cr_assert_null(p->api_key_env);
    cr_assert_eq(p->n_headers, 2);
    cr_assert_str_eq(p->headers[0].key, "X-Org");
    cr_assert_str_eq(p->headers[0].value, "abc");
    cr_assert_str_eq(p->headers[1].key, "x-n");
    cr_assert_str_eq(p->headers[1].value, "2");
    cr_assert_eq(p->timeout_ms, 1);
    cr_assert_eq(p->connect_timeout_ms, 3600000);
    cr_assert_eq(p->pos.line, 28);
    cr_assert_eq(p->pos.column, 9);
    p = &g->providers[1];
    cr_assert_str_eq(p->name, "cf_2");
    cr_assert_eq(p->kind, OP_PROVIDER_WORKERS_AI);
    cr_assert_str_eq(p->base_url, "http://10.0.0.2:8787/client/v4/accounts/x");
    cr_assert_null(p->api_key);
    cr_assert_eq(p->n_headers, 0);

    cr_assert_eq(cfg->n_prices, 2);
    cr_assert_str_eq(cfg->prices[0].model, "gpt-4o-mini");
    cr_assert_float_eq(cfg->prices[0].input_per_mtok, 0.15, 1e-12);
    cr_assert_float_eq(cfg->prices[0].output_per_mtok, 0.60, 1e-12);
    cr_assert_eq(cfg->prices[0].pos.line, 41);
    cr_assert_str_eq(cfg->prices[1].model, "@local/x");
    cr_assert_float_eq(cfg->prices[1].input_per_mtok, 1.0005, 1e-12);
    cr_assert_float_eq(cfg->prices[1].output_per_mtok, 7.0, 1e-12);
    op_config_free(cfg);
}

static void assert_gateway_defaults(const op_config_gateway *g)
{
    cr_assert_not(g->authentication);
    cr_assert_eq(g->n_tokens, 0);
    cr_assert(g->collect_logs);
    cr_assert(g->log_payloads);
    cr_assert_eq(g->max_payload_bytes, 64u << 10);
    cr_assert_eq(g->retention_max_logs, 10000000);
    cr_assert_eq(g->retention_max_age_s, 0);
    cr_assert_eq(g->cache_ttl_s, 0);
    cr_assert_eq(g->request_timeout_ms, 0);
    cr_assert_eq(g->max_attempts, 1);
    cr_assert_eq(g->retry_delay_ms, 100);
    cr_assert_eq(g->backoff, OP_BACKOFF_EXPONENTIAL);
    cr_assert_float_eq(g->rate_limit, 0.0, 0.0);
    cr_assert_float_eq(g->rate_limit_window_s, 60.0, 0.0);
    cr_assert_not(g->rate_limit_sliding);
    cr_assert_not(g->sync_logs);
}

static void assert_gateway_opts_defaults(const op_config_gateway_opts *o)
{
    cr_assert_eq(o->cache_bytes, 256u << 20);
    cr_assert_eq(o->upstream_threads, 1);
    cr_assert_eq(o->log_commit_interval_us, 2000);
    cr_assert(o->log_fsync);
    cr_assert_eq(o->log_segment_bytes, 64u << 20);
}

Test(config_gateway, every_default)
{
    /* No gateway section at all. */
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\n"
                              "accounts: [{id: local}]\n"
                              "gateways:\n"
                              "  - {account: local, id: a}\n"
                              "  - account: local\n"
                              "    id: b\n"
                              "    retention: {max_age_s: 5}\n"
                              "    rate_limit: {limit: 10}\n"
                              "    providers:\n"
                              "      - {name: up, base_url: 'http://h'}\n"
                              "prices: [{model: m}]\n",
                              NULL);
    assert_gateway_opts_defaults(&cfg->gateway);
    cr_assert_eq(cfg->gateway.pos.line, 0);
    cr_assert_eq(cfg->n_gateways, 2);
    assert_gateway_defaults(&cfg->gateways[0]);
    cr_assert_eq(cfg->gateways[0].n_providers, 0);
    /* a partly written sub-mapping keeps the defaults of its other keys */
    const op_config_gateway *b = &cfg->gateways[1];
    cr_assert_eq(b->retention_max_logs, 10000000);
    cr_assert_eq(b->retention_max_age_s, 5);
    cr_assert_float_eq(b->rate_limit, 10.0, 0.0);
    cr_assert_float_eq(b->rate_limit_window_s, 60.0, 0.0);
    cr_assert_not(b->rate_limit_sliding);
    cr_assert_eq(b->n_providers, 1);
    const op_config_provider *p = &b->providers[0];
    cr_assert_eq(p->kind, OP_PROVIDER_OPENAI);
    cr_assert_str_eq(p->base_url, "http://h");
    cr_assert_null(p->api_key);
    cr_assert_null(p->api_key_env);
    cr_assert_eq(p->n_headers, 0);
    cr_assert_eq(p->timeout_ms, 120000);
    cr_assert_eq(p->connect_timeout_ms, 10000);
    cr_assert_eq(cfg->n_prices, 1);
    cr_assert_float_eq(cfg->prices[0].input_per_mtok, 0.0, 0.0);
    cr_assert_float_eq(cfg->prices[0].output_per_mtok, 0.0, 0.0);
    op_config_free(cfg);

    /* The plain defaults config has no gateways and the section's defaults. */
    cfg = parse_ok("server: {listen: 'h:1'}\n", NULL);
    cr_assert_eq(cfg->n_gateways, 0);
    cr_assert_null(cfg->gateways);
    cr_assert_eq(cfg->n_prices, 0);
    assert_gateway_opts_defaults(&cfg->gateway);
    op_config_free(cfg);

    /* An empty section, and one with a single key, keep the other defaults;
     * null values mean "not set" as everywhere. */
    cfg = parse_ok("server: {listen: 'h:1'}\ngateway:\n", NULL);
    assert_gateway_opts_defaults(&cfg->gateway);
    op_config_free(cfg);
    cfg = parse_ok("server: {listen: 'h:1'}\naccounts: [{id: x}]\n"
                   "gateway: {upstream_threads: ~}\n"
                   "gateways: [{account: x, id: g, collect_logs: null, retention: ~,"
                   " rate_limit: , providers: []}]\n",
                   NULL);
    assert_gateway_opts_defaults(&cfg->gateway);
    assert_gateway_defaults(&cfg->gateways[0]);
    op_config_free(cfg);
    cfg = parse_ok("server: {listen: 'h:1'}\ngateway: {log_fsync: false}\n", NULL);
    cr_assert_not(cfg->gateway.log_fsync);
    cr_assert_eq(cfg->gateway.cache_bytes, 256u << 20);
    cr_assert_eq(cfg->gateway.upstream_threads, 1);
    cr_assert_eq(cfg->gateway.log_commit_interval_us, 2000);
    cr_assert_eq(cfg->gateway.log_segment_bytes, 64u << 20);
    op_config_free(cfg);
}

Test(config_gateway, numbers_booleans_and_urls)
{
    static const struct {
        const char *text;
        double want;
    } nums[] = {
        {"0", 0},          {"7", 7},         {"0.15", 0.15},  {"+2.5", 2.5},
        {".5", 0.5},       {"5.", 5},        {"1e3", 1000},   {"2.5E-1", 0.25},
        {"1_000.25", 1000.25}, {"\"3.5\"", 3.5}, {"-0", 0},   {"1e-400", 0},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        char text[160];
        snprintf(text, sizeof text, "server: {listen: 'h:1'}\nprices:\n  - model: m\n"
                                    "    input: %s\n", nums[i].text);
        op_config *cfg = parse_ok(text, NULL);
        cr_assert_float_eq(cfg->prices[0].input_per_mtok, nums[i].want, 1e-12, "%s",
                           nums[i].text);
        op_config_free(cfg);
    }
    static const char *const bools[][2] = {{"true", "1"},  {"True", "1"},  {"TRUE", "1"},
                                           {"false", "0"}, {"False", "0"}, {"'false'", "0"}};
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        char text[160];
        snprintf(text, sizeof text, "server: {listen: 'h:1'}\ngateway: {log_fsync: %s}\n",
                 bools[i][0]);
        op_config *cfg = parse_ok(text, NULL);
        cr_assert_eq(cfg->gateway.log_fsync, bools[i][1][0] == '1', "%s", bools[i][0]);
        op_config_free(cfg);
    }
    static const char *const urls[][2] = {
        {"http://h", "http://h"},
        {"https://h:8443/", "https://h:8443"},
        {"https://api.example.com/v1/openai/", "https://api.example.com/v1/openai"},
        {"\"http://[::1]:9/x\"", "http://[::1]:9/x"},
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        char text[200];
        snprintf(text, sizeof text,
                 "server: {listen: 'h:1'}\naccounts: [{id: a}]\ngateways:\n"
                 "  - {account: a, id: g, providers: [{name: p, base_url: %s}]}\n",
                 urls[i][0]);
        op_config *cfg = parse_ok(text, NULL);
        cr_assert_str_eq(cfg->gateways[0].providers[0].base_url, urls[i][1]);
        op_config_free(cfg);
    }
}

Test(config_gateway, api_key_env_is_read_at_load)
{
    const char *text = "server: {listen: 'h:1'}\n"
                       "accounts: [{id: a}]\n"
                       "gateways:\n"
                       "  - account: a\n"
                       "    id: g\n"
                       "    providers:\n"
                       "      - name: up\n"
                       "        base_url: https://u\n"
                       "        api_key_env: OUTPOST_TEST_KEY_1\n";
    cr_assert_eq(setenv("OUTPOST_TEST_KEY_1", "sk-from-env-42", 1), 0);
    op_config *cfg = parse_ok(text, NULL);
    cr_assert_str_eq(cfg->gateways[0].providers[0].api_key, "sk-from-env-42");
    cr_assert_str_eq(cfg->gateways[0].providers[0].api_key_env, "OUTPOST_TEST_KEY_1");
    op_config_free(cfg);

    unsetenv("OUTPOST_TEST_KEY_1");
    expect_text_errors(text, (const char *const[]){
                                 "9:22: environment variable OUTPOST_TEST_KEY_1 named by "
                                 "gateways[0].providers[0].api_key_env is not set (provider 'up')",
                                 NULL});
    /* set but empty, or holding what cannot go into a header: refused, unshown */
    static const char *const bad[] = {"", "sk-has space", "sk-new\nline-SECRET"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(setenv("OUTPOST_TEST_KEY_1", bad[i], 1), 0);
        expect_text_errors(text, (const char *const[]){
                                     "9:22: environment variable OUTPOST_TEST_KEY_1 named by "
                                     "gateways[0].providers[0].api_key_env must hold 1 to 4096 "
                                     "visible ASCII characters without spaces (provider 'up'; "
                                     "value not shown)",
                                     NULL});
    }
}

Test(config_gateway, restart_required_only_for_the_gateway_section)
{
    const char *base = "server: {listen: 'h:1'}\naccounts: [{id: a}]\n";
    op_config *a = parse_ok(base, "/x");
    /* gateways and prices apply live */
    op_config *b = parse_ok("server: {listen: 'h:1'}\naccounts: [{id: a}]\n"
                            "gateways: [{account: a, id: g, max_attempts: 3}]\n"
                            "prices: [{model: m, input: 1}]\n",
                            "/x");
    cr_assert_null(op_config_restart_required(a, b));
    static const struct {
        const char *section, *key;
    } cases[] = {
        {"{cache_bytes: 1MiB}", "gateway.cache_bytes"},
        {"{upstream_threads: 2}", "gateway.upstream_threads"},
        {"{log_commit_interval_us: 100}", "gateway.log_commit_interval_us"},
        {"{log_fsync: false}", "gateway.log_fsync"},
        {"{log_segment_bytes: 1GiB}", "gateway.log_segment_bytes"},
        {"{cache_bytes: 256MiB, log_fsync: true}", NULL}, /* the defaults, written out */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[200];
        snprintf(text, sizeof text, "%sgateway: %s\n", base, cases[i].section);
        op_config *c = parse_ok(text, "/x");
        const char *got = op_config_restart_required(a, c);
        if (cases[i].key)
            cr_assert_str_eq(got, cases[i].key);
        else
            cr_assert_null(got);
        op_config_free(c);
    }
    op_config_free(a);
    op_config_free(b);
}

/* The head every error case below shares: two accounts, lines 1-2. */
#define GW_HEAD "server: {listen: 'h:1'}\naccounts: [{id: local}, {id: acme}]\n"

Test(config_gateway_errors, unknown_keys_with_suggestions)
{
    expect_text_errors(GW_HEAD
                       "gateway:\n"                        /* 3 */
                       "  cache_byte: 1MiB\n"              /* 4 */
                       "gateways:\n"                       /* 5 */
                       "  - account: local\n"              /* 6 */
                       "    id: g\n"                       /* 7 */
                       "    max_atempts: 2\n"              /* 8 */
                       "    retention: {max_log: 1}\n"     /* 9 */
                       "    rate_limit: {windows: 1}\n"    /* 10 */
                       "    providers:\n"                  /* 11 */
                       "      - name: p\n"                 /* 12 */
                       "        base_url: http://h\n"      /* 13 */
                       "        apikey: sk-SECRET-1\n"     /* 14 */
                       "gatways: []\n"                     /* 15 */
                       "price: []\n",                      /* 16 */
                       (const char *const[]){
                           "4:3: unknown key 'cache_byte' in gateway (did you mean "
                           "'cache_bytes'?)",
                           "8:5: unknown key 'max_atempts' in gateways[0] (did you mean "
                           "'max_attempts'?)",
                           "9:17: unknown key 'max_log' in gateways[0].retention (did you mean "
                           "'max_logs'?)",
                           "10:18: unknown key 'windows' in gateways[0].rate_limit (did you mean "
                           "'window_s'?)",
                           "14:9: unknown key 'apikey' in gateways[0].providers[0] (did you mean "
                           "'api_key'?)",
                           "15:1: unknown key 'gatways' at top level (did you mean 'gateways'?)",
                           "16:1: unknown key 'price' at top level (did you mean 'prices'?)",
                           NULL});
}

Test(config_gateway_errors, unknown_account_at_the_value)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"
                       "  - account: locl\n"
                       "    id: a\n"
                       "  - {id: b, account: nobody}\n",
                       (const char *const[]){
                           "4:14: unknown account 'locl' for gateways[0].account (did you mean "
                           "'local'?)",
                           "6:22: unknown account 'nobody' for gateways[1].account: list it under "
                           "accounts",
                           NULL});
    /* accounts written after the gateways count too */
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\ngateways: [{account: late, id: g}]\n"
                              "accounts: [{id: late}]\n",
                              NULL);
    cr_assert_not_null(op_config_find_gateway(cfg, "late", "g"));
    op_config_free(cfg);
}

Test(config_gateway_errors, missing_keys_and_bad_ids)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"                                     /* 3 */
                       "  - {account: local}\n"                          /* 4 */
                       "  - {account: local, id: Default}\n"             /* 5 */
                       "  - {account: 'a b', id: g, providers: [{}]}\n"  /* 6 */
                       "prices: [{input: 1}]\n",                         /* 7 */
                       (const char *const[]){
                           "4:5: missing required key 'id' in gateways[0]",
                           "5:26: gateways[1].id must be 1 to 64 characters of a-z 0-9 _ -, got "
                           "'Default'",
                           "6:15: gateways[2].account must be 1 to 64 characters of A-Z a-z 0-9 "
                           "_ -, got 'a b'",
                           "6:41: missing required key 'name' in gateways[2].providers[0]",
                           "6:41: missing required key 'base_url' in gateways[2].providers[0]",
                           "7:10: missing required key 'model' in prices[0]",
                           NULL});
}

Test(config_gateway_errors, duplicates_name_both_places)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"                                       /* 3 */
                       "  - account: local\n"                              /* 4 */
                       "    id: default\n"                                 /* 5 */
                       "    tokens:\n"                                     /* 6 */
                       "      - {name: t, sha256: \"" HASH_TEST "\"}\n"    /* 7 */
                       "      - {name: t, sha256: \"" HASH_TEST "\"}\n"    /* 8 */
                       "    providers:\n"                                  /* 9 */
                       "      - {name: up, base_url: 'http://a'}\n"        /* 10 */
                       "      - {name: up, base_url: 'http://b'}\n"        /* 11 */
                       "  - {account: acme, id: default}\n"                /* 12: other account */
                       "  - {account: local, id: default}\n"               /* 13 */
                       "prices:\n"                                         /* 14 */
                       "  - {model: m, input: 1}\n"                        /* 15 */
                       "  - {model: m, input: 2}\n",                       /* 16 */
                       (const char *const[]){
                           "8:9: duplicate token name 't' (first at 7:9)",
                           "8:9: duplicate token sha256 (first at 7:9)",
                           "11:16: duplicate provider name 'up' (first at 10:16)",
                           "13:26: duplicate gateway id 'default' in account 'local' (first at "
                           "5:9)",
                           "16:13: duplicate price for model 'm' (first at 15:13)",
                           NULL});
    /* the same provider name in two gateways is fine */
    op_config *cfg = parse_ok(GW_HEAD "gateways:\n"
                                      "  - {account: local, id: a, providers: [{name: up, "
                                      "base_url: 'http://a'}]}\n"
                                      "  - {account: local, id: b, providers: [{name: up, "
                                      "base_url: 'http://a'}]}\n",
                              NULL);
    cr_assert_eq(cfg->n_gateways, 2);
    op_config_free(cfg);
}

Test(config_gateway_errors, reserved_provider_names_and_bad_kinds)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"
                       "  - account: local\n"
                       "    id: g\n"
                       "    providers:\n"
                       "      - {name: local, base_url: 'http://a'}\n"
                       "      - {name: workers-ai, base_url: 'http://a'}\n"
                       "      - {name: Up, base_url: 'http://a', kind: anthropic}\n",
                       (const char *const[]){
                           "7:16: gateways[0].providers[0].name 'local' is reserved for the "
                           "agent's own models (local, workers-ai): choose another name",
                           "8:16: gateways[0].providers[1].name 'workers-ai' is reserved for the "
                           "agent's own models (local, workers-ai): choose another name",
                           "9:16: gateways[0].providers[2].name must be 1 to 64 characters of "
                           "a-z 0-9 _ -, got 'Up'",
                           "9:48: unknown value 'anthropic' for gateways[0].providers[2].kind "
                           "(expected one of: openai, workers-ai)",
                           NULL});
}

Test(config_gateway_errors, bad_urls)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"                                            /* 3 */
                       "  - account: local\n"                                   /* 4 */
                       "    id: g\n"                                            /* 5 */
                       "    providers:\n"                                       /* 6 */
                       "      - {name: a, base_url: api.openai.com}\n"          /* 7 */
                       "      - {name: b, base_url: 'ftp://h'}\n"               /* 8 */
                       "      - {name: c, base_url: 'https://h/a b'}\n"         /* 9 */
                       "      - {name: d, base_url: 'https:///v1'}\n"           /* 10 */
                       "      - {name: e, base_url: 'https://h/v1?x=1'}\n"      /* 11 */
                       "      - {name: f, base_url: 'https://h/v1//'}\n"        /* 12 */
                       "      - {name: g, base_url: 'https://u:sk-SECRET-2@h'}\n" /* 13 */
                       "      - {name: h, base_url: 'http://'}\n"               /* 14 */
                       "      - {name: i, base_url: [x]}\n"                     /* 15 */
                       "      - {name: j, base_url: 'key@h'}\n",                /* 16 */
                       (const char *const[]){
                           "7:29: gateways[0].providers[0].base_url must start with http:// or "
                           "https://, got 'api.openai.com'",
                           "8:29: gateways[0].providers[1].base_url must start with http:// or "
                           "https://, got 'ftp://h'",
                           "9:29: gateways[0].providers[2].base_url must be printable ASCII "
                           "without spaces, got 'https://h/a b'",
                           "10:29: gateways[0].providers[3].base_url has no host, got "
                           "'https:///v1'",
                           "11:29: gateways[0].providers[4].base_url must not have a query or "
                           "fragment (API paths are appended to it), got 'https://h/v1?x=1'",
                           "12:29: gateways[0].providers[5].base_url must not end with '//', got "
                           "'https://h/v1//'",
                           "13:29: gateways[0].providers[6].base_url must not hold credentials "
                           "(user:password@): use api_key or headers (value not shown)",
                           "14:29: gateways[0].providers[7].base_url has no host, got 'http://'",
                           "15:29: expected a string for gateways[0].providers[8].base_url, got "
                           "a sequence",
                           "16:29: gateways[0].providers[9].base_url must start with http:// or "
                           "https://, got a value with '@' (not shown)",
                           NULL});
}

Test(config_gateway_errors, bad_enums_and_booleans)
{
    expect_text_errors(GW_HEAD
                       "gateway: {log_fsync: yes}\n"                              /* 3 */
                       "gateways:\n"                                              /* 4 */
                       "  - account: local\n"                                     /* 5 */
                       "    id: g\n"                                              /* 6 */
                       "    backoff: exponentail\n"                               /* 7 */
                       "    rate_limit: {technique: leaky}\n"                     /* 8 */
                       "    authentication: 1\n"                                  /* 9 */
                       "    sync_logs: [true]\n",                                 /* 10 */
                       (const char *const[]){
                           "3:22: expected true or false for gateway.log_fsync, got 'yes'",
                           "7:14: unknown value 'exponentail' for gateways[0].backoff (expected "
                           "one of: constant, linear, exponential)",
                           "8:29: unknown value 'leaky' for gateways[0].rate_limit.technique "
                           "(expected one of: fixed, sliding)",
                           "9:21: expected true or false for gateways[0].authentication, got '1'",
                           "10:16: expected true or false for gateways[0].sync_logs, got a "
                           "sequence",
                           NULL});
    expect_text_errors(GW_HEAD "gateway:\n  - {account: local, id: g}\n",
                       (const char *const[]){
                           "4:3: expected a mapping for gateway, got a sequence (the list of "
                           "gateways is 'gateways')",
                           NULL});
    expect_text_errors(GW_HEAD "gateways: [{account: local, id: g, retention: [1]}]\n",
                       (const char *const[]){
                           "3:47: expected a mapping for gateways[0].retention, got a sequence",
                           NULL});
}

Test(config_gateway_errors, out_of_range_numbers)
{
    expect_text_errors(
        GW_HEAD
        "gateway:\n"                                                         /* 3 */
        "  upstream_threads: 17\n"                                           /* 4 */
        "  log_commit_interval_us: 99\n"                                     /* 5 */
        "  log_segment_bytes: 1023KiB\n"                                     /* 6 */
        "  cache_bytes: 2TiB\n"                                              /* 7 */
        "gateways:\n"                                                        /* 8 */
        "  - account: local\n"                                               /* 9 */
        "    id: g\n"                                                        /* 10 */
        "    max_payload_bytes: 17MiB\n"                                     /* 11 */
        "    retention: {max_logs: -1, max_age_s: 3153600001}\n"             /* 12 */
        "    cache_ttl_s: 31536001\n"                                        /* 13 */
        "    request_timeout_ms: -1\n"                                       /* 14 */
        "    max_attempts: 0\n"                                              /* 15 */
        "    retry_delay_ms: 5001\n"                                         /* 16 */
        "    rate_limit: {limit: -1, window_s: 86401}\n"                     /* 17 */
        "    providers:\n"                                                   /* 18 */
        "      - {name: p, base_url: 'http://h', timeout_ms: 0, connect_timeout_ms: 3600001}\n",
        (const char *const[]){
            "4:21: gateway.upstream_threads must be between 1 and 16, got 17",
            "5:27: gateway.log_commit_interval_us must be between 100 and 1000000, got 99",
            "6:22: gateway.log_segment_bytes must be between 1048576 and 1073741824 bytes, got "
            "1023KiB",
            "7:16: gateway.cache_bytes must be between 0 and 1099511627776 bytes, got 2TiB",
            "11:24: gateways[0].max_payload_bytes must be between 0 and 16777216 bytes, got 17MiB",
            "12:27: gateways[0].retention.max_logs must be between 0 and 1000000000000, got -1",
            "12:42: gateways[0].retention.max_age_s must be between 0 and 3153600000, got "
            "3153600001",
            "13:18: gateways[0].cache_ttl_s must be between 0 and 31536000, got 31536001",
            "14:25: gateways[0].request_timeout_ms must be between 0 and 3600000, got -1",
            "15:19: gateways[0].max_attempts must be between 1 and 5, got 0",
            "16:21: gateways[0].retry_delay_ms must be between 0 and 5000, got 5001",
            "17:25: gateways[0].rate_limit.limit must be a finite number of at least 0, got -1",
            "17:39: gateways[0].rate_limit.window_s must be between 1 and 86400, got 86401",
            "19:53: gateways[0].providers[0].timeout_ms must be between 1 and 3600000, got 0",
            "19:76: gateways[0].providers[0].connect_timeout_ms must be between 1 and 3600000, "
            "got 3600001",
            NULL});
}

Test(config_gateway_errors, bad_floats)
{
    static const char *const bad[] = {"abc", "1.5.2", "1e", "e3", ".", "1,5", "0x10", ".inf",
                                      ".nan", "1__0", "_1", "1_", "1.5 USD", "--1", "1e+"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[160], want[200];
        snprintf(text, sizeof text, "server: {listen: 'h:1'}\nprices:\n  - model: m\n"
                                    "    output: \"%s\"\n", bad[i]);
        snprintf(want, sizeof want, "4:13: expected a number for prices[0].output, got '%s'",
                 bad[i]);
        expect_text_errors(text, (const char *const[]){want, NULL});
    }
    expect_text_errors("server: {listen: 'h:1'}\nprices:\n"
                       "  - {model: m, input: 1e999, output: -0.01}\n"
                       "  - {model: n, input: [1], output: 1}\n",
                       (const char *const[]){
                           "3:23: prices[0].input must be a finite number of at least 0, got "
                           "1e999",
                           "3:38: prices[0].output must be a finite number of at least 0, got "
                           "-0.01",
                           "4:23: expected a number for prices[1].input, got a sequence",
                           NULL});
    /* 80 characters and more are refused rather than cut */
    char text[256], digits[100];
    memset(digits, '1', 90);
    digits[90] = '\0';
    snprintf(text, sizeof text, "server: {listen: 'h:1'}\nprices: [{model: m, input: %s}]\n",
             digits);
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_parse("t.yaml", NULL, text, strlen(text), &cfg, &errs), -1);
    cr_assert_eq(errs.n, 1);
    cr_assert(strstr(errs.items[0].message, "t.yaml:2:28: expected a number for prices[0].input"),
              "%s", errs.items[0].message);
    op_config_errors_free(&errs);
}

Test(config_gateway_errors, headers)
{
    expect_text_errors(GW_HEAD
                       "gateways:\n"                                                   /* 3 */
                       "  - account: local\n"                                          /* 4 */
                       "    id: g\n"                                                   /* 5 */
                       "    providers:\n"                                              /* 6 */
                       "      - name: p\n"                                             /* 7 */
                       "        base_url: http://h\n"                                  /* 8 */
                       "        headers:\n"                                            /* 9 */
                       "          X-Ok: fine\n"                                        /* 10 */
                       "          \"Bad Name\": x\n"                                   /* 11 */
                       "          Content-Length: 5\n"                                 /* 12 */
                       "          X-Split: \"v\\r\\nX-Evil: sk-SECRET-3\"\n"          /* 13 */
                       "          X-List: [a]\n"                                       /* 14 */
                       "          X-Ok: again\n"                                       /* 15 */
                       "      - name: q\n"                                             /* 16 */
                       "        base_url: http://h\n"                                  /* 17 */
                       "        api_key: sk-SECRET-4\n"                                /* 18 */
                       "        headers: {authorization: 'Bearer sk-SECRET-5'}\n",     /* 19 */
                       (const char *const[]){
                           "11:11: gateways[0].providers[0].headers.Bad Name: not an HTTP header "
                           "name (1 to 128 of A-Z a-z 0-9 !#$%&'*+-.^_`|~)",
                           "12:11: gateways[0].providers[0].headers.Content-Length: the agent "
                           "sets this header itself; it cannot be configured",
                           "13:20: gateways[0].providers[0].headers.X-Split must not contain "
                           "control characters (provider 'p'; value not shown)",
                           "14:19: expected a scalar for gateways[0].providers[0].headers.X-List, "
                           "got a sequence",
                           "15:11: duplicate key 'X-Ok' in gateways[0].providers[0].headers "
                           "(first at 10:11)",
                           "19:19: gateways[0].providers[1]: an Authorization header and an api "
                           "key both set Authorization: keep one (provider 'q')",
                           NULL});
}

Test(config_gateway_errors, api_key_forms)
{
    unsetenv("OUTPOST_TEST_KEY_2");
    expect_text_errors(GW_HEAD
                       "gateways:\n"                                                   /* 3 */
                       "  - account: local\n"                                          /* 4 */
                       "    id: g\n"                                                   /* 5 */
                       "    providers:\n"                                              /* 6 */
                       "      - name: p\n"                                             /* 7 */
                       "        base_url: http://h\n"                                  /* 8 */
                       "        api_key: sk-SECRET-6\n"                                /* 9 */
                       "        api_key_env: OUTPOST_TEST_KEY_2\n"                     /* 10 */
                       "      - {name: q, base_url: 'http://h', api_key: 'sk SECRET-7'}\n" /* 11 */
                       "      - {name: r, base_url: 'http://h', api_key: ''}\n"        /* 12 */
                       "      - {name: s, base_url: 'http://h', api_key: {k: v}}\n"    /* 13 */
                       "      - {name: t, base_url: 'http://h', api_key_env: 9LIVES}\n" /* 14 */
                       "      - {api_key: \"sk-SECRET-8\\t\", name: Bad}\n",           /* 15 */
                       (const char *const[]){
                           "10:22: gateways[0].providers[0]: set api_key or api_key_env, not both "
                           "(provider 'p')",
                           "11:50: gateways[0].providers[1].api_key must be 1 to 4096 visible "
                           "ASCII characters without spaces (provider 'q'; value not shown)",
                           "12:50: gateways[0].providers[2].api_key must be 1 to 4096 visible "
                           "ASCII characters without spaces (provider 'r'; value not shown)",
                           "13:50: expected a string for gateways[0].providers[3].api_key, got a "
                           "mapping (provider 's')",
                           "14:54: gateways[0].providers[4].api_key_env must be an environment "
                           "variable name (A-Z a-z 0-9 _, not starting with a digit), got "
                           "'9LIVES'",
                           "15:9: missing required key 'base_url' in gateways[0].providers[5]",
                           "15:19: gateways[0].providers[5].api_key must be 1 to 4096 visible "
                           "ASCII characters without spaces (value not shown)",
                           "15:42: gateways[0].providers[5].name must be 1 to 64 characters of "
                           "a-z 0-9 _ -, got 'Bad'",
                           NULL});
}

/* Every kind of error a provider can have, each with its key in reach:
 * no message may carry any part of the secrets. */
Test(config_gateway_errors, api_key_never_appears_in_any_error)
{
    setenv("OUTPOST_TEST_KEY_3", "sk-SECRET-env\x01", 1);
    const char *text =
        GW_HEAD
        "gateways:\n"
        "  - account: nobody\n"
        "    id: g\n"
        "    max_attempts: 9\n"
        "    providers:\n"
        "      - name: local\n"
        "        base_url: 'https://user:sk-SECRET-a@h/v1//'\n"
        "        api_key: 'sk-SECRET-b with space'\n"
        "        api_key_env: NOT_SET_SECRET_VAR_ZZ\n"
        "        headers: {Authorization: \"Bearer sk-SECRET-c\\n\", 'X Y': sk-SECRET-d}\n"
        "        timeout_ms: -5\n"
        "        bogus: sk-SECRET-e\n"
        "      - name: local\n"
        "        kind: bogus\n"
        "        base_url: 'sk-SECRET-g@x'\n"
        "        api_key: \"sk-SECRET-h\\0\"\n"
        "      - name: ok\n"
        "        base_url: http://h\n"
        "        api_key_env: OUTPOST_TEST_KEY_3\n"
        "        api_key: [sk-SECRET-i]\n"
        "      - {name: ok2, base_url: 'http://h', api_key_env: OUTPOST_TEST_KEY_3,"
        " headers: {X-K: \"sk-SECRET-j\\0\"}}\n";
    op_config *cfg = NULL;
    op_config_errors errs;
    cr_assert_eq(op_config_parse("t.yaml", NULL, text, strlen(text), &cfg, &errs), -1);
    cr_assert_geq(errs.n, 10);
    for (size_t i = 0; i < errs.n; i++) {
        cr_log_info("%s", errs.items[i].message);
        cr_assert_null(strstr(errs.items[i].message, "SECRET"), "%s", errs.items[i].message);
    }
    op_config_errors_free(&errs);
    unsetenv("OUTPOST_TEST_KEY_3");
}

Test(config_gateway, example_has_the_default_gateway)
{
    op_config *cfg = NULL;
    op_config_errors errs;
    int rc = op_config_load(OUTPOST_SOURCE_DIR "/examples/outpost.yaml", &cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        cr_log_error("%s", errs.items[i].message);
    cr_assert_eq(rc, 0);
    const op_config_gateway *g = op_config_find_gateway(cfg, "local", "default");
    cr_assert_not_null(g);
    cr_assert_not(g->authentication);
    cr_assert(g->collect_logs);
    cr_assert(g->log_payloads);
    cr_assert_eq(g->n_providers, 0);
    assert_gateway_opts_defaults(&cfg->gateway);
    cr_assert_gt(cfg->gateway.pos.line, 0);
    op_config_free(cfg);
}

/* The gateway keys through the damage loops too. */
Test(config_fuzz, gateway_prefixes_and_mutations)
{
    size_t len = sizeof gw_full - 1;
    for (size_t i = 0; i <= len; i++)
        parse_exact(gw_full, i);
    char *text = malloc(len);
    memcpy(text, gw_full, len);
    static const char subst[] = {'[', '{', ':', '-', '"', '\0', '\n', ' ', '#', '\xc3'};
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

/* ------------------------------------------------------------------------ */
/* The vectorize: section                                                   */
/* ------------------------------------------------------------------------ */

Test(config_vectorize, every_default)
{
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\n", "/x");
    const op_config_vectorize *v = &cfg->vectorize;
    cr_assert(v->enabled);
    cr_assert_eq(v->max_dimensions, 1536);
    cr_assert_eq(v->max_indexes, 100);
    cr_assert(v->fsync);
    cr_assert_eq(v->snapshot_every_bytes, 64u << 20);
    cr_assert_eq(v->snapshot_every_mutations, 10000);
    cr_assert_eq(v->write_timeout_ms, 30000);
    cr_assert_eq(v->hnsw_m, 16);
    cr_assert_eq(v->hnsw_ef_construction, 200);
    cr_assert_eq(v->hnsw_ef_search, 64);
    cr_assert_eq(v->pos.line, 0);
    op_config_free(cfg);
}

Test(config_vectorize, full_section_parses_into_its_values)
{
    op_config *cfg = parse_ok("server: {listen: 'h:1'}\n"         /* 1 */
                              "vectorize:\n"                      /* 2 */
                              "  enabled: false\n"                /* 3 */
                              "  max_dimensions: 4096\n"          /* 4 */
                              "  max_indexes: 7\n"                /* 5 */
                              "  fsync: false\n"                  /* 6 */
                              "  snapshot_every_bytes: 8MiB\n"    /* 7 */
                              "  snapshot_every_mutations: 500\n" /* 8 */
                              "  write_timeout_ms: 1500\n"        /* 9 */
                              "  hnsw:\n"                         /* 10 */
                              "    m: 32\n"                       /* 11 */
                              "    ef_construction: 400\n"        /* 12 */
                              "    ef_search: 128\n",             /* 13 */
                              "/x");
    const op_config_vectorize *v = &cfg->vectorize;
    cr_assert_not(v->enabled);
    cr_assert_eq(v->max_dimensions, 4096);
    cr_assert_eq(v->max_indexes, 7);
    cr_assert_not(v->fsync);
    cr_assert_eq(v->snapshot_every_bytes, 8u << 20);
    cr_assert_eq(v->snapshot_every_mutations, 500);
    cr_assert_eq(v->write_timeout_ms, 1500);
    cr_assert_eq(v->hnsw_m, 32);
    cr_assert_eq(v->hnsw_ef_construction, 400);
    cr_assert_eq(v->hnsw_ef_search, 128);
    cr_assert_eq(v->pos.line, 3);
    cr_assert_eq(v->pos.column, 3);
    op_config_free(cfg);
}

Test(config_vectorize, errors_name_their_place)
{
    expect_text_errors("server: {listen: 'h:1'}\n"          /* 1 */
                       "vectorize:\n"                       /* 2 */
                       "  enabled: yes\n"                   /* 3 */
                       "  max_dimensions: 0\n"              /* 4 */
                       "  max_indexes: many\n"              /* 5 */
                       "  snapshot_every_bytes: 1KiB\n"     /* 6 */
                       "  snapshot_every_mutations: 0\n"    /* 7 */
                       "  hnsw: {m: 1, ef_search: 20000}\n" /* 8 */
                       "  max_dimension: 3\n",              /* 9 */
                       (const char *const[]){
                           "3:12: expected true or false for vectorize.enabled, got 'yes'",
                           "4:19: vectorize.max_dimensions must be between 1 and 65536, got 0",
                           "5:16: expected an integer for vectorize.max_indexes, got 'many'",
                           "6:25: vectorize.snapshot_every_bytes must be between 1048576 and "
                           "1099511627776 bytes, got 1KiB",
                           "7:29: vectorize.snapshot_every_mutations must be between 1 and "
                           "1000000000, got 0",
                           "8:13: vectorize.hnsw.m must be between 2 and 128, got 1",
                           "8:27: vectorize.hnsw.ef_search must be between 1 and 10000, got "
                           "20000",
                           "9:3: unknown key 'max_dimension' in vectorize (did you mean "
                           "'max_dimensions'?)",
                           NULL});
}

Test(config_vectorize, restart_required_for_every_key)
{
    const char *base = "server: {listen: 'h:1'}\n";
    op_config *a = parse_ok(base, "/x");
    static const struct {
        const char *section, *key;
    } cases[] = {
        {"{enabled: false}", "vectorize.enabled"},
        {"{max_dimensions: 2048}", "vectorize.max_dimensions"},
        {"{max_indexes: 5}", "vectorize.max_indexes"},
        {"{fsync: false}", "vectorize.fsync"},
        {"{snapshot_every_bytes: 1GiB}", "vectorize.snapshot_every_bytes"},
        {"{snapshot_every_mutations: 1}", "vectorize.snapshot_every_mutations"},
        {"{write_timeout_ms: 1}", "vectorize.write_timeout_ms"},
        {"{hnsw: {ef_search: 100}}", "vectorize.hnsw"},
        {"{max_dimensions: 1536, hnsw: {m: 16}}", NULL}, /* the defaults, written out */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[200];
        snprintf(text, sizeof text, "%svectorize: %s\n", base, cases[i].section);
        op_config *c = parse_ok(text, "/x");
        const char *got = op_config_restart_required(a, c);
        if (cases[i].key)
            cr_assert_str_eq(got, cases[i].key, "%s", cases[i].section);
        else
            cr_assert_null(got, "%s", cases[i].section);
        op_config_free(c);
    }
    op_config_free(a);
}
