/*
 * llama_plugin: the "llama" plugin's ABI entry (include/outpost/plugin.h):
 * text generation with llama-architecture GGUF models on the CPU.
 *
 * A model instance is one llm_engine (scheduler thread + compute pool +
 * paged KV cache) over the memory-mapped model. submit() parses and
 * tokenizes on the caller's thread (cheap next to generation, and it lets a
 * bad request fail at once), then queues; the engine streams and completes
 * on its own thread. Options are documented in docs/models.md.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_chat.h"
#include "llm_engine.h"
#include "llm_model.h"
#include "llm_req.h"
#include "llm_tok.h"
#include "outpost/plugin.h"

#define LLAMA_PLUGIN_VERSION "1.0.0"

struct outpost_plugin_state {
    const outpost_host_api *host;
};

struct outpost_model {
    const outpost_host_api *host;
    outpost_host_model *hm; /* NULL with a minor-0 host */
    llm_model *model;
    llm_vocab *vocab;
    llm_chat *chat;
    llm_engine *engine;
    int default_max_tokens;
    char description[256];
};

/* ======================================================================== */
/* Options                                                                   */
/* ======================================================================== */

typedef struct opts {
    int threads, max_batch, max_queue, kv_tokens, ctx, batch_tokens, max_tokens;
    const char *chat_template; /* "auto" | "none" | "chatml" | "llama3" | "zephyr" */
    bool repack;               /* interleave quantized weights at load (nn_mat_repack) */
} opts;

static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static outpost_error *parse_opts(const outpost_host_api *h, const outpost_model_config *cfg,
                                 opts *o)
{
    char msg[256];
    for (size_t i = 0; i < cfg->n_options; i++) {
        const char *k = cfg->options[i].key, *v = cfg->options[i].value;
        struct {
            const char *name;
            int *dst;
            long lo, hi;
        } ints[] = {
            {"threads", &o->threads, 1, 1024},
            {"max_batch", &o->max_batch, 1, 256},
            {"max_queue", &o->max_queue, 0, 1 << 20},
            {"kv_cache_tokens", &o->kv_tokens, 64, 1 << 24},
            {"context_length", &o->ctx, 16, 1 << 24},
            {"batch_tokens", &o->batch_tokens, 1, 1 << 16},
            {"max_tokens_default", &o->max_tokens, 1, 1 << 24},
        };
        bool known = false;
        for (size_t j = 0; j < sizeof ints / sizeof ints[0]; j++) {
            if (strcmp(k, ints[j].name) != 0)
                continue;
            known = true;
            if (parse_int(v, ints[j].lo, ints[j].hi, ints[j].dst) != 0) {
                snprintf(msg, sizeof msg, "option '%s' must be an integer from %ld to %ld, not '%s'",
                         k, ints[j].lo, ints[j].hi, v);
                return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, msg);
            }
        }
        if (strcmp(k, "repack") == 0) {
            known = true;
            if (strcmp(v, "true") && strcmp(v, "false")) {
                snprintf(msg, sizeof msg, "option 'repack' must be true or false, not '%s'", v);
                return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, msg);
            }
            o->repack = strcmp(v, "true") == 0;
        }
        if (strcmp(k, "chat_template") == 0) {
            known = true;
            if (strcmp(v, "auto") && strcmp(v, "none") && strcmp(v, "chatml") &&
                strcmp(v, "llama3") && strcmp(v, "zephyr")) {
                snprintf(msg, sizeof msg, "option 'chat_template' must be auto, none, chatml, "
                         "llama3 or zephyr, not '%s'", v);
                return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, msg);
            }
            o->chat_template = v;
        }
        if (!known) {
            snprintf(msg, sizeof msg, "unknown option '%s' (known: threads, max_batch, max_queue, "
                     "kv_cache_tokens, context_length, batch_tokens, max_tokens_default, "
                     "chat_template, repack)", k);
            return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, msg);
        }
    }
    return NULL;
}

/* ======================================================================== */
/* Engine callbacks                                                          */
/* ======================================================================== */

static int cb_text(void *ctx, void *user, const char *text, size_t len)
{
    const outpost_model *m = ctx;
    return m->host->request_emit(user, text, len);
}

