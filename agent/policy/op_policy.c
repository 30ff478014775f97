/*
 * op_policy: the Lua 5.4 policy host (see op_policy.h for the contract).
 *
 * Sections: the set (files, refcount) · the sandboxed state (allocator with
 * small-block lists, count hook, environment, require, outpost table) ·
 * JSON <-> Lua (a decoder of our own; jansson to encode) · the req and
 * err/resp tables · the hook registry and result readers · per-thread states
 * · loading · the chain runner · the hooks · the offline tester.
 */
#include "policy/op_policy.h"

#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/op_metrics.h"
#include "platform/pl_file.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

/* Instructions between two count-hook calls while within budget. */
#define HOOK_STEP 1000
/* Coroutines: every resume is charged CO_STEP up front and the coroutine's
 * hook runs every CO_STEP instructions, so what a coroutine runs between two
 * hook calls is always paid for (otherwise many short coroutines, each
 * finishing before its first hook call, would run for free). */
#define CO_STEP 100
/* Work done inside one C call, where no instruction is counted, is charged
 * in units: one per BYTES_PER_UNIT bytes a pattern function scans or a
 * library function returns, one per ALLOC_BYTES_PER_UNIT bytes allocated,
 * one per element table.move copies. */
#define BYTES_PER_UNIT 16
#define ALLOC_BYTES_PER_UNIT 64
#define JSON_MAX_DEPTH 64

/* Fields of req and of err/resp, by id (see "The req and err/resp tables").
 * Each state keeps name -> id tables built from these names. */
enum {
    RF_MODEL = 1, RF_TASK, RF_ACCOUNT, RF_METHOD, RF_PATH, RF_TOKENS, RF_HEADERS, RF_BODY,
    RF_METADATA, RF_GATEWAY, RF_PROVIDER, RF_ENDPOINT, RF_TOKEN_NAME, RF_MAX_TOKENS, RF_STEP,
    RF_ATTEMPT, RF_COUNT
};
static const char *const req_fields[RF_COUNT] = {
    NULL, "model", "task", "account", "method", "path", "tokens_estimate", "headers", "body",
    "metadata", "gateway", "provider", "endpoint", "token_name", "max_tokens", "step", "attempt"};
enum {
    XF_STATUS = 1, XF_KIND, XF_MESSAGE, XF_BODY, XF_BODY_LEN, XF_CONTENT_TYPE, XF_RETRY_AFTER,
    XF_ATTEMPT, XF_MAX_ATTEMPTS, XF_STEP, XF_DURATION, XF_COUNT
};
static const char *const res_fields[XF_COUNT] = {
    NULL, "status", "kind", "message", "body", "body_len", "content_type", "retry_after_ms",
    "attempt", "max_attempts", "step", "duration_ms"};

/* Keys the host reads from hook results, interned once per state so reading
 * a result never allocates (an allocation could fail at the memory cap, and
 * the result is read outside any protected call). */
enum {
    K_MODEL = 1, K_PROVIDER, K_REJECT, K_STATUS, K_MESSAGE, K_ACTION, K_DELAY_MS, K_KEY, K_UNIT,
    K_LIMIT, K_WINDOW, K_SLIDING, K_TECHNIQUE, K_COUNT
};
static const char *const result_keys[K_COUNT] = {
    NULL, "model", "provider", "reject", "status", "message", "action", "delay_ms", "key", "unit",
    "limit", "window", "sliding", "technique"};


/* ======================================================================== */
/* The set                                                                  */
/* ======================================================================== */

struct op_policy_set {
    _Atomic int refs;
    size_t n;
    char **paths;    /* as configured */
    char **names;    /* basenames */
    char **sources;  /* file text */
    size_t *lens;
    char *lib_dir;
    size_t memory_bytes;
    uint64_t instructions;
    bool has_hook[OP_HOOK_COUNT]; /* some file defines it (recorded by the load check) */
};

bool op_policy_set_has_hook(const op_policy_set *s, op_policy_hook h)
{
    return s && (unsigned)h < OP_HOOK_COUNT && s->has_hook[h];
}

static void set_free(op_policy_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->paths[i]);
        free(s->names[i]);
        free(s->sources[i]);
    }
    free(s->paths);
    free(s->names);
    free(s->sources);
    free(s->lens);
    free(s->lib_dir);
    free(s);
}

void op_policy_set_ref(op_policy_set *s) { atomic_fetch_add(&s->refs, 1); }

void op_policy_set_unref(op_policy_set *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        set_free(s);
}

size_t op_policy_set_count(const op_policy_set *s) { return s ? s->n : 0; }

const char *op_policy_set_name(const op_policy_set *s, size_t i)
{
    return s && i < s->n ? s->names[i] : NULL;
}

/* ======================================================================== */
/* Metrics                                                                  */
/* ======================================================================== */

static pthread_once_t g_metrics_once = PTHREAD_ONCE_INIT;
static op_metric *g_m_invocations, *g_m_failures, *g_m_duration;

static void metrics_init(void)
{
    static const char *const l_inv[] = {"policy", "hook", NULL};
    static const char *const l_fail[] = {"policy", "hook", "reason", NULL};
    static const char *const l_dur[] = {"hook", NULL};
    static const double buckets[] = {1e-6, 2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4,
                                     2.5e-4, 1e-3, 1e-2, 0.1, 1};
    g_m_invocations = op_metric_counter("outpost_policy_invocations_total",
                                        "Policy hook calls, by policy file and hook.", l_inv);
    g_m_failures = op_metric_counter("outpost_policy_failures_total",
                                     "Policy hook calls that failed, by reason "
                                     "(error, budget, memory).",
                                     l_fail);
    g_m_duration = op_metric_histogram("outpost_policy_duration_seconds",
                                       "Time to run one hook across every policy.", l_dur,
                                       buckets, sizeof buckets / sizeof buckets[0]);
}

/* ======================================================================== */
/* The sandboxed state                                                      */
/* ======================================================================== */

#define SMALL_STEP 16
#define SMALL_MAX 256
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define SMALL_KEEP 64

typedef struct small_block {
    struct small_block *next;
} small_block;

/* The C copy of one field of F (see sync_fields). */
typedef enum { SH_ABSENT = 0, SH_PRESENT, SH_UNKNOWN } shadow_state;
typedef struct shadow_str {
    shadow_state state; /* F holds nil, the value copied here, or a value not copied */
    char *s;            /* string fields: the value (cap bytes) */
    size_t cap;
    long long ival;     /* integer fields */
} shadow_str;

typedef struct vm {
    lua_State *L;
    op_policy_set *set;     /* one reference */
    size_t used, cap;       /* heap bytes in use, cap */
    bool mem_failed;        /* an allocation was refused during this call */
    uint64_t budget, spent; /* instructions allowed / used in this call */
    bool budget_failed;
    /* The hook call running; NULL between calls, so a req or err table a
     * policy kept cannot reach freed request data. */
    const op_route_request *req;
    const op_attempt_result *res;   /* on_error, on_response */
    const char *model, *provider;   /* req.model/req.provider as this call sees them */
    size_t cur;             /* index of the policy running, for logs */
    int *env_refs;          /* registry refs: one environment per policy */
    int *fn_refs;           /* [hook * n + i]: policy i's hook function, LUA_NOREF if none */
    op_metric_child **m_inv;/* [hook * n + i]: invocations child */
    op_metric_child *m_dur[OP_HOOK_COUNT];
    int req_ref;            /* registry ref of req, the one read-only table policies get */
    int fields_ref;         /* registry ref of F, req's scalar fields */
    shadow_str shadow[RF_COUNT]; /* what F holds, by field id */
    bool host_alloc;        /* the host is pushing request data: the cap does not refuse */
    /* req tables in F: built (bit per RF_HEADERS..RF_METADATA), the request
     * id they were built for, and their sources (pointer, length). */
    unsigned tables_built;
    uint64_t tables_req_id;
    const void *table_src[3];
    size_t table_src_len[3];
    int res_meta_ref;       /* registry ref of the shared err/resp metatable */
    int cur_res_ref;        /* registry slot: the err/resp table of the running call */
    int keys_ref;           /* registry ref of the interned result keys */
    bool use_paths;         /* chunk names: full paths (load check) or basenames */
    small_block *small[SMALL_CLASSES]; /* freed small blocks, by size class */
    unsigned n_small[SMALL_CLASSES];
} vm;

static _Thread_local vm *t_vm;

static vm *vm_of(lua_State *L) { return *(vm **)lua_getextraspace(L); }

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    vm *v = vm_of(L);
    if (v->mem_failed) {
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "memory limit reached");
    }
    v->spent += (uint64_t)lua_gethookcount(L); /* HOOK_STEP, or CO_STEP in a coroutine */
    if (v->budget_failed || v->spent > v->budget) {
        /* From now on fire on every instruction, so a pcall in the policy
         * cannot catch the error and carry on. */
        v->budget_failed = true;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "instruction budget exhausted");
    }
}

/* ---- small blocks ----
 * A hook call makes a few dozen small objects (req tables, strings, decoded
 * metadata) that die at once; malloc and free were a good part of a call's
 * cost. Blocks up to SMALL_MAX bytes come in SMALL_STEP-byte classes and a
 * freed one goes on its class's list (at most SMALL_KEEP per class, so a
 * state caches at most about 150 KiB beyond its cap). The cap counts the
 * sizes Lua asked for, as before. */

static size_t small_class(size_t size) { return (size + SMALL_STEP - 1) / SMALL_STEP - 1; }

static void *small_get(vm *v, size_t size)
{
    size_t c = small_class(size);
    small_block *b = v->small[c];
    if (b) {
        v->small[c] = b->next;
        v->n_small[c]--;
        return b;
    }
    return malloc((c + 1) * SMALL_STEP);
}

static void small_put(vm *v, void *p, size_t size)
{
    size_t c = small_class(size);
    if (v->n_small[c] >= SMALL_KEEP) {
        free(p);
        return;
    }
    small_block *b = p;
    b->next = v->small[c];
    v->small[c] = b;
    v->n_small[c]++;
}

static void small_free_all(vm *v)
{
    for (size_t c = 0; c < SMALL_CLASSES; c++) {
        while (v->small[c]) {
            small_block *b = v->small[c];
            v->small[c] = b->next;
            free(b);
        }
        v->n_small[c] = 0;
    }
}

/* realloc semantics over small blocks and malloc'd large ones. old is the
 * size Lua asked for when it got ptr (0: no ptr). */
static void *block_resize(vm *v, void *ptr, size_t old, size_t nsize)
{
    bool old_small = ptr && old <= SMALL_MAX, new_small = nsize <= SMALL_MAX;
    if (!ptr)
        return new_small ? small_get(v, nsize) : malloc(nsize);
    if (old_small && new_small && small_class(old) == small_class(nsize))
        return ptr;
    if (!old_small && !new_small)
        return realloc(ptr, nsize);
    void *p = new_small ? small_get(v, nsize) : malloc(nsize);
    if (!p)
        return NULL;
    memcpy(p, ptr, old < nsize ? old : nsize);
    if (old_small)
        small_put(v, ptr, old);
    else
        free(ptr);
    return p;
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    vm *v = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
    if (nsize == 0) {
        if (ptr && old <= SMALL_MAX && old > 0)
            small_put(v, ptr, old);
        else
            free(ptr);
        v->used -= old;
        return NULL;
    }
    if (nsize > old && v->used - old + nsize > v->cap && !v->host_alloc) {
        if (!v->mem_failed && v->L) {
            v->mem_failed = true;
            lua_sethook(v->L, count_hook, LUA_MASKCOUNT, 1);
        }
        return NULL;
    }
    void *p = block_resize(v, ptr, old, nsize);
    if (!p)
        return nsize <= old ? ptr : NULL; /* Lua assumes shrinking never fails */
    if (nsize > old) {
        /* Building big strings is work no instruction count sees ("a .. b"
         * on megabytes is one instruction): charge it. */
        v->spent += (nsize - old) / ALLOC_BYTES_PER_UNIT;
        if (v->spent > v->budget && !v->budget_failed && v->L) {
            v->budget_failed = true;
            lua_sethook(v->L, count_hook, LUA_MASKCOUNT, 1);
        }
    }
    v->used = v->used - old + nsize;
    return p;
}

