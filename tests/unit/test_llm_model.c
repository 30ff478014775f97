/*
 * Unit tests for plugins/llama/llm_model (with the tokenizer and chat
 * detection the plugin loads next to it) on hostile files: every truncation
 * and tens of thousands of seeded mutations of a small valid model. Each
 * load must either succeed or fail with a reason; a model that loads must
 * then run a forward pass without touching memory it should not (ASan runs
 * this too). Also: the metadata limits are enforced.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "llm_chat.h"
#include "llm_forward.h"
#include "llm_kv.h"
#include "llm_model.h"
#include "llm_tok.h"
#include "test_support.h"
#include "ts_llm.h"

static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    struct stat st;
    cr_assert_eq(fstat(fileno(f), &st), 0);
    unsigned char *b = malloc((size_t)st.st_size);
    cr_assert_eq(fread(b, 1, (size_t)st.st_size, f), (size_t)st.st_size);
    fclose(f);
    *len = (size_t)st.st_size;
    return b;
}

/* Loads buf as a model the way the plugin does; if everything loads, runs
 * one small forward pass. Returns 1 if it loaded. */
static int try_load(const unsigned char *buf, size_t len)
{
    /* gguf_open_mem borrows the buffer: a private copy aligned like a
     * mapping, so F32 tensors are aligned as they would be. */
    void *copy = NULL;
    cr_assert_eq(posix_memalign(&copy, 4096, len ? len : 1), 0);
    memcpy(copy, buf, len);
    char err[512] = "";
    gguf_file *g;
    int loaded = 0;
    if (gguf_open_mem(copy, len, &g, err, sizeof err) != 0) {
        cr_assert(err[0], "refused without a reason");
        free(copy);
        return 0;
    }
    llm_model *m;
    if (llm_model_from_gguf(g, &m, err, sizeof err) != 0) {
        cr_assert(err[0], "model refused without a reason");
        free(copy);
        return 0;
    }
    llm_vocab *v = NULL;
    if (llm_vocab_load(m->gguf, &v, err, sizeof err) != 0) {
        cr_assert(err[0], "vocab refused without a reason");
        goto out;
    }
    const char *tmpl;
    size_t tlen;
    llm_chat *chat = NULL;
    if (gguf_get_str(m->gguf, "tokenizer.chat_template", &tmpl, &tlen) == GGUF_OK &&
        llm_chat_detect(tmpl, tlen, &chat, err, sizeof err) != 0)
        cr_assert(err[0], "template refused without a reason");
    llm_chat_free(chat);
    /* What passed every check must run. Sizes stay small whatever the
     * header claims: scratch is sized from the checked shapes. */
    const llm_hparams *hp = &m->hp;
    if ((int64_t)hp->n_layer * hp->n_embd <= (1 << 16) && hp->n_vocab <= (1 << 16)) {
        llm_kv *kv = llm_kv_new(hp->n_layer, hp->n_head_kv, hp->head_dim, 64);
        nn_pool *pool = nn_pool_new(1, "fz");
        llm_fwd *f = kv && pool ? llm_fwd_new(m, kv, pool, 4, 1, 64) : NULL;
        if (f) {
            llm_kv_seq s = {0};
            cr_assert_eq(llm_kv_grow(kv, &s, 2), 0);
            const llm_kv_seq *seqs[1] = {&s};
            llm_row rows[2] = {{0, 0, 0, -1}, {hp->n_vocab - 1, 1, 0, 0}};
            float *lg = malloc((size_t)hp->n_vocab * sizeof *lg);
            llm_forward(f, rows, 2, seqs, lg);
            free(lg);
            llm_kv_release(kv, &s);
        }
        llm_fwd_free(f);
        nn_pool_free(pool);
        llm_kv_free(kv);
    }
    loaded = 1;
out:
    llm_vocab_free(v);
    llm_model_free(m);
    free(copy);
    return loaded;
}

static unsigned char *tiny_model(size_t *len, uint32_t wtype)
{
    char *dir = ts_tmpdir();
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = wtype;
    spec.etype = 8;
    spec.n_layer = 1;
    spec.chat_template = CHATML;
    char *path = ts_llm_write(dir, "m.gguf", &spec);
    unsigned char *b = read_all(path, len);
    free(path);
    ts_tmpdir_remove(dir);
    free(dir);
    return b;
}

Test(llm_model, the_valid_file_loads_and_runs)
{
    size_t len;
    unsigned char *b = tiny_model(&len, 3);
    cr_assert_eq(try_load(b, len), 1);
    free(b);
}

Test(llm_model, every_truncation_is_refused, .timeout = 300)
{
    size_t len;
    unsigned char *b = tiny_model(&len, 3);
    /* Every length through the metadata and tensor table, then a stride
     * through the data (each cut there is the same check). */
    size_t dense = len < 24576 ? len : 24576;
    int tries = 0;
    for (size_t n = 0; n < len; n += n < dense ? 1 : 97) {
        cr_assert_eq(try_load(b, n), 0, "a file cut at %zu of %zu bytes loaded", n, len);
        tries++;
    }
    cr_log_info("truncations: %d cuts of a %zu-byte file, all refused", tries, len);
    cr_assert(tries > 1000);
    free(b);
}

Test(llm_model, mutations_never_crash, .timeout = 600)
{
    size_t len;
    const uint32_t types[] = {3 /* Q4_1 */, 0 /* F32 */};
    int loaded = 0, total = 0;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        unsigned char *b = tiny_model(&len, types[t]);
        unsigned char *m = malloc(len);
        uint64_t seed = 0x9e3779b97f4a7c15ull * (t + 1);
        /* Mutate the metadata and tensor table mostly: that is where a
         * loader can be misled; a changed weight is just a weight. */
        size_t head = len < 24576 ? len : 24576;
        for (int it = 0; it < 12000; it++) {
            memcpy(m, b, len);
            int k = 1 + (int)((seed >> 60) & 7);
            for (int j = 0; j < k; j++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(seed >> 33) % (seed & 1 ? len : head);
                uint8_t v = (uint8_t)(seed >> 13);
                switch ((seed >> 20) & 3) {
                case 0: m[at] = v; break;                     /* any byte */
                case 1: m[at] ^= (uint8_t)(1u << (v & 7)); break; /* one bit */
                case 2: m[at] = 0xff; break;                  /* huge counts */
                default: m[at] = 0; break;
                }
            }
            loaded += try_load(m, len);
            total++;
        }
        free(m);
        free(b);
    }
    cr_log_info("mutations: %d of %d variants still loaded (and ran)", loaded, total);
    cr_assert(loaded > 0 && loaded < total, "mutations should both pass and fail checks");
}