/* Completion: the Workers AI result, plus finish_reason (read by the host's
 * OpenAI translation). */
static void cb_done(void *ctx, void *user, const llm_result *res, int code, const char *message)
{
    const outpost_model *m = ctx;
    const outpost_host_api *h = m->host;
    outpost_request *req = user;
    if (code != 0) {
        h->request_complete(req, NULL, 0, h->error_new((outpost_error_code)code, message));
        return;
    }
    json_t *out = json_pack("{s:s%, s:{s:i, s:i, s:i}, s:s}", "response", res->text, res->len,
                            "usage", "prompt_tokens", res->prompt_tokens, "completion_tokens",
                            res->completion_tokens, "total_tokens",
                            res->prompt_tokens + res->completion_tokens, "finish_reason",
                            res->finish_reason);
    char *s = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    if (!s) {
        h->request_complete(req, NULL, 0, h->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    h->request_complete(req, s, strlen(s), NULL);
    free(s);
}

static bool cb_cancelled(void *ctx, void *user)
{
    const outpost_model *m = ctx;
    return m->host->request_cancelled(user) != 0;
}

static void cb_metric(void *ctx, int id, double v)
{
    outpost_model *m = ctx;
    if (m->hm)
        m->host->model_metric(m->hm, (outpost_model_metric)id, v);
}

/* ======================================================================== */
/* ABI                                                                       */
/* ======================================================================== */

static outpost_error *llama_init(const outpost_host_api *host, outpost_plugin_state **state)
{
    outpost_plugin_state *s = calloc(1, sizeof *s);
    if (!s)
        return host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    s->host = host;
    *state = s;
    return NULL;
}

static void llama_fini(outpost_plugin_state *state)
{
    free(state);
}

static void model_free(outpost_model *m)
{
    if (!m)
        return;
    llm_engine_free(m->engine);
    llm_chat_free(m->chat);
    llm_vocab_free(m->vocab);
    llm_model_free(m->model);
    free(m);
}

static outpost_error *llama_model_load(outpost_plugin_state *state, const outpost_model_config *cfg,
                                       const outpost_device *dev, outpost_model **out,
                                       outpost_model_info *info)
{
    const outpost_host_api *h = state->host;
    char err[512], msg[640];
    if (dev->kind != OUTPOST_DEVICE_CPU)
        return h->error_new(OUTPOST_ERR_UNSUPPORTED, "the llama plugin runs on the CPU only");
    if (!cfg->path)
        return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, "a model path (a .gguf file) is required");
    opts o = {.threads = dev->threads > 0 ? dev->threads : 1, .max_batch = 8, .max_queue = 64,
              .kv_tokens = 0, .ctx = 0, .batch_tokens = 512, .max_tokens = 256,
              .chat_template = "auto", .repack = true};
    outpost_error *e = parse_opts(h, cfg, &o);
    if (e)
        return e;

    outpost_model *m = calloc(1, sizeof *m);
    if (!m)
        return h->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    m->host = h;
    /* Minor 1: the host's model handle, if this host has one. */
    if (cfg->struct_size >= offsetof(outpost_model_config, host_model) + sizeof(void *) &&
        h->struct_size >= offsetof(outpost_host_api, model_metric) + sizeof(void *) &&
        h->model_metric)
        m->hm = cfg->host_model;
    m->default_max_tokens = o.max_tokens;

    if (llm_model_load(cfg->path, &m->model, err, sizeof err) != 0)
        goto fail;
    if (o.repack && llm_model_repack(m->model, err, sizeof err) != 0)
        goto fail;
    if (llm_vocab_load(m->model->gguf, &m->vocab, err, sizeof err) != 0)
        goto fail;
    if (llm_vocab_size(m->vocab) > m->model->hp.n_vocab) {
        snprintf(err, sizeof err, "the tokenizer has %d tokens but the model only %d",
                 llm_vocab_size(m->vocab), m->model->hp.n_vocab);
        goto fail;
    }
    if (strcmp(o.chat_template, "none") == 0) {
        m->chat = llm_chat_none();
    } else {
        const char *tmpl = NULL;
        size_t tlen = 0;
        if (strcmp(o.chat_template, "auto") == 0) {
            if (gguf_get_str(m->model->gguf, "tokenizer.chat_template", &tmpl, &tlen) != GGUF_OK) {
                snprintf(err, sizeof err, "the model file declares no chat template: set the "
                         "option chat_template to chatml, llama3, zephyr or none");
                goto fail;
            }
        } else {
            /* A named family: detect it from a canonical marker. */
            tmpl = strcmp(o.chat_template, "chatml") == 0   ? "<|im_start|>"
                   : strcmp(o.chat_template, "llama3") == 0 ? "<|start_header_id|>"
                                                            : "<|user|>";
            tlen = strlen(tmpl);
        }
        char cerr[384];
        if (llm_chat_detect(tmpl, tlen, &m->chat, cerr, sizeof cerr) != 0) {
            snprintf(err, sizeof err, "%s (set the option chat_template: none to serve raw "
                     "prompts only)", cerr);
            goto fail;
        }
    }
    if (!m->chat) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }

    const llm_hparams *hp = &m->model->hp;
    int ctx = o.ctx ? o.ctx : (hp->n_ctx_train < 8192 ? hp->n_ctx_train : 8192);
    if (ctx > hp->n_ctx_train) {
        snprintf(err, sizeof err, "option context_length %d exceeds the model's trained context "
                 "of %d tokens", ctx, hp->n_ctx_train);
        goto fail;
    }
    int kv = o.kv_tokens ? o.kv_tokens : (ctx > 16384 ? ctx : 16384);
    if (kv < ctx) {
        snprintf(err, sizeof err, "option kv_cache_tokens %d is below context_length %d", kv, ctx);
        goto fail;
    }
    if (o.batch_tokens < o.max_batch)
        o.batch_tokens = o.max_batch;
    llm_engine_opts eo = {.threads = o.threads, .max_batch = o.max_batch,
                          .max_queue = o.max_queue, .kv_tokens = kv, .ctx = ctx,
                          .batch_tokens = o.batch_tokens};
    llm_engine_cb cb = {.ctx = m, .on_text = cb_text, .on_done = cb_done,
                        .is_cancelled = cb_cancelled, .metric = cb_metric};
    m->engine = llm_engine_new(m->model, m->vocab, &eo, &cb, err, sizeof err);
    if (!m->engine)
        goto fail;

    snprintf(m->description, sizeof m->description, "%s (%s, %lld parameters, llama, CPU)",
             m->model->name[0] ? m->model->name : "llama model", m->model->quant,
             (long long)m->model->n_params);
    info->description = m->description;
    info->context_window = ctx;
    info->parameters = m->model->n_params;
    info->max_batch = o.max_batch;
    info->max_queue = o.max_queue;
    snprintf(msg, sizeof msg, "loaded: %d layers, %d heads (%d KV), vocab %d, context %d, KV "
             "cache %d tokens, %d threads, batch %d, chat template %s",
             hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_vocab, ctx, kv, o.threads, o.max_batch,
             llm_chat_kind_name(llm_chat_get_kind(m->chat)));
    h->log(h, OUTPOST_LOG_INFO, "llama.loaded", msg);
    *out = m;
    return NULL;
fail:
    model_free(m);
    return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, err);
}