/* Charges work a C function does in one go; raises the budget error at once
 * when the budget is gone. */
static void charge(lua_State *L, uint64_t units)
{
    vm *v = vm_of(L);
    v->spent += units;
    if (v->budget_failed || v->spent > v->budget) {
        v->budget_failed = true;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "instruction budget exhausted");
    }
}

static void begin_call(vm *v)
{
    v->spent = 0;
    v->budget_failed = false;
    v->mem_failed = false;
    lua_sethook(v->L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
}

/* ---- guards on library functions that loop in C ---- */

/* Runs the wrapped library function (upvalue 1, a C function without
 * upvalues of its own) on this call's arguments, in this frame: a direct C
 * call, not a second Lua call. Returns its result count. */
static int call_original(lua_State *L)
{
    lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
    return f(L);
}

/* find, match, gmatch, gsub: refuse giant subjects, charge the scan. */
static int guarded_pattern(lua_State *L)
{
    size_t len;
    luaL_checklstring(L, 1, &len);
    if (len > OP_POLICY_MAX_PATTERN_SUBJECT)
        return luaL_error(L, "string subject too long for pattern matching (%d bytes max)",
                          (int)OP_POLICY_MAX_PATTERN_SUBJECT);
    charge(L, 1 + len / BYTES_PER_UNIT);
    return call_original(L);
}

/* string.rep: rep("", n) would loop n times copying nothing, in one call. */
static int guarded_rep(lua_State *L)
{
    size_t l, lsep;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    int nres = call_original(L);
    charge(L, 1 + lua_rawlen(L, -1) / BYTES_PER_UNIT);
    return nres;
}

/* table.move(a1, f, e, t [, a2]) copies e - f + 1 elements in one call. */
static int guarded_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    if (e >= f)
        charge(L, (uint64_t)e - (uint64_t)f + 1u);
    return call_original(L);
}

/* Replaces lib.name (lib on top) with fn wrapping the original. */
static void wrap_lib_fn(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

/* Removes string.dump and wraps the looping functions in the string table
 * that both policies and the string metatable see. Expects it on top. */
static void harden_string_lib(lua_State *L)
{
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    static const char *const pat[] = {"find", "match", "gmatch", "gsub"};
    for (size_t i = 0; i < sizeof pat / sizeof pat[0]; i++)
        wrap_lib_fn(L, pat[i], guarded_pattern);
    wrap_lib_fn(L, "rep", guarded_rep);
}

/* ---- coroutines: charged resumes ---- */

/* Resumes co with narg values from L's top. Returns the number of results
 * moved to L, or -1 with the error object on L. */
static int resume_charged(lua_State *L, lua_State *co, int narg)
{
    if (!lua_checkstack(co, narg)) {
        lua_pushliteral(L, "too many arguments to resume");
        return -1;
    }
    if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
        lua_pushliteral(L, "cannot resume dead coroutine");
        return -1;
    }
    charge(L, CO_STEP);
    lua_xmove(L, co, narg);
    lua_sethook(co, count_hook, LUA_MASKCOUNT, vm_of(L)->budget_failed ? 1 : CO_STEP);
    int nres = 0;
    int status = lua_resume(co, L, narg, &nres);
    if (status == LUA_OK || status == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            lua_pushliteral(L, "too many results to resume");
            return -1;
        }
        lua_xmove(co, L, nres);
        return nres;
    }
    lua_xmove(co, L, 1);
    return -1;
}

static int co_resume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    int r = resume_charged(L, co, lua_gettop(L) - 1);
    if (r < 0) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
}

static int co_wrap_call(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int r = resume_charged(L, co, lua_gettop(L));
    if (r >= 0)
        return r;
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) { /* error in the coroutine */
        stat = lua_resetthread(co);            /* close its to-be-closed variables */
        lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int co_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, co_wrap_call, 1);
    return 1;
}

/* setmetatable without __gc: a finalizer runs whenever the collector gets to
 * it, including between calls and in lua_close, where no budget applies, so
 * an endless finalizer would hang the worker thread. */
static int safe_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not available to policies");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/* ---- JSON -> Lua ----
 * A decoder of our own that builds Lua values straight from the text: going
 * through jansson cost a tree of mallocs per document, then a copy of it
 * into Lua (most of a gateway request's policy time went there). Input is
 * untrusted: every read is bounded by end, nesting by JSON_MAX_DEPTH (an
 * error raised, as for any policy error), and strings must be valid UTF-8
 * (as jansson requires, so whatever decodes can be encoded again). Numbers
 * without fraction or exponent that fit become integers, others floats. */

typedef struct jdec {
    lua_State *L;
    const unsigned char *start, *p, *end;
    const char *err; /* static reason; NULL while fine */
    luaL_Buffer *sb; /* scratch for strings with escapes */
} jdec;

static bool jd_fail(jdec *d, const char *why)
{
    if (!d->err)
        d->err = why;
    return false;
}

static void jd_ws(jdec *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
        d->p++;
}

/* Length of the valid UTF-8 sequence at p (< end), or 0. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], h = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* A string (d->p at the opening quote): pushes it. */
static bool jd_string(jdec *d)
{
    const unsigned char *q = ++d->p;
    /* Fast path: no escapes, pushed straight from the text. */
    while (q < d->end && *q != '"' && *q != '\\') {
        if (*q >= 0x20 && *q < 0x80) {
            q++;
            continue;
        }
        if (*q < 0x20)
            return jd_fail(d, "control character in string");
        size_t n = utf8_seq(q, d->end);
        if (!n)
            return jd_fail(d, "invalid UTF-8 in string");
        q += n;
    }
    if (q >= d->end)
        return jd_fail(d, "unterminated string");
    if (*q == '"') {
        lua_pushlstring(d->L, (const char *)d->p, (size_t)(q - d->p));
        d->p = q + 1;
        return true;
    }
    luaL_Buffer *b = d->sb;
    luaL_buffinit(d->L, b);
    luaL_addlstring(b, (const char *)d->p, (size_t)(q - d->p));
    while (q < d->end && *q != '"') {
        if (*q == '\\') {
            if (d->end - q < 2)
                return jd_fail(d, "unterminated string");
            unsigned char e = q[1];
            q += 2;
            switch (e) {
            case '"': luaL_addchar(b, '"'); break;
            case '\\': luaL_addchar(b, '\\'); break;
            case '/': luaL_addchar(b, '/'); break;
            case 'b': luaL_addchar(b, '\b'); break;
            case 'f': luaL_addchar(b, '\f'); break;
            case 'n': luaL_addchar(b, '\n'); break;
            case 'r': luaL_addchar(b, '\r'); break;
            case 't': luaL_addchar(b, '\t'); break;
            case 'u': {
                int cp = d->end - q >= 4 ? hex4(q) : -1;
                if (cp < 0)
                    return jd_fail(d, "invalid \\u escape");
                q += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return jd_fail(d, "lone low surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int lo = d->end - q >= 6 && q[0] == '\\' && q[1] == 'u' ? hex4(q + 2) : -1;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return jd_fail(d, "lone high surrogate in \\u escape");
                    q += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                char u[4];
                size_t n;
                if (cp < 0x80) {
                    u[0] = (char)cp, n = 1;
                } else if (cp < 0x800) {
                    u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
                } else if (cp < 0x10000) {
                    u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
                } else {
                    u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F));
                    n = 4;
                }
                luaL_addlstring(b, u, n);
                break;
            }
            default: return jd_fail(d, "invalid escape in string");
            }
            continue;
        }
        if (*q < 0x20)
            return jd_fail(d, "control character in string");
        size_t n = utf8_seq(q, d->end);
        if (!n)
            return jd_fail(d, "invalid UTF-8 in string");
        luaL_addlstring(b, (const char *)q, n);
        q += n;
    }
    if (q >= d->end)
        return jd_fail(d, "unterminated string");
    d->p = q + 1;
    luaL_pushresult(b);
    return true;
}

static bool jd_number(jdec *d)
{
    const unsigned char *q = d->p;
    if (q < d->end && *q == '-')
        q++;
    if (q >= d->end || !(*q >= '0' && *q <= '9'))
        return jd_fail(d, "invalid number");
    if (*q == '0')
        q++;
    else
        while (q < d->end && *q >= '0' && *q <= '9')
            q++;
    if (q < d->end && *q == '.') {
        q++;
        if (q >= d->end || !(*q >= '0' && *q <= '9'))
            return jd_fail(d, "invalid number");
        while (q < d->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < d->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < d->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= d->end || !(*q >= '0' && *q <= '9'))
            return jd_fail(d, "invalid number");
        while (q < d->end && *q >= '0' && *q <= '9')
            q++;
    }
    char num[128];
    size_t n = (size_t)(q - d->p);
    if (n >= sizeof num)
        return jd_fail(d, "number too long");
    memcpy(num, d->p, n);
    num[n] = '\0';
    /* Lua's own conversion: integers stay integers (floats past the
     * integer range), and the decimal point is right in any locale. */
    if (lua_stringtonumber(d->L, num) != n + 1)
        return jd_fail(d, "invalid number");
    if (!lua_isinteger(d->L, -1) && !isfinite(lua_tonumber(d->L, -1))) {
        lua_pop(d->L, 1);
        return jd_fail(d, "number out of range");
    }
    d->p = q;
    return true;
}

static bool jd_literal(jdec *d, const char *word, size_t n)
{
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return jd_fail(d, "invalid literal");
    d->p += n;
    return true;
}

/* Pushes the value at d->p (after whitespace). */
static bool jd_value(jdec *d, int depth)
{
    lua_State *L = d->L;
    jd_ws(d);
    if (d->p >= d->end)
        return jd_fail(d, "unexpected end of input");
    switch (*d->p) {
    case '{':
    case '[': {
        if (depth >= JSON_MAX_DEPTH)
            luaL_error(L, "JSON nested deeper than %d", JSON_MAX_DEPTH);
        luaL_checkstack(L, 6, "JSON too deep");
        bool obj = *d->p == '{';
        char close = obj ? '}' : ']';
        d->p++;
        /* Room for a few entries up front: small objects (metadata) then
         * never rehash. */
        lua_createtable(L, obj ? 0 : 4, obj ? 4 : 0);
        jd_ws(d);
        if (d->p < d->end && *d->p == close) {
            d->p++;
            return true;
        }
        for (lua_Integer i = 1;; i++) {
            if (obj) {
                jd_ws(d);
                if (d->p >= d->end || *d->p != '"')
                    return jd_fail(d, "object key must be a string");
                if (!jd_string(d))
                    return false;
                jd_ws(d);
                if (d->p >= d->end || *d->p != ':')
                    return jd_fail(d, "':' expected after an object key");
                d->p++;
            }
            if (!jd_value(d, depth + 1))
                return false;
            if (obj)
                lua_rawset(L, -3);
            else
                lua_rawseti(L, -2, i);
            jd_ws(d);
            if (d->p < d->end && *d->p == ',') {
                d->p++;
                continue;
            }
            if (d->p < d->end && *d->p == close) {
                d->p++;
                return true;
            }
            return jd_fail(d, obj ? "',' or '}' expected" : "',' or ']' expected");
        }
    }
    case '"': return jd_string(d);
    case 't':
        if (!jd_literal(d, "true", 4))
            return false;
        lua_pushboolean(L, 1);
        return true;
    case 'f':
        if (!jd_literal(d, "false", 5))
            return false;
        lua_pushboolean(L, 0);
        return true;
    case 'n':
        if (!jd_literal(d, "null", 4))
            return false;
        lua_pushlightuserdata(L, NULL); /* outpost.null */
        return true;
    default: return jd_number(d);
    }
}

