/*
 * Plugin host API table, called directly the way a plugin would: error
 * objects (codes clamped, messages copied and bounded, the static
 * out-of-memory error), log() naming its plugin, and accessors that must not
 * crash on NULL. Uses the host's internal header to build a table without a
 * loaded library.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform/pl_log.h"
#include "plugins/op_plugins_internal.h"

static const outpost_host_api *table(op_host_table *t, op_plugin *p)
{
    op_host_table_init(t, p);
    return &t->api;
}

Test(plugin_host_api, table_carries_the_abi_version_and_every_function)
{
    op_host_table t;
    const outpost_host_api *h = table(&t, NULL);
    cr_expect_eq(h->struct_size, sizeof(outpost_host_api));
    cr_expect_eq(h->abi_major, OUTPOST_PLUGIN_ABI_MAJOR);
    cr_expect_eq(h->abi_minor, OUTPOST_PLUGIN_ABI_MINOR);
    cr_expect(h->error_new && h->error_code && h->error_message && h->error_free && h->log &&
              h->request_model_id && h->request_task && h->request_body && h->request_stream &&
              h->request_cancelled && h->request_set_user && h->request_user &&
              h->request_emit && h->request_complete);
}

Test(plugin_host_api, errors_copy_the_message_and_clamp_unknown_codes)
{
    op_host_table t;
    const outpost_host_api *h = table(&t, NULL);
    char msg[] = "bad 'prompt'";
    outpost_error *e = h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, msg);
    msg[0] = 'X';
    cr_expect_eq(h->error_code(e), OUTPOST_ERR_INVALID_ARGUMENT);
    cr_expect_str_eq(h->error_message(e), "bad 'prompt'");
    h->error_free(e);

    e = h->error_new((outpost_error_code)0, NULL);
    cr_expect_eq(h->error_code(e), OUTPOST_ERR_INTERNAL);
    cr_expect_str_eq(h->error_message(e), "");
    h->error_free(e);
    e = h->error_new((outpost_error_code)99, "x");
    cr_expect_eq(h->error_code(e), OUTPOST_ERR_INTERNAL);
    h->error_free(e);
    h->error_free(NULL);
}

Test(plugin_host_api, long_messages_are_truncated_on_a_character_boundary)
{
    op_host_table t;
    const outpost_host_api *h = table(&t, NULL);
    size_t n = 10000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i += 2) {
        big[i] = (char)0xC3; /* "é", two bytes */
        big[i + 1] = (char)0xA9;
    }
    big[n] = '\0';
    outpost_error *e = h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, big);
    size_t len = strlen(h->error_message(e));
    cr_expect_leq(len, 4096);
    cr_expect_gt(len, 4000);
    cr_expect_eq(len % 2, 0, "a UTF-8 sequence was cut");
    h->error_free(e);
    free(big);
}

Test(plugin_host_api, log_names_the_plugin_behind_the_table)
{
    char tmpl[] = "/tmp/test_plugin_host_api_XXXXXX";
    int fd = mkstemp(tmpl);
    cr_assert_geq(fd, 0);
    unlink(tmpl);
    pl_log_configure(PL_LOG_DEBUG, PL_LOG_FORMAT_KV);
    pl_log_set_fd(fd);

    static const outpost_plugin desc = {.name = "fake"};
    op_plugin p;
    memset(&p, 0, sizeof(p));
    p.desc = &desc;
    op_host_table t;
    const outpost_host_api *h = table(&t, &p);
    h->log(h, OUTPOST_LOG_WARN, "fake.warmup", "cache cold");
    h->log(NULL, OUTPOST_LOG_INFO, NULL, NULL);
    pl_log_set_fd(-1);

    char buf[4096] = "";
    cr_assert_geq(pread(fd, buf, sizeof(buf) - 1, 0), 0);
    close(fd);
    cr_expect_not_null(strstr(buf, "level=warn event=fake.warmup plugin=fake msg=\"cache cold\""),
                       "%s", buf);
    cr_expect_not_null(strstr(buf, "event=plugin.log plugin=?"), "%s", buf);
}

Test(plugin_host_api, request_functions_tolerate_null)
{
    op_host_table t;
    const outpost_host_api *h = table(&t, NULL);
    size_t len = 7;
    cr_expect_str_eq(h->request_body(NULL, &len), "");
    cr_expect_eq(len, 0);
    cr_expect_str_eq(h->request_model_id(NULL), "");
    cr_expect_str_eq(h->request_task(NULL), "");
    cr_expect_eq(h->request_stream(NULL), 0);
    cr_expect_eq(h->request_cancelled(NULL), 0);
    cr_expect_null(h->request_user(NULL));
    cr_expect_eq(h->request_emit(NULL, "x", 1), -1);
    h->request_set_user(NULL, NULL);
    h->request_complete(NULL, NULL, 0, h->error_new(OUTPOST_ERR_INTERNAL, "freed, not leaked"));
    op_infer_cancel(NULL);
    op_infer_release(NULL);
    cr_expect_eq(op_infer_completed(NULL), 0);
    op_model_unref(NULL);
    op_plugin_set_unref(NULL);
}