static void llama_model_unload(outpost_model *m)
{
    model_free(m);
}

/* Builds the engine job for one request; *spec holds the strings the job
 * borrows (stop strings) until the engine copied them: free it after
 * llm_engine_submit. Returns NULL with code/message on bad input (spec is
 * then freed already). */
static llm_job *make_job(outpost_model *m, outpost_request *req, llm_req_spec *specp, int *code,
                         char *err, size_t errlen)
{
    const outpost_host_api *h = m->host;
    size_t len;
    const char *body = h->request_body(req, &len);
    llm_req_spec spec;
    if (llm_req_parse(body, len, &spec, err, errlen) != 0) {
        *code = OUTPOST_ERR_INVALID_ARGUMENT;
        return NULL;
    }
    llm_job *job = calloc(1, sizeof *job);
    if (!job) {
        llm_req_free(&spec);
        snprintf(err, errlen, "out of memory");
        *code = OUTPOST_ERR_INTERNAL;
        return NULL;
    }
    if (llm_req_prompt_ids(&spec, m->vocab, m->chat, &job->prompt, &job->n_prompt, err,
                           errlen) != 0) {
        llm_req_free(&spec);
        free(job);
        *code = OUTPOST_ERR_INVALID_ARGUMENT;
        return NULL;
    }
    int ctx = llm_engine_options(m->engine)->ctx;
    if (job->n_prompt >= ctx ||
        (spec.max_tokens > 0 && (long)job->n_prompt + spec.max_tokens > ctx)) {
        if (spec.max_tokens > 0)
            snprintf(err, errlen, "this model's context is %d tokens; the request asks for %ld "
                     "(%d in the prompt, %d to generate): shorten the prompt or lower max_tokens",
                     ctx, (long)job->n_prompt + spec.max_tokens, job->n_prompt, spec.max_tokens);
        else
            snprintf(err, errlen, "this model's context is %d tokens; the prompt has %d",
                     ctx, job->n_prompt);
        llm_req_free(&spec);
        free(job->prompt);
        free(job);
        *code = OUTPOST_ERR_INVALID_ARGUMENT;
        return NULL;
    }
    job->max_tokens = spec.max_tokens > 0 ? spec.max_tokens : m->default_max_tokens;
    job->sampling = spec.sampling;
    job->ignore_eos = spec.ignore_eos;
    job->stream = h->request_stream(req) != 0;
    /* The engine copies the stop strings at submit; spec is freed after. */
    for (int i = 0; i < spec.n_stop; i++)
        job->stop[i] = spec.stop[i];
    job->n_stop = spec.n_stop;
    job->user = req;
    *code = 0;
    *specp = spec;
    return job;
}