/* Decodes text[0..len) and pushes one value. On a syntax error pushes
 * nothing, returns false and writes "reason (line L, column C)" into err.
 * object_only: anything but an object is an error. Raises (a policy error)
 * past JSON_MAX_DEPTH or when memory runs out. */
static bool json_decode_push(lua_State *L, const char *text, size_t len, bool object_only,
                             char *err, size_t errlen)
{
    luaL_Buffer sb;
    jdec d = {.L = L, .start = (const unsigned char *)text, .p = (const unsigned char *)text,
              .end = (const unsigned char *)text + len, .sb = &sb};
    int top = lua_gettop(L);
    jd_ws(&d);
    if (object_only && (d.p >= d.end || *d.p != '{'))
        jd_fail(&d, "not a JSON object");
    else if (jd_value(&d, 0)) {
        jd_ws(&d);
        if (d.p != d.end)
            jd_fail(&d, "trailing characters after the value");
    }
    if (!d.err)
        return true;
    lua_settop(L, top);
    int line = 1, col = 1;
    for (const unsigned char *c = d.start; c < d.p && c < d.end; c++) {
        if (*c == '\n')
            line++, col = 1;
        else
            col++;
    }
    snprintf(err, errlen, "%s (line %d, column %d)", d.err, line, col);
    return false;
}

/* ---- Lua -> JSON ----
 * jansson's memory is outside the Lua cap, so no Lua error may escape while
 * a json_t is held: conversions from Lua report errors in a buffer instead
 * of raising. */

static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen);

/* A table is a JSON array when its keys are exactly 1..n, n > 0. */
static bool is_json_array(lua_State *L, int idx)
{
    lua_Unsigned n = lua_rawlen(L, idx), count = 0;
    if (n == 0)
        return false;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_Integer k = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
        if (k < 1 || (lua_Unsigned)k > n) {
            lua_pop(L, 1);
            return false;
        }
        count++;
    }
    return count == n;
}

static json_t *table_to_json(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
    if (is_json_array(L, idx)) {
        json_t *a = json_array();
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        for (lua_Integer i = 1; a && i <= n; i++) {
            lua_rawgeti(L, idx, i);
            json_t *item = to_json(L, -1, depth + 1, err, errlen);
            lua_pop(L, 1);
            if (!item || json_array_append_new(a, item) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    json_t *o = json_object();
    lua_pushnil(L);
    while (o && lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "object keys must be strings (got a %s key)",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            json_decref(o);
            return NULL;
        }
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);
        json_t *item = to_json(L, -1, depth + 1, err, errlen);
        lua_pop(L, 1);
        if (!item || json_object_setn_new(o, k, klen, item) != 0) {
            if (item && !err[0])
                snprintf(err, errlen, "object key is not valid UTF-8");
            lua_pop(L, 1);
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* The JSON for the value at idx, or NULL with err filled. Never raises. */
static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    if (depth > JSON_MAX_DEPTH || !lua_checkstack(L, 4)) {
        snprintf(err, errlen, "value nested deeper than %d (a cycle?)", JSON_MAX_DEPTH);
        return NULL;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx))) {
            snprintf(err, errlen, "cannot encode NaN or infinity as JSON");
            return NULL;
        }
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_t *j = json_stringn(s, n);
        if (!j)
            snprintf(err, errlen, "string is not valid UTF-8");
        return j;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return json_null();
        break;
    case LUA_TTABLE: return table_to_json(L, idx, depth, err, errlen);
    default: break;
    }
    snprintf(err, errlen, "cannot encode a %s as JSON", luaL_typename(L, idx));
    return NULL;
}

static int l_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, 1 + n / BYTES_PER_UNIT);
    char err[160];
    if (!json_decode_push(L, s, n, false, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON: %s", err);
        return 2;
    }
    return 1;
}

static int push_text_unprotected(lua_State *L)
{
    lua_pushstring(L, lua_touserdata(L, 1));
    return 1;
}

/* Object keys are sorted, so the same table always encodes the same way. */
static int l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    char err[160] = "";
    json_t *j = to_json(L, 1, 0, err, sizeof err);
    if (!j)
        return luaL_error(L, "%s", err[0] ? err : "cannot encode value");
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    json_decref(j);
    if (!s)
        return luaL_error(L, "cannot encode value");
    lua_pushcfunction(L, push_text_unprotected); /* the cap may refuse it: free s anyway */
    lua_pushlightuserdata(L, s);
    int rc = lua_pcall(L, 1, 1, 0);
    free(s);
    if (rc != LUA_OK)
        return lua_error(L);
    charge(L, 1 + lua_rawlen(L, -1) / BYTES_PER_UNIT);
    return 1;
}

/* ---- the outpost table ---- */

static int l_route(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "model");
    return 1;
}

static int l_reject(lua_State *L)
{
    lua_Integer status = luaL_optinteger(L, 1, 403);
    const char *msg = luaL_optstring(L, 2, "rejected by policy");
    lua_createtable(L, 0, 1);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    lua_setfield(L, -2, "reject");
    return 1;
}

/* outpost.retry([delay_ms]), outpost.fallback(), outpost.fail([status [, message]]),
 * outpost.accept(): the decisions of on_error and on_response, as tables. */
static int l_retry(lua_State *L)
{
    int has_delay = !lua_isnoneornil(L, 1);
    if (has_delay)
        luaL_checknumber(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "retry");
    lua_setfield(L, -2, "action");
    if (has_delay) {
        lua_pushvalue(L, 1);
        lua_setfield(L, -2, "delay_ms");
    }
    return 1;
}

static int push_action(lua_State *L, const char *action)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, action);
    lua_setfield(L, -2, "action");
    return 1;
}

static int l_fallback(lua_State *L) { return push_action(L, "fallback"); }
static int l_accept(lua_State *L) { return push_action(L, "accept"); }

static int l_fail(lua_State *L)
{
    lua_Integer status = luaL_optinteger(L, 1, 502);
    const char *msg = luaL_optstring(L, 2, NULL);
    push_action(L, "fail");
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    if (msg) {
        lua_pushstring(L, msg);
        lua_setfield(L, -2, "message");
    }
    return 1;
}

static int l_hash(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    /* Non-negative so that `hash % 100` is a percentage bucket. */
    lua_pushinteger(L, (lua_Integer)(pl_fnv1a64(s, n) >> 1));
    return 1;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, (double)pl_time_mono_ns() / 1e9);
    return 1;
}

static const char *cur_policy_name(vm *v)
{
    return v->cur < v->set->n ? v->set->names[v->cur] : "?";
}

static int l_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    int lv = pl_log_level_parse(level);
    if (lv < 0 || lv >= PL_LOG_OFF)
        return luaL_error(L, "unknown log level '%s' (debug, info, warn, error)", level);
    pl_log_event((pl_log_level)lv, "policy.log", "policy", cur_policy_name(vm_of(L)), "message",
                 msg, (const char *)0);
    return 0;
}

static int l_print(lua_State *L)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    PL_LOG_DEBUG("policy.log", "policy", cur_policy_name(vm_of(L)), "message",
                 lua_tostring(L, -1));
    return 0;
}

/* ---- environments, load and require ---- */

static void push_env(lua_State *L);
static int req_tables_index(lua_State *L);
static int req_pairs(lua_State *L);
static int req_newindex(lua_State *L);
static int res_index(lua_State *L);
static int res_pairs(lua_State *L);

/* load(chunk [, name [, mode [, env]]]) restricted to text; the default
 * environment is the caller's sandbox (upvalue 1). */
static int l_load(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *name = luaL_optstring(L, 2, "=(load)");
    int has_env = lua_gettop(L) >= 4;
    if (luaL_loadbufferx(L, s, n, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env)
        lua_pushvalue(L, 4);
    else
        lua_pushvalue(L, lua_upvalueindex(1));
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return 1;
}

static int l_require(lua_State *L)
{
    vm *v = vm_of(L);
    const char *name = luaL_checkstring(L, 1);
    const char *p = name;
    bool ok = strncmp(p, "outpost.", 8) == 0 && p[8] != '\0';
    for (p = name + 8; ok && *p; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
    if (!ok)
        return luaL_error(L, "module '%s' not allowed: policies may require only outpost.* "
                             "modules from Outpost's policy library", name);
    lua_getfield(L, LUA_REGISTRYINDEX, "outpost.loaded");
    lua_getfield(L, -1, name);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    char path[4096];
    snprintf(path, sizeof path, "%s/outpost/%s.lua", v->set->lib_dir, name + 8);
    char *src;
    size_t len;
    int rc = pl_file_read_all(path, OP_POLICY_MAX_FILE_BYTES, &src, &len);
    if (rc != 0)
        return luaL_error(L, "module '%s' not found (%s: %s)", name, path, strerror(-rc));
    char chunk[300];
    snprintf(chunk, sizeof chunk, "@outpost/%s.lua", name + 8);
    rc = luaL_loadbufferx(L, src, len, chunk, "t");
    free(src);
    if (rc != LUA_OK)
        return lua_error(L);
    push_env(L);
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    return 1;
}

/* Shallow copy of the table at the top into a new table (so one policy
 * cannot change another's string or math library). Replaces it. */
static void copy_table_top(lua_State *L)
{
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_remove(L, -2);
}

/* Pushes a fresh sandbox environment built from the registry's templates. */
static void push_env(lua_State *L)
{
    lua_newtable(L);
    static const char *const base[] = {"assert", "error", "ipairs", "next", "pairs", "pcall",
                                       "xpcall", "select", "tonumber", "tostring", "type",
                                       "rawequal", "rawget", "rawlen", "rawset", "setmetatable",
                                       "getmetatable", "_VERSION"};
    lua_getfield(L, LUA_REGISTRYINDEX, "outpost.globals");
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        lua_getfield(L, -1, base[i]);
        lua_setfield(L, -3, base[i]);
    }
    static const char *const libs[] = {"string", "table", "math", "utf8", "coroutine", "os",
                                       "outpost"};
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        lua_getfield(L, -1, libs[i]);
        copy_table_top(L);
        lua_setfield(L, -3, libs[i]);
    }
    lua_pop(L, 1); /* globals template */
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_load, 1);
    lua_setfield(L, -2, "load");
    lua_pushcfunction(L, l_require);
    lua_setfield(L, -2, "require");
    lua_pushcfunction(L, l_print);
    lua_setfield(L, -2, "print");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
}

/* Pushes {name = id} for names[1..count-1]. */
static void push_field_map(lua_State *L, const char *const *names, int count)
{
    lua_createtable(L, 0, count);
    for (int f = 1; f < count; f++) {
        lua_pushinteger(L, f);
        lua_setfield(L, -2, names[f]);
    }
}

/* Opens the allowed libraries and records templates in the registry:
 * "outpost.globals" holds everything a sandbox may copy; builds the
 * metatables of req and err/resp and the interned result keys. */
