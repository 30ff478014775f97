/*
 * The OpenAI-compatible endpoints through OpenAI's official Python SDK: the
 * real outpostd with the echo test plugin, driven by tests/sdk/openai_client.py
 * (chat, chat stream, completions, embeddings, errors as exceptions, model
 * list, unscoped and account-scoped base URLs).
 *
 * Needs the venv that scripts/pydeps.sh makes (`make test` makes it first);
 * without it the test is skipped, saying so. OUTPOST_PY_VENV names another
 * venv, as it does for scripts/pydeps.sh.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

#define CONFIG                                                                         \
    "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n"                              \
    "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\naccounts:\n  - id: local\n"   \
    "models:\n"                                                                        \
    "  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n"           \
    "    aliases: [\"gpt-4o-mini\"]\n"                                                 \
    "  - id: \"@local/emb\"\n    plugin: echo\n    task: text-embeddings\n"

Test(openai_sdk, python_sdk_against_the_agent, .timeout = 240)
{
    /* Relative to the source tree, as scripts/pydeps.sh reads it. */
    const char *venv = getenv("OUTPOST_PY_VENV");
    if (!venv || !*venv)
        venv = "build-py/venv";
    char python[1024];
    if (venv[0] == '/')
        snprintf(python, sizeof python, "%s/bin/python", venv);
    else
        snprintf(python, sizeof python, "%s/%s/bin/python", OUTPOST_SOURCE_DIR, venv);
    if (access(python, X_OK) != 0)
        cr_skip_test("no Python SDK venv at %s: run scripts/pydeps.sh (make pydeps) first", python);

    ts_agent a;
    ts_agent_start(&a, CONFIG);
    char cmd[2048];
    /* Loopback only: no proxy from the environment may take the requests. */
    snprintf(cmd, sizeof cmd,
             "env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY "
             "-u ALL_PROXY NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost "
             "'%s' '%s/tests/sdk/openai_client.py' '%s'",
             python, OUTPOST_SOURCE_DIR, a.base_url);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_expect_eq(rc, 0, "openai_client.py failed (rc %d):\n%s", rc, out);
    cr_expect(strstr(out, "openai_client: all checks passed") != NULL, "%s", out);
    free(out);
    cr_assert_eq(ts_agent_stop(&a), 0);
}