static outpost_error *llama_submit(outpost_model *m, outpost_request *const *reqs, size_t n)
{
    const outpost_host_api *h = m->host;
    char err[512];
    for (size_t i = 0; i < n; i++) {
        int code = 0;
        llm_req_spec spec;
        llm_job *job = make_job(m, reqs[i], &spec, &code, err, sizeof err);
        int rc = code;
        if (job) {
            rc = llm_engine_submit(m->engine, job, err, sizeof err);
            llm_req_free(&spec);
        }
        if (rc == 0)
            continue;
        /* One request alone: refuse the submission (the documented path,
         * a 4xx at once). Several: complete this one with its error. */
        if (n == 1)
            return h->error_new((outpost_error_code)rc, err);
        h->request_complete(reqs[i], NULL, 0, h->error_new((outpost_error_code)rc, err));
    }
    return NULL;
}

static void llama_cancel(outpost_model *m, outpost_request *req)
{
    llm_engine_cancel(m->engine, req);
}

static int llama_count_tokens(outpost_model *m, const char *body, size_t len, int64_t *tokens)
{
    llm_req_spec spec;
    char err[256];
    if (llm_req_parse(body, len, &spec, err, sizeof err) != 0)
        return -1;
    int32_t *ids;
    int n;
    int rc = llm_req_prompt_ids(&spec, m->vocab, m->chat, &ids, &n, err, sizeof err);
    llm_req_free(&spec);
    if (rc != 0)
        return -1;
    free(ids);
    *tokens = n;
    return 0;
}

static const char *const llama_tasks[] = {OUTPOST_TASK_TEXT_GENERATION, NULL};

static const outpost_plugin llama_plugin = {
    .abi_major = OUTPOST_PLUGIN_ABI_MAJOR,
    .abi_minor = OUTPOST_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(outpost_plugin),
    .build_signature = OUTPOST_PLUGIN_BUILD_SIGNATURE,
    .name = "llama",
    .version = LLAMA_PLUGIN_VERSION,
    .tasks = llama_tasks,
    .init = llama_init,
    .fini = llama_fini,
    .model_load = llama_model_load,
    .model_unload = llama_model_unload,
    .submit = llama_submit,
    .cancel = llama_cancel,
    .count_tokens = llama_count_tokens,
};

OUTPOST_PLUGIN_DEFINE(llama_plugin)