static int setup_state(lua_State *L)
{
    luaL_requiref(L, "_G", luaopen_base, 1);
    lua_pushcfunction(L, safe_setmetatable);
    lua_setfield(L, -2, "setmetatable");
    lua_pop(L, 1);
    luaL_requiref(L, "string", luaopen_string, 1);
    harden_string_lib(L);
    lua_pop(L, 1);
    luaL_requiref(L, "table", luaopen_table, 1);
    wrap_lib_fn(L, "move", guarded_move);
    lua_pop(L, 1);
    luaL_requiref(L, "math", luaopen_math, 1);
    lua_pop(L, 1);
    luaL_requiref(L, "utf8", luaopen_utf8, 1);
    lua_pop(L, 1);
    luaL_requiref(L, "coroutine", luaopen_coroutine, 1);
    lua_pushcfunction(L, co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
    luaL_requiref(L, "os", luaopen_os, 0);
    lua_createtable(L, 0, 4); /* os: time functions only */
    static const char *const os_ok[] = {"time", "clock", "date", "difftime"};
    for (size_t i = 0; i < 4; i++) {
        lua_getfield(L, -2, os_ok[i]);
        lua_setfield(L, -2, os_ok[i]);
    }
    lua_setglobal(L, "os");
    lua_pop(L, 1);

    static const luaL_Reg outpost_fns[] = {
        {"route", l_route},         {"reject", l_reject},           {"hash", l_hash},
        {"now", l_now},             {"log", l_log},                 {"json_decode", l_json_decode},
        {"json_encode", l_json_encode}, {"retry", l_retry},     {"fallback", l_fallback},
        {"fail", l_fail},           {"accept", l_accept},           {NULL, NULL}};
    luaL_newlib(L, outpost_fns);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_setglobal(L, "outpost");

    lua_pushglobaltable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "outpost.globals");
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "outpost.loaded");

    vm *v = vm_of(L);
    /* F, with __index building the req tables; req's metatable: __index = F. */
    lua_createtable(L, 0, RF_COUNT);
    lua_createtable(L, 0, 1);
    push_field_map(L, req_fields, RF_COUNT);
    lua_pushcclosure(L, req_tables_index, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    v->fields_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 0, 4);
    lua_insert(L, -2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, req_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, req_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "outpost request data");
    lua_setfield(L, -2, "__metatable"); /* policies may not swap it out */
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "outpost.req_meta");
    lua_createtable(L, 0, 0);
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
    v->req_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* err/resp's metatable: __index builds fields on first read. */
    lua_createtable(L, 0, 3);
    push_field_map(L, res_fields, XF_COUNT);
    lua_pushcclosure(L, res_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, res_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "outpost request data");
    lua_setfield(L, -2, "__metatable");
    v->res_meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, K_COUNT, 0);
    for (int k = 1; k < K_COUNT; k++) {
        lua_pushstring(L, result_keys[k]);
        lua_rawseti(L, -2, k);
    }
    v->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 0);
    v->cur_res_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* ======================================================================== */
/* The req and err/resp tables                                              */
/* ======================================================================== */

/* req. Policies get one empty table per state, req, whose metatable makes
 * it read-only (__newindex raises; a rawset on it is undone by giving the
 * next chain a fresh one) and whose __index is the state's fields table F,
 * holding the call's scalar fields (model, account, gateway, step, ...):
 * reading req.model is a plain table lookup in the VM, with no C call and
 * nothing allocated per call. sync_fields keeps F in step with the request:
 * it compares each field with a C copy of what F holds and only touches F
 * for fields that changed (between the route and limit calls of one
 * request, nothing does). req.headers, req.body and req.metadata are built
 * on first read by F's own __index (req_tables_index) and kept in F until
 * the chain ends, or, when the request has an id, until a call for another
 * request (or with other sources) comes (drop_tables): one conversion per
 * chain, or per request.
 *
 * Kept past its call, req reads F: the scalars of the call running (or of
 * the last one, between calls), and the tables only during a call of the
 * same request. It never reaches request data that is gone: F holds Lua
 * copies, and the host dereferences v->req only while a call runs.
 *
 * err/resp: one table per call with __index (res_index) building a field on
 * first read and caching it in the table; a table kept past its call is no
 * longer the current one (registry slot cur_res_ref) and reads nil. */

static bool is_current(lua_State *L, int idx, int slot_ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, slot_ref);
    bool cur = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return cur;
}

/* Pushes the JSON object text as a table ({} when absent, invalid or not an
 * object). Charged like json_decode. */
static void push_json_object_text(lua_State *L, const char *text, size_t len)
{
    char err[160];
    if (text && len > 0) {
        charge(L, 1 + len / BYTES_PER_UNIT);
        if (json_decode_push(L, text, len, true, err, sizeof err))
            return;
    }
    lua_newtable(L);
}

static void push_opt_string(lua_State *L, const char *s)
{
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

/* Pushes req table field f (headers, body, metadata) of the call running. */
static void push_req_table(lua_State *L, vm *v, int f)
{
    const op_route_request *rq = v->req;
    if (f == RF_HEADERS) {
        lua_createtable(L, 0, (int)(rq->n_headers < 64 ? rq->n_headers : 64));
        for (size_t i = 0; i < rq->n_headers; i++) {
            if (!rq->headers[i].name || !rq->headers[i].value)
                continue;
            char lower[256];
            size_t k = 0;
            for (const char *p = rq->headers[i].name; *p && k < sizeof lower - 1; p++)
                lower[k++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
            lower[k] = '\0';
            lua_pushstring(L, rq->headers[i].value);
            lua_setfield(L, -2, lower);
        }
    } else if (f == RF_BODY) {
        push_json_object_text(L, rq->body_json, rq->body_json ? rq->body_len : 0);
    } else {
        push_json_object_text(L, rq->metadata_json,
                              rq->metadata_json ? strlen(rq->metadata_json) : 0);
    }
}

static bool is_table_field(int f) { return f == RF_HEADERS || f == RF_BODY || f == RF_METADATA; }

/* What req table field f is built from (to tell when it must be rebuilt). */
static void table_source(const op_route_request *rq, int f, const void **src, size_t *len)
{
    if (f == RF_HEADERS) {
        *src = rq->headers, *len = rq->n_headers;
    } else if (f == RF_BODY) {
        *src = rq->body_json, *len = rq->body_json ? rq->body_len : 0;
    } else {
        *src = rq->metadata_json, *len = rq->metadata_json ? strlen(rq->metadata_json) : 0;
    }
}

/* Drops from F the req tables that do not belong to the call about to run
 * (all of them when keep_same_request is false): another request id, or
 * another source. Setting existing keys to nil allocates nothing. */
static void drop_tables(vm *v, bool keep_same_request)
{
    if (!v->tables_built)
        return;
    const op_route_request *rq = v->req;
    bool same = keep_same_request && rq && rq->request_id != 0 &&
                rq->request_id == v->tables_req_id;
    lua_State *L = v->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->fields_ref);
    for (int f = RF_HEADERS; f <= RF_METADATA; f++) {
        int t = f - RF_HEADERS;
        if (!(v->tables_built & (1u << t)))
            continue;
        if (same) {
            const void *src;
            size_t len;
            table_source(rq, f, &src, &len);
            if (src == v->table_src[t] && len == v->table_src_len[t])
                continue;
        }
        lua_pushstring(L, req_fields[f]);
        lua_pushnil(L);
        lua_rawset(L, -3);
        v->tables_built &= ~(1u << t);
    }
    lua_pop(L, 1);
}

/* __index of F (F, key): builds headers/body/metadata for the call
 * running and caches them in F until the chain ends. Upvalue 1: {name = id}. */
static int req_tables_index(lua_State *L)
{
    vm *v = vm_of(L);
    lua_pushvalue(L, 2);
    int f = lua_rawget(L, lua_upvalueindex(1)) == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    if (!is_table_field(f) || !v->req)
        return 0;
    push_req_table(L, v, f);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    int t = f - RF_HEADERS;
    table_source(v->req, f, &v->table_src[t], &v->table_src_len[t]);
    v->tables_built |= 1u << t;
    v->tables_req_id = v->req->request_id;
    return 1;
}

/* __pairs(req): iterates a fresh copy of every field (never F itself: the
 * iteration state is visible to Lua code, and F must not be written). */
static int req_pairs(lua_State *L)
{
    vm *v = vm_of(L);
    lua_createtable(L, 0, RF_COUNT);
    int copy = lua_gettop(L);
    if (v->req) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, v->fields_ref);
        int fields = lua_gettop(L);
        for (int f = 1; f < RF_COUNT; f++) {
            lua_pushstring(L, req_fields[f]);
            lua_pushstring(L, req_fields[f]);
            lua_gettable(L, fields); /* builds the tables */
            lua_rawset(L, copy);
        }
        lua_settop(L, copy);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "outpost.globals");
    lua_getfield(L, -1, "next");
    lua_pushvalue(L, copy);
    lua_pushnil(L);
    return 3;
}

/* __newindex(req): req is the request as received, read-only. */
static int req_newindex(lua_State *L)
{
    return luaL_error(L, "req is read-only (keep what you need in a local)");
}

/* ---- keeping F in step with the request ---- */

/* Sets F[f] (F at index fields) to the string val or nil, unless its copy
 * says F holds that already. */
static void sync_str(vm *v, int fields, int f, const char *val)
{
    shadow_str *sh = &v->shadow[f];
    if (val ? sh->state == SH_PRESENT && strcmp(sh->s, val) == 0 : sh->state == SH_ABSENT)
        return;
    size_t len = val ? strlen(val) : 0;
    sh->state = SH_ABSENT;
    if (val) {
        sh->state = SH_UNKNOWN; /* without a copy, compared afresh next time */
        if (len + 1 > sh->cap) {
            char *p = realloc(sh->s, len + 1);
            if (p) {
                sh->s = p;
                sh->cap = len + 1;
            }
        }
        if (len + 1 <= sh->cap) {
            memcpy(sh->s, val, len + 1);
            sh->state = SH_PRESENT;
        }
    }
    lua_pushstring(v->L, req_fields[f]);
    if (val)
        lua_pushlstring(v->L, val, len);
    else
        lua_pushnil(v->L);
    lua_rawset(v->L, fields);
}

/* Sets F[f] to the integer val, or nil when present is false. */
static void sync_int(vm *v, int fields, int f, bool present, long long val)
{
    shadow_str *sh = &v->shadow[f];
    if (present ? sh->state == SH_PRESENT && sh->ival == val : sh->state == SH_ABSENT)
        return;
    sh->state = present ? SH_PRESENT : SH_ABSENT;
    sh->ival = val;
    lua_pushstring(v->L, req_fields[f]);
    if (present)
        lua_pushinteger(v->L, (lua_Integer)val);
    else
        lua_pushnil(v->L);
    lua_rawset(v->L, fields);
}

/* Brings F in step with the call about to run (v->req, v->model,
 * v->provider). Allocates (host_alloc: past the cap if need be). */
static void sync_fields(vm *v)
{
    lua_State *L = v->L;
    const op_route_request *rq = v->req;
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->fields_ref);
    int fields = lua_gettop(L);
    sync_str(v, fields, RF_MODEL, v->model);
    sync_str(v, fields, RF_TASK, rq->task);
    sync_str(v, fields, RF_ACCOUNT, rq->account);
    sync_str(v, fields, RF_METHOD, rq->method);
    sync_str(v, fields, RF_PATH, rq->path);
    sync_int(v, fields, RF_TOKENS, true, rq->tokens_estimate);
    sync_str(v, fields, RF_GATEWAY, rq->gateway);
    sync_str(v, fields, RF_PROVIDER, v->provider && v->provider[0] ? v->provider : NULL);
    sync_str(v, fields, RF_ENDPOINT, rq->endpoint);
    sync_str(v, fields, RF_TOKEN_NAME, rq->token_name);
    sync_int(v, fields, RF_MAX_TOKENS, rq->max_tokens > 0, rq->max_tokens);
    sync_int(v, fields, RF_STEP, rq->attempt >= 1, rq->step);
    sync_int(v, fields, RF_ATTEMPT, rq->attempt >= 1, rq->attempt);
    lua_settop(L, fields - 1);
}

/* ---- err/resp ---- */

