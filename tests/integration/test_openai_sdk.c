/*
 * The OpenAI-compatible endpoints through OpenAI's official Python SDK: the
 * real outpostd with the echo test plugin, driven by tests/sdk/openai_client.py
 * (chat, chat stream, completions, embeddings, errors as exceptions, model
 * list, unscoped and account-scoped base URLs); and with the bundled models
 * (llama and bert plugins), driven by tests/sdk/openai_real_models.py and,
 * through the AI gateway's compat endpoint, tests/sdk/openai_gateway.py
 * (skipped, saying so, without `make models`).
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

/* The venv's python, or skips the test saying why. */
static void sdk_python(char *python, size_t cap)
{
    /* Relative to the source tree, as scripts/pydeps.sh reads it. */
    const char *venv = getenv("OUTPOST_PY_VENV");
    if (!venv || !*venv)
        venv = "build-py/venv";
    if (venv[0] == '/')
        snprintf(python, cap, "%s/bin/python", venv);
    else
        snprintf(python, cap, "%s/%s/bin/python", OUTPOST_SOURCE_DIR, venv);
    if (access(python, X_OK) != 0)
        cr_skip_test("no Python SDK venv at %s: run scripts/pydeps.sh (make pydeps) first", python);
}

/* Runs tests/sdk/SCRIPT against the agent; it must print its success line. */
static void run_sdk_script(const char *python, const ts_agent *a, const char *script,
                           const char *success)
{
    char cmd[2048];
    /* Loopback only: no proxy from the environment may take the requests. */
    snprintf(cmd, sizeof cmd,
             "env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY "
             "-u ALL_PROXY NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost "
             "'%s' '%s/tests/sdk/%s' '%s'",
             python, OUTPOST_SOURCE_DIR, script, a->base_url);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_expect_eq(rc, 0, "%s failed (rc %d):\n%s", script, rc, out);
    cr_expect(strstr(out, success) != NULL, "%s", out);
    free(out);
}

Test(openai_sdk, python_sdk_against_the_agent, .timeout = 240)
{
    char python[1024];
    sdk_python(python, sizeof python);
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    run_sdk_script(python, &a, "openai_client.py", "openai_client: all checks passed");
    cr_assert_eq(ts_agent_stop(&a), 0);
}

#define SMOLLM OUTPOST_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf"
#define MINILM OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2"

Test(openai_sdk, python_sdk_against_the_bundled_models, .timeout = 300)
{
    char python[1024];
    sdk_python(python, sizeof python);
    if (access(SMOLLM, R_OK) != 0 || access(MINILM "/model.safetensors", R_OK) != 0)
        cr_skip_test("the bundled models are absent: run `make models`");
    ts_agent a;
    ts_agent_start(&a, "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n"
                       "data_dir: @DIR@/var\n"
                       "plugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\n"
                       "accounts:\n  - id: local\n"
                       "models:\n"
                       "  - id: \"@local/smollm2-135m-instruct\"\n    plugin: llama\n"
                       "    task: text-generation\n    path: " SMOLLM "\n"
                       "  - id: \"@local/all-minilm-l6-v2\"\n    plugin: bert\n"
                       "    task: text-embeddings\n    path: " MINILM "\n"
                       "gateways:\n  - account: local\n    id: default\n");
    run_sdk_script(python, &a, "openai_real_models.py", "openai_real_models: all checks passed");
    run_sdk_script(python, &a, "openai_gateway.py", "openai_gateway: all checks passed");
    cr_assert_eq(ts_agent_stop(&a), 0);
}