/* Pushes err/resp field f (nil when absent). */
static void push_res_field(lua_State *L, vm *v, int f)
{
    const op_attempt_result *r = v->res;
    bool in_attempt = v->req->attempt >= 1;
    switch (f) {
    case XF_STATUS: lua_pushinteger(L, r->status); break;
    case XF_KIND: push_opt_string(L, r->error_kind); break;
    case XF_MESSAGE: push_opt_string(L, r->message); break;
    case XF_BODY:
        if (r->body)
            lua_pushlstring(L, r->body, r->body_len);
        else
            lua_pushnil(L);
        break;
    case XF_BODY_LEN: lua_pushinteger(L, r->body ? (lua_Integer)r->body_len : 0); break;
    case XF_CONTENT_TYPE: push_opt_string(L, r->content_type); break;
    case XF_RETRY_AFTER:
        if (r->retry_after_ms > 0)
            lua_pushinteger(L, r->retry_after_ms);
        else
            lua_pushnil(L);
        break;
    case XF_ATTEMPT:
        if (in_attempt)
            lua_pushinteger(L, v->req->attempt);
        else
            lua_pushnil(L);
        break;
    case XF_MAX_ATTEMPTS: lua_pushinteger(L, r->max_attempts); break;
    case XF_STEP:
        if (in_attempt)
            lua_pushinteger(L, v->req->step);
        else
            lua_pushnil(L);
        break;
    case XF_DURATION: lua_pushnumber(L, r->duration_ms); break;
    default: lua_pushnil(L); break;
    }
}

/* __index(err, key) with upvalue 1 = {name = id}. */
static int res_index(lua_State *L)
{
    vm *v = vm_of(L);
    lua_pushvalue(L, 2);
    int f = lua_rawget(L, lua_upvalueindex(1)) == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    if (f == 0 || !v->req || !v->res || !is_current(L, 1, v->cur_res_ref))
        return 0;
    push_res_field(L, v, f);
    if (!lua_isnil(L, -1)) {
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1); /* cache: later reads skip __index */
    }
    return 1;
}

/* __pairs(err): builds every field not read yet, then iterates with next. */
static int res_pairs(lua_State *L)
{
    vm *v = vm_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (v->req && v->res && is_current(L, 1, v->cur_res_ref)) {
        for (int f = 1; f < XF_COUNT; f++) {
            lua_pushstring(L, res_fields[f]);
            if (lua_rawget(L, 1) == LUA_TNIL) {
                lua_pushstring(L, res_fields[f]);
                push_res_field(L, v, f);
                lua_rawset(L, 1);
            }
            lua_settop(L, 1);
        }
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "outpost.globals");
    lua_getfield(L, -1, "next");
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Pushes an empty table with the metatable meta_ref and makes it the
 * current one of slot_ref. */
static void push_call_table(vm *v, int meta_ref, int slot_ref)
{
    lua_State *L = v->L;
    lua_createtable(L, 0, 4); /* room for the fields a policy typically reads */
    lua_rawgeti(L, LUA_REGISTRYINDEX, meta_ref);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawseti(L, LUA_REGISTRYINDEX, slot_ref);
}

/* req stays empty (its fields live in F and writes raise), unless a policy
 * used rawset on it: then the next chain gets a fresh req, so nothing a
 * policy wrote reaches another hook call (within one chain, the next policy
 * sees it, as it sees a rewritten model). */
static void renew_req_if_written(vm *v)
{
    lua_State *L = v->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->req_ref);
    lua_pushnil(L);
    if (!lua_next(L, -2)) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 3);
    lua_createtable(L, 0, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, "outpost.req_meta");
    lua_setmetatable(L, -2);
    lua_rawseti(L, LUA_REGISTRYINDEX, v->req_ref);
}

/* ======================================================================== */
/* The hook registry                                                        */
/* ======================================================================== */

/* One chain run: the inputs and where each hook's results go. */
typedef struct hook_call {
    const op_route_request *req;
    const op_attempt_result *res; /* on_error, on_response */
    const char *model, *provider; /* req.model, req.provider as the policies see them */
    op_route_decision *route;     /* route; limit's failure report */
    op_next_decision *next;       /* on_error, on_response */
    op_limit_rule *rules;         /* limit */
    size_t n_rules;
    char *message, *policy;       /* where a failure is described */
    size_t message_len, policy_len;
} hook_call;

/* Reads policy i's return value (top of the stack; read raw, so metatables
 * on it are ignored and nothing can raise). Returns NULL if valid, else an
 * error message (static or in buf). Sets *stop when the chain ends here. */
typedef const char *(*hook_read_fn)(lua_State *L, vm *v, hook_call *c, size_t i, char *buf,
                                    size_t n, bool *stop);

typedef struct hook_def {
    const char *name;   /* the Lua global */
    bool with_result;   /* called as name(req, err_or_resp) instead of name(req) */
    hook_read_fn read;
} hook_def;

static const char *read_route(lua_State *L, vm *v, hook_call *c, size_t i, char *buf, size_t n,
                              bool *stop);
static const char *read_limit(lua_State *L, vm *v, hook_call *c, size_t i, char *buf, size_t n,
                              bool *stop);
static const char *read_on_error(lua_State *L, vm *v, hook_call *c, size_t i, char *buf,
                                 size_t n, bool *stop);
static const char *read_on_response(lua_State *L, vm *v, hook_call *c, size_t i, char *buf,
                                    size_t n, bool *stop);

static const hook_def hooks[OP_HOOK_COUNT] = {
    [OP_HOOK_ROUTE] = {"route", false, read_route},
    [OP_HOOK_LIMIT] = {"limit", false, read_limit},
    [OP_HOOK_ON_ERROR] = {"on_error", true, read_on_error},
    [OP_HOOK_ON_RESPONSE] = {"on_response", true, read_on_response},
};

const char *op_policy_hook_name(op_policy_hook h)
{
    return (unsigned)h < OP_HOOK_COUNT ? hooks[h].name : "?";
}

int op_policy_hook_parse(const char *name)
{
    for (int h = 0; name && h < OP_HOOK_COUNT; h++)
        if (strcmp(name, hooks[h].name) == 0)
            return h;
    return -1;
}

/* ---- raw reads of result tables (no allocation, no metamethods) ---- */

/* Pushes t[key] (t at idx, key one of the interned K_*), raw. Returns its
 * type. The chain runner put the keys table at stack index 1. */
static int raw_field(lua_State *L, vm *v, int idx, int key)
{
    (void)v;
    idx = lua_absindex(L, idx);
    lua_rawgeti(L, 1, key);
    return lua_rawget(L, idx);
}

/* The string at the top, or NULL if it is not a string (numbers are not
 * converted: lua_tolstring would change the stack value). */
static const char *top_string(lua_State *L, size_t *len)
{
    return lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
}

/* Reads an optional HTTP status at the top: nil -> dflt. Returns false if
 * present and not an integer from 400 to 599. */
static bool top_status(lua_State *L, lua_Integer dflt, lua_Integer *out)
{
    if (lua_isnil(L, -1)) {
        *out = dflt;
        return true;
    }
    int isint = 0;
    lua_Integer st = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : 0;
    if (!isint || st < 400 || st > 599)
        return false;
    *out = st;
    return true;
}

static const char *read_route(lua_State *L, vm *v, hook_call *c, size_t i, char *buf, size_t n,
                              bool *stop)
{
    op_route_decision *out = c->route;
    int t = lua_type(L, -1);
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TTABLE) {
        snprintf(buf, n, "route() must return nil or a table, got %s", luaL_typename(L, -1));
        return buf;
    }
    int res = lua_gettop(L);
    if (raw_field(L, v, res, K_REJECT) != LUA_TNIL) {
        if (!lua_istable(L, -1))
            return "route(): 'reject' must be a table {status=, message=}";
        int rj = lua_gettop(L);
        lua_Integer status;
        raw_field(L, v, rj, K_STATUS);
        if (!top_status(L, 403, &status))
            return "route(): reject status must be an integer from 400 to 599";
        const char *msg = "rejected by policy";
        if (raw_field(L, v, rj, K_MESSAGE) != LUA_TNIL && !(msg = top_string(L, NULL)))
            return "route(): reject message must be a string";
        out->action = OP_ROUTE_REJECT;
        out->status = (int)status;
        snprintf(out->message, sizeof out->message, "%s", msg);
        snprintf(out->policy, sizeof out->policy, "%s", v->set->names[i]);
        *stop = true;
        return NULL;
    }
    size_t mlen = 0, plen = 0;
    const char *model = NULL, *provider = NULL;
    if (raw_field(L, v, res, K_MODEL) != LUA_TNIL) {
        model = top_string(L, &mlen);
        if (!model || mlen == 0 || mlen >= sizeof out->model)
            return "route(): 'model' must be a non-empty string shorter than 256 bytes";
    }
    if (raw_field(L, v, res, K_PROVIDER) != LUA_TNIL) {
        provider = top_string(L, &plen);
        if (!provider || plen == 0 || plen >= sizeof out->provider)
            return "route(): 'provider' must be a non-empty string shorter than 64 bytes";
    }
    /* Both valid: only now change the decision (a bad return leaves it). */
    if (model)
        memcpy(out->model, model, mlen + 1);
    if (provider)
        memcpy(out->provider, provider, plen + 1);
    return NULL;
}

static const char *const unit_names[] = {"requests", "tokens", "cost"};

const char *op_limit_unit_name(op_limit_unit u)
{
    return (unsigned)u < 3 ? unit_names[u] : "?";
}

/* Reads the rule table at idx into r. */
static const char *read_rule(lua_State *L, vm *v, int idx, op_limit_rule *r, char *buf, size_t n,
                             size_t nth)
{
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) {
        snprintf(buf, n, "limit(): rule %zu must be a table, got %s", nth, luaL_typename(L, idx));
        return buf;
    }
    int top = lua_gettop(L);
    size_t klen = 0;
    const char *key = raw_field(L, v, idx, K_KEY) == LUA_TSTRING ? top_string(L, &klen) : NULL;
    if (!key || klen == 0 || klen >= sizeof r->key || memchr(key, '\0', klen)) {
        snprintf(buf, n, "limit(): rule %zu: 'key' must be a non-empty string shorter than %zu "
                 "bytes", nth, sizeof r->key);
        return buf;
    }
    memcpy(r->key, key, klen + 1);
    r->unit = OP_LIMIT_REQUESTS;
    if (raw_field(L, v, idx, K_UNIT) != LUA_TNIL) {
        const char *u = top_string(L, NULL);
        int found = -1;
        for (int k = 0; u && k < 3; k++)
            if (strcmp(u, unit_names[k]) == 0)
                found = k;
        if (found < 0) {
            snprintf(buf, n, "limit(): rule %zu: 'unit' must be \"requests\", \"tokens\" or "
                     "\"cost\"", nth);
            return buf;
        }
        r->unit = (op_limit_unit)found;
    }
    raw_field(L, v, idx, K_LIMIT);
    double lim = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    if (!(lim > 0) || !isfinite(lim)) {
        snprintf(buf, n, "limit(): rule %zu: 'limit' must be a number > 0", nth);
        return buf;
    }
    r->limit = lim;
    r->window_s = 60;
    if (raw_field(L, v, idx, K_WINDOW) != LUA_TNIL) {
        double w = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
        if (!(w > 0) || !isfinite(w)) {
            snprintf(buf, n, "limit(): rule %zu: 'window' must be a number of seconds > 0", nth);
            return buf;
        }
        r->window_s = w;
    }
    r->sliding = false;
    int st = raw_field(L, v, idx, K_SLIDING);
    if (st != LUA_TNIL && st != LUA_TBOOLEAN) {
        snprintf(buf, n, "limit(): rule %zu: 'sliding' must be a boolean", nth);
        return buf;
    }
    r->sliding = lua_toboolean(L, -1);
    if (raw_field(L, v, idx, K_TECHNIQUE) != LUA_TNIL) {
        const char *tq = top_string(L, NULL);
        if (!tq || (strcmp(tq, "sliding") != 0 && strcmp(tq, "fixed") != 0)) {
            snprintf(buf, n, "limit(): rule %zu: 'technique' must be \"sliding\" or \"fixed\"",
                     nth);
            return buf;
        }
        if (strcmp(tq, "sliding") == 0)
            r->sliding = true;
    }
    lua_settop(L, top);
    return NULL;
}

static const char *read_limit(lua_State *L, vm *v, hook_call *c, size_t i, char *buf, size_t n,
                              bool *stop)
{
    (void)i;
    (void)stop;
    int t = lua_type(L, -1);
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TTABLE) {
        snprintf(buf, n, "limit() must return nil, a rule or a list of rules, got %s",
                 luaL_typename(L, -1));
        return buf;
    }
    int res = lua_gettop(L);
    bool single = raw_field(L, v, res, K_KEY) != LUA_TNIL;
    lua_pop(L, 1);
    lua_Unsigned count = single ? 1 : lua_rawlen(L, res);
    if (!single && count == 0) {
        lua_pushnil(L);
        if (lua_next(L, res)) /* not {}: a rule without its key */
            return "limit(): a rule needs a 'key' (or return a list of rules)";
        return NULL;
    }
    if (c->n_rules + count > OP_POLICY_MAX_LIMIT_RULES) {
        snprintf(buf, n, "limit(): more than %d rules in all", OP_POLICY_MAX_LIMIT_RULES);
        return buf;
    }
    for (lua_Unsigned k = 0; k < count; k++) {
        if (!single)
            lua_rawgeti(L, res, (lua_Integer)k + 1);
        const char *bad = read_rule(L, v, single ? res : -1, &c->rules[c->n_rules + k], buf, n,
                                    (size_t)k + 1);
        if (bad)
            return bad;
        if (!single)
            lua_pop(L, 1);
    }
    c->n_rules += count;
    return NULL;
}

static const char *const action_names[] = {"default", "accept", "retry", "fallback", "fail"};

const char *op_next_action_name(op_next_action a)
{
    return (unsigned)a < 5 ? action_names[a] : "?";
}

static const char *read_next(lua_State *L, vm *v, hook_call *c, size_t i, char *buf, size_t n,
                             bool *stop, const char *hook, bool allow_accept)
{
    op_next_decision *out = c->next;
    int t = lua_type(L, -1);
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TTABLE) {
        snprintf(buf, n, "%s() must return nil or a table {action=...}, got %s", hook,
                 luaL_typename(L, -1));
        return buf;
    }
    int res = lua_gettop(L);
    raw_field(L, v, res, K_ACTION);
    const char *a = top_string(L, NULL);
    int action = -1;
    for (int k = OP_NEXT_ACCEPT; a && k <= OP_NEXT_FAIL; k++)
        if (strcmp(a, action_names[k]) == 0 && (k != OP_NEXT_ACCEPT || allow_accept))
            action = k;
    if (action < 0) {
        snprintf(buf, n, "%s(): 'action' must be %s\"retry\", \"fallback\" or \"fail\"", hook,
                 allow_accept ? "\"accept\", " : "");
        return buf;
    }
    int delay = -1;
    lua_Integer status = 0;
    const char *msg = NULL;
    if (action == OP_NEXT_RETRY && raw_field(L, v, res, K_DELAY_MS) != LUA_TNIL) {
        double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
        if (!(d >= 0 && d <= OP_POLICY_MAX_DELAY_MS)) {
            snprintf(buf, n, "%s(): 'delay_ms' must be a number from 0 to %d", hook,
                     OP_POLICY_MAX_DELAY_MS);
            return buf;
        }
        delay = (int)d;
    }
    if (action == OP_NEXT_FAIL) {
        raw_field(L, v, res, K_STATUS);
        if (!top_status(L, 502, &status)) {
            snprintf(buf, n, "%s(): fail status must be an integer from 400 to 599", hook);
            return buf;
        }
        if (raw_field(L, v, res, K_MESSAGE) != LUA_TNIL && !(msg = top_string(L, NULL))) {
            snprintf(buf, n, "%s(): fail message must be a string", hook);
            return buf;
        }
    }
    out->action = (op_next_action)action;
    out->delay_ms = delay;
    out->status = (int)status;
    if (action == OP_NEXT_FAIL)
        snprintf(out->message, sizeof out->message, "%s", msg ? msg : "request failed by policy");
    snprintf(out->policy, sizeof out->policy, "%s", v->set->names[i]);
    *stop = true;
    return NULL;
}

static const char *read_on_error(lua_State *L, vm *v, hook_call *c, size_t i, char *buf,
                                 size_t n, bool *stop)
{
    return read_next(L, v, c, i, buf, n, stop, "on_error", false);
}

static const char *read_on_response(lua_State *L, vm *v, hook_call *c, size_t i, char *buf,
                                    size_t n, bool *stop)
{
    return read_next(L, v, c, i, buf, n, stop, "on_response", true);
}

/* ======================================================================== */
/* Per-thread states                                                        */
/* ======================================================================== */

static void vm_free(vm *v)
{
    if (!v)
        return;
    if (v->L)
        lua_close(v->L);
    small_free_all(v);
    for (int f = 0; f < RF_COUNT; f++)
        free(v->shadow[f].s);
    op_policy_set_unref(v->set);
    free(v->env_refs);
    free(v->fn_refs);
    free(v->m_inv);
    free(v);
}

/* Runs file v->cur in its own environment and records its hook functions.
 * Called through lua_pcall, so memory and budget failures are caught. */
static int load_policy_file(lua_State *L)
{
    vm *v = vm_of(L);
    op_policy_set *set = v->set;
    size_t i = v->cur;
    char chunk[4200];
    snprintf(chunk, sizeof chunk, "@%s", v->use_paths ? set->paths[i] : set->names[i]);
    if (luaL_loadbufferx(L, set->sources[i], set->lens[i], chunk, "t") != LUA_OK)
        return lua_error(L);
    push_env(L);
    lua_pushvalue(L, -1);
    v->env_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->env_refs[i]);
    for (int h = 0; h < OP_HOOK_COUNT; h++) {
        lua_pushstring(L, hooks[h].name);
        if (lua_rawget(L, -2) == LUA_TFUNCTION)
            v->fn_refs[(size_t)h * set->n + i] = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    return 0;
}

/* Builds a state for set: opens libraries, runs every file in its own
 * environment. On failure returns NULL and writes "FILE:LINE: message". */
static vm *vm_new(op_policy_set *set, bool use_paths, char *err, size_t errlen)
{
    pthread_once(&g_metrics_once, metrics_init);
    vm *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    op_policy_set_ref(set);
    v->set = set;
    v->cap = set->memory_bytes;
    v->budget = set->instructions;
    v->use_paths = use_paths;
    size_t n = set->n ? set->n : 1;
    v->env_refs = calloc(n, sizeof *v->env_refs);
    v->fn_refs = calloc(n * OP_HOOK_COUNT, sizeof *v->fn_refs);
    v->m_inv = calloc(n * OP_HOOK_COUNT, sizeof *v->m_inv);
    v->L = v->env_refs && v->fn_refs && v->m_inv ? lua_newstate(vm_alloc, v) : NULL;
    if (!v->L) {
        snprintf(err, errlen, "cannot create a Lua state within policy.memory_bytes (%zu)",
                 set->memory_bytes);
        vm_free(v);
        return NULL;
    }
    for (size_t k = 0; k < n * OP_HOOK_COUNT; k++)
        v->fn_refs[k] = LUA_NOREF;
    *(vm **)lua_getextraspace(v->L) = v;
    lua_State *L = v->L;
    lua_pushcfunction(L, setup_state);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up the Lua state: %s", lua_tostring(L, -1));
        vm_free(v);
        return NULL;
    }
    for (size_t i = 0; i < set->n; i++) {
        v->cur = i;
        begin_call(v);
        lua_pushcfunction(L, load_policy_file);
        int rc = lua_pcall(L, 0, 0, 0);
        if (rc != LUA_OK) {
            const char *msg = lua_tostring(L, -1);
            if (v->budget_failed)
                snprintf(err, errlen, "%s:0: top-level code exceeded the instruction budget (%llu)",
                         set->paths[i], (unsigned long long)set->instructions);
            else if (v->mem_failed || rc == LUA_ERRMEM)
                snprintf(err, errlen, "%s:0: top-level code exceeded the memory limit (%zu bytes)",
                         set->paths[i], set->memory_bytes);
            else if (msg && use_paths)
                snprintf(err, errlen, "%s", msg);
            else
                snprintf(err, errlen, "%s:0: %s", set->paths[i], msg ? msg : "error");
            vm_free(v);
            return NULL;
        }
        for (int h = 0; h < OP_HOOK_COUNT; h++)
            if (v->fn_refs[(size_t)h * set->n + i] != LUA_NOREF)
                v->m_inv[(size_t)h * set->n + i] =
                    op_metric_with(g_m_invocations, set->names[i], hooks[h].name);
    }
    for (int h = 0; h < OP_HOOK_COUNT; h++)
        v->m_dur[h] = op_metric_with(g_m_duration, hooks[h].name);
    lua_sethook(L, NULL, 0, 0);
    /* Generational: nearly everything a hook call makes (req tables, decoded
     * metadata, result tables) dies young, and the policy's own data is old. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    return v;
}

/* Worker threads we do not own (libmicrohttpd's) cannot call
 * op_policy_thread_cleanup at exit, so a thread-specific key's destructor
 * frees the state when the thread ends. */
static pthread_key_t g_vm_key;
static pthread_once_t g_vm_key_once = PTHREAD_ONCE_INIT;

static void vm_key_destructor(void *p)
{
    if (t_vm == p)
        t_vm = NULL;
    vm_free(p);
}

static void vm_key_init(void) { pthread_key_create(&g_vm_key, vm_key_destructor); }

/* This thread's state for set, built or rebuilt as needed. */
static vm *vm_for_thread(op_policy_set *set, char *err, size_t errlen)
{
    if (t_vm && t_vm->set == set)
        return t_vm;
    pthread_once(&g_vm_key_once, vm_key_init);
    vm_free(t_vm);
    t_vm = vm_new(set, false, err, errlen);
    pthread_setspecific(g_vm_key, t_vm);
    return t_vm;
}

void op_policy_thread_cleanup(void)
{
    vm_free(t_vm);
    t_vm = NULL;
    pthread_once(&g_vm_key_once, vm_key_init);
    pthread_setspecific(g_vm_key, NULL);
}

/* ======================================================================== */
/* Loading                                                                  */
/* ======================================================================== */

int op_policy_set_load(const op_config_policy *cfg, op_policy_set **out, char *err, size_t errlen)
{
    *out = NULL;
    op_policy_set *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&s->refs, 1);
    size_t n = cfg->n_files;
    s->paths = calloc(n ? n : 1, sizeof *s->paths);
    s->names = calloc(n ? n : 1, sizeof *s->names);
    s->sources = calloc(n ? n : 1, sizeof *s->sources);
    s->lens = calloc(n ? n : 1, sizeof *s->lens);
    s->lib_dir = strdup(cfg->lib_dir ? cfg->lib_dir : OUTPOST_LUA_DIR);
    s->memory_bytes = cfg->memory_bytes ? cfg->memory_bytes : 8u << 20;
    s->instructions = cfg->instructions ? cfg->instructions : 1000000;
    if (!s->paths || !s->names || !s->sources || !s->lens || !s->lib_dir) {
        set_free(s);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *path = cfg->files[i];
        const char *slash = strrchr(path, '/');
        s->paths[i] = strdup(path);
        s->names[i] = strdup(slash ? slash + 1 : path);
        s->n = i + 1;
        if (!s->paths[i] || !s->names[i]) {
            set_free(s);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        int rc = pl_file_read_all(path, OP_POLICY_MAX_FILE_BYTES, &s->sources[i], &s->lens[i]);
        if (rc != 0) {
            snprintf(err, errlen, "%s:0: cannot read policy: %s", path,
                     rc == -EFBIG ? "larger than 1 MiB" : strerror(-rc));
            set_free(s);
            return -1;
        }
    }
    /* Compile and run every file once now, so a broken policy is refused at
     * load, not on the first request; note which hooks the files define. */
    vm *check = vm_new(s, true, err, errlen);
    if (!check) {
        set_free(s);
        return -1;
    }
    for (int h = 0; h < OP_HOOK_COUNT; h++)
        for (size_t i = 0; i < s->n; i++)
            if (check->fn_refs[(size_t)h * s->n + i] != LUA_NOREF)
                s->has_hook[h] = true;
    vm_free(check);
    *out = s;
    return 0;
}

/* ======================================================================== */
/* The chain runner                                                         */
/* ======================================================================== */

static op_policy_status fail(vm *v, op_policy_hook h, size_t i, op_policy_status st,
                             const char *msg, hook_call *c)
{
    const char *name = v->set->names[i];
    const char *reason = st == OP_POLICY_BUDGET ? "budget" : st == OP_POLICY_MEMORY ? "memory"
                                                                                     : "error";
    if (st == OP_POLICY_BUDGET)
        snprintf(c->message, c->message_len, "policy '%s' exceeded its instruction budget (%llu)",
                 name, (unsigned long long)v->set->instructions);
    else if (st == OP_POLICY_MEMORY)
        snprintf(c->message, c->message_len, "policy '%s' exceeded its memory limit (%zu bytes)",
                 name, v->set->memory_bytes);
    else
        snprintf(c->message, c->message_len, "policy '%s' failed: %s", name, msg ? msg : "error");
    snprintf(c->policy, c->policy_len, "%s", name);
    op_counter_inc(op_metric_with(g_m_failures, name, hooks[h].name, reason));
    PL_LOG_WARN("policy.failed", "policy", name, "hook", hooks[h].name, "reason", reason,
                "message", c->message);
    return st;
}

/* Runs hook h of every policy of set in file order, until one stops the
 * chain or fails. The caller has initialised its decision in c. */
static op_policy_status run_chain(op_policy_set *set, op_policy_hook h, hook_call *c)
{
    char err[400];
    vm *v = vm_for_thread(set, err, sizeof err);
    if (!v) {
        snprintf(c->message, c->message_len, "policy state unavailable: %.400s", err);
        snprintf(c->policy, c->policy_len, "%s", set->names[0]);
        return OP_POLICY_MEMORY;
    }
    const hook_def *def = &hooks[h];
    uint64_t t0 = pl_time_mono_ns();
    lua_State *L = v->L;
    lua_settop(L, 0);
    v->req = c->req;
    v->res = c->res;
    v->model = c->model;
    v->provider = c->provider;
    drop_tables(v, true);
    op_policy_status st = OP_POLICY_OK;
    const int *refs = &v->fn_refs[(size_t)h * set->n];
    for (size_t i = 0; i < set->n; i++) {
        if (refs[i] == LUA_NOREF)
            continue;
        v->cur = i;
        op_counter_inc(v->m_inv[(size_t)h * set->n + i]);
        /* The host's pushes run unprotected: they must not be refused at
         * the cap (a refusal would raise outside any pcall). They are a few
         * small objects; what the policy allocates is capped as ever. */
        v->host_alloc = true;
        sync_fields(v); /* every policy: route may have rewritten model/provider */
        lua_rawgeti(L, LUA_REGISTRYINDEX, v->keys_ref); /* for raw_field, at index 1 */
        lua_rawgeti(L, LUA_REGISTRYINDEX, refs[i]);
        lua_rawgeti(L, LUA_REGISTRYINDEX, v->req_ref);
        if (def->with_result)
            push_call_table(v, v->res_meta_ref, v->cur_res_ref);
        v->host_alloc = false;
        begin_call(v);
        int rc = lua_pcall(L, def->with_result ? 2 : 1, 1, 0);
        if (rc != LUA_OK) {
            st = v->budget_failed                        ? OP_POLICY_BUDGET
                 : (v->mem_failed || rc == LUA_ERRMEM)   ? OP_POLICY_MEMORY
                                                         : OP_POLICY_ERROR;
            fail(v, h, i, st, lua_tostring(L, -1), c);
            lua_settop(L, 0);
            break;
        }
        char buf[200];
        bool stop = false;
        const char *bad = lua_checkstack(L, 12) ? def->read(L, v, c, i, buf, sizeof buf, &stop)
                                                : "no stack space to read the result";
        lua_settop(L, 0);
        if (bad) {
            st = fail(v, h, i, OP_POLICY_ERROR, bad, c);
            break;
        }
        if (stop)
            break;
    }
    lua_sethook(L, NULL, 0, 0);
    v->req = NULL;
    v->res = NULL;
    if (st != OP_POLICY_MEMORY) {
        /* Let the call's tables go (F and the slots would keep them alive);
         * setting existing keys allocates nothing. */
        lua_settop(L, 0);
        v->host_alloc = true;
        renew_req_if_written(v);
        v->host_alloc = false;
        if (c->req->request_id == 0)
            drop_tables(v, false); /* no later hook can tell it is the same request */
        if (def->with_result) {
            lua_pushboolean(L, 0);
            lua_rawseti(L, LUA_REGISTRYINDEX, v->cur_res_ref);
        }
    }
    op_histogram_observe(v->m_dur[h], (double)(pl_time_mono_ns() - t0) / 1e9);
    if (st == OP_POLICY_MEMORY) {
        /* A state that ran out of memory may hold half-built data: rebuild. */
        op_policy_thread_cleanup();
    } else if (v->used > v->cap / 2) {
        lua_gc(L, LUA_GCCOLLECT);
    }
    return st;
}

/* ======================================================================== */
/* The hooks                                                                */
/* ======================================================================== */

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t len = src ? strnlen(src, cap - 1) : 0;
    memcpy(dst, src ? src : "", len);
    dst[len] = '\0';
}

static void route_init(op_route_decision *out, const op_route_request *req)
{
    out->action = OP_ROUTE_CONTINUE;
    out->status = 0;
    out->message[0] = out->policy[0] = '\0';
    copy_str(out->model, sizeof out->model, req->model);
    copy_str(out->provider, sizeof out->provider, req->provider);
}

op_policy_status op_policy_route(op_policy_set *set, const op_route_request *req,
                                 op_route_decision *out)
{
    route_init(out, req);
    if (!set || !set->has_hook[OP_HOOK_ROUTE])
        return OP_POLICY_OK;
    hook_call c = {.req = req,
                   .model = out->model,
                   .provider = out->provider,
                   .route = out,
                   .message = out->message,
                   .message_len = sizeof out->message,
                   .policy = out->policy,
                   .policy_len = sizeof out->policy};
    op_policy_status st = run_chain(set, OP_HOOK_ROUTE, &c);
    if (st != OP_POLICY_OK)
        out->action = OP_ROUTE_CONTINUE;
    return st;
}

op_policy_status op_policy_limit(op_policy_set *set, const op_route_request *req,
                                 op_limit_rule *rules, size_t *n_rules, op_route_decision *fail_out)
{
    route_init(fail_out, req);
    *n_rules = 0;
    if (!set || !set->has_hook[OP_HOOK_LIMIT])
        return OP_POLICY_OK;
    hook_call c = {.req = req,
                   .model = req->model,
                   .provider = req->provider,
                   .route = fail_out,
                   .rules = rules,
                   .message = fail_out->message,
                   .message_len = sizeof fail_out->message,
                   .policy = fail_out->policy,
                   .policy_len = sizeof fail_out->policy};
    op_policy_status st = run_chain(set, OP_HOOK_LIMIT, &c);
    *n_rules = st == OP_POLICY_OK ? c.n_rules : 0;
    return st;
}

static op_policy_status run_next(op_policy_set *set, op_policy_hook h, const op_route_request *req,
                                 const op_attempt_result *res, op_next_decision *out)
{
    static const op_attempt_result none;
    out->action = OP_NEXT_DEFAULT;
    out->delay_ms = -1;
    out->status = 0;
    out->message[0] = out->policy[0] = '\0';
    if (!set || !set->has_hook[h])
        return OP_POLICY_OK;
    hook_call c = {.req = req,
                   .res = res ? res : &none,
                   .model = req->model,
                   .provider = req->provider,
                   .next = out,
                   .message = out->message,
                   .message_len = sizeof out->message,
                   .policy = out->policy,
                   .policy_len = sizeof out->policy};
    op_policy_status st = run_chain(set, h, &c);
    if (st != OP_POLICY_OK) {
        out->action = OP_NEXT_DEFAULT;
        out->delay_ms = -1;
        out->status = 0;
    }
    return st;
}

op_policy_status op_policy_on_error(op_policy_set *set, const op_route_request *req,
                                    const op_attempt_result *res, op_next_decision *out)
{
    return run_next(set, OP_HOOK_ON_ERROR, req, res, out);
}

op_policy_status op_policy_on_response(op_policy_set *set, const op_route_request *req,
                                       const op_attempt_result *res, op_next_decision *out)
{
    return run_next(set, OP_HOOK_ON_RESPONSE, req, res, out);
}

/* ======================================================================== */
/* The offline tester                                                       */
/* ======================================================================== */

static long long estimate_tokens_json(json_t *body)
{
    size_t bytes = 0;
    json_t *p = json_object_get(body, "prompt");
    if (json_is_string(p))
        bytes += json_string_length(p);
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(body, "messages"), i, m)
    {
        json_t *c = json_object_get(m, "content");
        if (json_is_string(c))
            bytes += json_string_length(c);
    }
    return (long long)((bytes + 3) / 4);
}

#define CLI "outpostctl policy test"

/* Optional string member: absent/null -> dflt; another type is an input error. */
static bool cli_str(json_t *o, const char *k, const char *dflt, const char **out, const char *file,
                    FILE *err)
{
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j)) {
        *out = dflt;
        return true;
    }
    if (!json_is_string(j)) {
        fprintf(err, CLI ": %s: '%s' must be a string\n", file, k);
        return false;
    }
    *out = json_string_value(j);
    return true;
}

static bool cli_int(json_t *o, const char *k, long long dflt, long long lo, long long hi,
                    long long *out, const char *file, FILE *err)
{
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j)) {
        *out = dflt;
        return true;
    }
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi) {
        fprintf(err, CLI ": %s: '%s' must be an integer from %lld to %lld\n", file, k, lo, hi);
        return false;
    }
    *out = (long long)json_integer_value(j);
    return true;
}

/* Reads a JSON file; prints the reason and returns NULL on failure. */
static json_t *cli_load_json(const char *path, FILE *err)
{
    char *text;
    size_t len;
    int rc = pl_file_read_all(path, 16u << 20, &text, &len);
    if (rc != 0) {
        fprintf(err, CLI ": %s: %s\n", path, strerror(-rc));
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    free(text);
    if (!j)
        fprintf(err, CLI ": %s: line %d: %s\n", path, je.line, je.text);
    return j;
}

/* Everything the request and result files own, freed by cli_input_free. */
typedef struct cli_input {
    json_t *rq;
    char *body_text, *metadata_text;
    op_policy_header hdrs[64];
    op_route_request r;
} cli_input;

static void cli_input_free(cli_input *in)
{
    free(in->body_text);
    free(in->metadata_text);
    json_decref(in->rq);
}

/* Builds in->r from the request file. Returns false (reason printed) on an
 * input error. */
static bool cli_read_request(const char *path, bool need_model, cli_input *in, FILE *err)
{
    if (!(in->rq = cli_load_json(path, err)))
        return false;
    json_t *rq = in->rq;
    if (!json_is_object(rq)) {
        fprintf(err, CLI ": %s: the request must be a JSON object\n", path);
        return false;
    }
    json_t *model = json_object_get(rq, "model");
    if (need_model && !json_is_string(model)) {
        fprintf(err, CLI ": %s: the request must be an object with a string 'model'\n", path);
        return false;
    }
    op_route_request *r = &in->r;
    long long est, maxt, step, attempt;
    json_t *body = json_object_get(rq, "body");
    json_t *mt = json_object_get(body, "max_tokens");
    if (!cli_str(rq, "model", NULL, &r->model, path, err) ||
        !cli_str(rq, "account", "local", &r->account, path, err) ||
        !cli_str(rq, "task", NULL, &r->task, path, err) ||
        !cli_str(rq, "method", "POST", &r->method, path, err) ||
        !cli_str(rq, "path", "/ai/run", &r->path, path, err) ||
        !cli_str(rq, "gateway", NULL, &r->gateway, path, err) ||
        !cli_str(rq, "provider", NULL, &r->provider, path, err) ||
        !cli_str(rq, "endpoint", NULL, &r->endpoint, path, err) ||
        !cli_str(rq, "token_name", NULL, &r->token_name, path, err) ||
        !cli_int(rq, "tokens_estimate", estimate_tokens_json(body), -1, LLONG_MAX, &est, path,
                 err) ||
        !cli_int(rq, "max_tokens", json_is_integer(mt) ? json_integer_value(mt) : -1, -1,
                 LLONG_MAX, &maxt, path, err) ||
        !cli_int(rq, "step", 0, 0, 1000, &step, path, err) ||
        !cli_int(rq, "attempt", 1, 0, 1000, &attempt, path, err))
        return false;
    r->tokens_estimate = est;
    r->max_tokens = maxt;
    r->step = (int)step;
    r->attempt = (int)attempt;
    if (body && !json_is_object(body)) {
        fprintf(err, CLI ": %s: 'body' must be an object\n", path);
        return false;
    }
    in->body_text = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
    json_t *md = json_object_get(rq, "metadata");
    if (json_is_object(md)) {
        in->metadata_text = json_dumps(md, JSON_COMPACT);
    } else if (json_is_string(md)) {
        in->metadata_text = strdup(json_string_value(md));
    } else if (md && !json_is_null(md)) {
        fprintf(err, CLI ": %s: 'metadata' must be an object (or its JSON text)\n", path);
        return false;
    }
    if (!in->body_text || (md && !json_is_null(md) && !in->metadata_text)) {
        fprintf(err, CLI ": out of memory\n");
        return false;
    }
    r->body_json = in->body_text;
    r->body_len = strlen(in->body_text);
    r->metadata_json = in->metadata_text;
    size_t nh = 0;
    const char *hk;
    json_t *hv;
    json_object_foreach(json_object_get(rq, "headers"), hk, hv)
    {
        if (json_is_string(hv) && nh < 64) {
            in->hdrs[nh].name = hk;
            in->hdrs[nh].value = json_string_value(hv);
            nh++;
        }
    }
    r->headers = in->hdrs;
    r->n_headers = nh;
    return true;
}

/* One result object into res (strings borrowed from o; a JSON body that is
 * not a string is encoded into *body_text). attempt/step override req's. */
static bool cli_read_result(json_t *o, const char *path, bool is_error, op_attempt_result *res,
                            op_route_request *r, char **body_text, FILE *err)
{
    memset(res, 0, sizeof *res);
    if (!json_is_object(o)) {
        fprintf(err, CLI ": %s: a result must be a JSON object\n", path);
        return false;
    }
    long long status, max_attempts, retry_after, attempt, step;
    const char *ct;
    if (!cli_int(o, "status", is_error ? 0 : 200, 0, 999, &status, path, err) ||
        !cli_str(o, "kind", NULL, &res->error_kind, path, err) ||
        !cli_str(o, "message", NULL, &res->message, path, err) ||
        !cli_int(o, "max_attempts", 1, 0, 1000, &max_attempts, path, err) ||
        !cli_int(o, "retry_after_ms", 0, 0, LLONG_MAX, &retry_after, path, err) ||
        !cli_int(o, "attempt", r->attempt, 0, 1000, &attempt, path, err) ||
        !cli_int(o, "step", r->step, 0, 1000, &step, path, err))
        return false;
    json_t *d = json_object_get(o, "duration_ms");
    if (d && !json_is_number(d)) {
        fprintf(err, CLI ": %s: 'duration_ms' must be a number\n", path);
        return false;
    }
    res->duration_ms = d ? json_number_value(d) : 0;
    res->status = (int)status;
    res->max_attempts = (int)max_attempts;
    res->retry_after_ms = retry_after;
    r->attempt = (int)attempt;
    r->step = (int)step;
    if (is_error && !res->error_kind)
        res->error_kind = status >= 400 ? "http" : "network";
    json_t *body = json_object_get(o, "body");
    const char *dflt_ct = NULL;
    if (json_is_string(body)) {
        res->body = json_string_value(body);
        res->body_len = json_string_length(body);
    } else if (body && !json_is_null(body)) {
        if (!(*body_text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY))) {
            fprintf(err, CLI ": out of memory\n");
            return false;
        }
        res->body = *body_text;
        res->body_len = strlen(*body_text);
        dflt_ct = "application/json";
    }
    if (!cli_str(o, "content_type", dflt_ct, &ct, path, err))
        return false;
    res->content_type = ct;
    return true;
}

static const char *status_reason(op_policy_status st)
{
    return st == OP_POLICY_BUDGET ? "budget" : st == OP_POLICY_MEMORY ? "memory" : "error";
}

/* Prints one decision line; returns 0, or 1 after printing a failure. */
static int cli_print(FILE *out, FILE *err, op_policy_status st, const char *fail_msg, json_t *o)
{
    if (st != OP_POLICY_OK) {
        fprintf(err, "policy failed (%s): %s\n", status_reason(st), fail_msg);
        json_decref(o);
        return 1;
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    fprintf(out, "%s\n", s ? s : "{}");
    free(s);
    json_decref(o);
    return 0;
}

static json_t *route_json(const op_route_decision *d)
{
    if (d->action == OP_ROUTE_REJECT)
        return json_pack("{s:s, s:i, s:s, s:s}", "action", "reject", "status", d->status,
                         "message", d->message, "policy", d->policy);
    json_t *o = json_pack("{s:s, s:s}", "action", "continue", "model", d->model);
    if (o && d->provider[0])
        json_object_set_new(o, "provider", json_string(d->provider));
    return o;
}

/* Whole numbers print as integers (100000, not 100000.0). */
static json_t *json_num(double d)
{
    if (d == floor(d) && fabs(d) < 9e15)
        return json_integer((json_int_t)d);
    return json_real(d);
}

static json_t *limit_json(const op_limit_rule *rules, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_pack("{s:s, s:s, s:o, s:o, s:b}", "key", rules[i].key,
                                           "unit", op_limit_unit_name(rules[i].unit), "limit",
                                           json_num(rules[i].limit), "window",
                                           json_num(rules[i].window_s), "sliding",
                                           rules[i].sliding));
    return json_pack("{s:o}", "rules", a);
}

static json_t *next_json(const op_next_decision *d)
{
    json_t *o = json_pack("{s:s}", "action", op_next_action_name(d->action));
    if (!o)
        return NULL;
    if (d->action == OP_NEXT_RETRY)
        json_object_set_new(o, "delay_ms", json_integer(d->delay_ms));
    if (d->action == OP_NEXT_FAIL) {
        json_object_set_new(o, "status", json_integer(d->status));
        json_object_set_new(o, "message", json_string(d->message));
    }
    if (d->policy[0])
        json_object_set_new(o, "policy", json_string(d->policy));
    return o;
}

int op_policy_cli(int argc, char **argv, FILE *out, FILE *err)
{
    const char *positional[64];
    int npos = 0;
    const char *hook_name = "route", *result_path = NULL;
    op_config_policy pc;
    memset(&pc, 0, sizeof pc);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--lib") == 0 || strcmp(a, "--memory") == 0 ||
            strcmp(a, "--instructions") == 0 || strcmp(a, "--hook") == 0 ||
            strcmp(a, "--result") == 0) {
            if (i + 1 >= argc) {
                fprintf(err, CLI ": %s needs a value\n", a);
                return 2;
            }
            const char *val = argv[++i];
            char *end;
            if (strcmp(a, "--lib") == 0) {
                pc.lib_dir = (char *)val;
            } else if (strcmp(a, "--hook") == 0) {
                hook_name = val;
            } else if (strcmp(a, "--result") == 0) {
                result_path = val;
            } else {
                errno = 0;
                unsigned long long n = strtoull(val, &end, 10);
                if (*end || n == 0 || errno || val[0] == '-') {
                    fprintf(err, CLI ": %s must be a positive integer\n", a);
                    return 2;
                }
                if (strcmp(a, "--memory") == 0)
                    pc.memory_bytes = (size_t)n;
                else
                    pc.instructions = n;
            }
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(err, CLI ": unknown option %s\n", a);
            return 2;
        } else if (npos < 64) {
            positional[npos++] = a;
        } else {
            fprintf(err, CLI ": too many files (64 at most)\n");
            return 2;
        }
    }
    if (npos < 2) {
        fprintf(err, "usage: " CLI " POLICY.lua [MORE.lua ...] REQUEST.json "
                     "[--hook route|limit|on_error|on_response] [--result RESULT.json] "
                     "[--lib DIR] [--memory BYTES] [--instructions N]\n");
        return 2;
    }
    int hook = op_policy_hook_parse(hook_name);
    if (hook < 0) {
        fprintf(err, CLI ": unknown hook '%s' (route, limit, on_error, on_response)\n",
                hook_name);
        return 2;
    }
    bool with_result = hook == OP_HOOK_ON_ERROR || hook == OP_HOOK_ON_RESPONSE;
    if (with_result != (result_path != NULL)) {
        fprintf(err, with_result ? CLI ": --hook %s needs --result RESULT.json\n"
                                 : CLI ": --result is only for on_error and on_response (not %s)\n",
                hook_name);
        return 2;
    }
    cli_input in;
    memset(&in, 0, sizeof in);
    json_t *results = NULL;
    int code = 2;
    if (!cli_read_request(positional[npos - 1], hook == OP_HOOK_ROUTE, &in, err))
        goto done;
    if (result_path) {
        if (!(results = cli_load_json(result_path, err)))
            goto done;
        if (json_is_object(results)) {
            json_t *one = json_array();
            json_array_append_new(one, results);
            results = one;
        }
        if (!json_is_array(results) || json_array_size(results) == 0) {
            fprintf(err, CLI ": %s: a result object or a non-empty array of them\n", result_path);
            goto done;
        }
    }
    pc.files = (char **)positional;
    pc.n_files = (size_t)(npos - 1);
    op_policy_set *set = NULL;
    char lerr[1024];
    if (op_policy_set_load(&pc, &set, lerr, sizeof lerr) != 0) {
        fprintf(err, "policy load failed: %s\n", lerr);
        code = 1;
        goto done;
    }
    code = 0;
    uint64_t t0 = pl_time_mono_ns();
    if (hook == OP_HOOK_ROUTE) {
        op_route_decision d;
        op_policy_status st = op_policy_route(set, &in.r, &d);
        code = cli_print(out, err, st, d.message, route_json(&d));
    } else if (hook == OP_HOOK_LIMIT) {
        op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
        size_t n = 0;
        op_route_decision d;
        op_policy_status st = op_policy_limit(set, &in.r, rules, &n, &d);
        code = cli_print(out, err, st, d.message, limit_json(rules, n));
    } else {
        size_t i;
        json_t *o;
        int attempt = in.r.attempt, step = in.r.step; /* each result may override them */
        json_array_foreach(results, i, o)
        {
            in.r.attempt = attempt;
            in.r.step = step;
            op_attempt_result res;
            char *body_text = NULL;
            if (!cli_read_result(o, result_path, hook == OP_HOOK_ON_ERROR, &res, &in.r,
                                 &body_text, err)) {
                code = 2;
                break;
            }
            op_next_decision d;
            op_policy_status st = hook == OP_HOOK_ON_ERROR
                                      ? op_policy_on_error(set, &in.r, &res, &d)
                                      : op_policy_on_response(set, &in.r, &res, &d);
            free(body_text);
            code = cli_print(out, err, st, d.message, next_json(&d));
            if (code != 0)
                break;
        }
    }
    fprintf(err, "time_us=%.1f (%s, first call on a fresh state)\n",
            (double)(pl_time_mono_ns() - t0) / 1e3, hook_name);
    op_policy_thread_cleanup();
    op_policy_set_unref(set);
done:
    json_decref(results);
    cli_input_free(&in);
    return code;
}
