/*
 * op_policy: the Lua 5.4 policy host (see op_policy.h for the contract).
 *
 * Sections: the set (files, refcount) · the sandboxed state (allocator,
 * count hook, environment, require, outpost table) · JSON <-> Lua · hooks
 * and the route chain.
 */
#include "policy/op_policy.h"

#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
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

/* Field names of req, interned once per state (lua_setfield with a C
 * string costs a lookup in Lua's string cache on every call). */
enum { K_MODEL = 1, K_TASK, K_ACCOUNT, K_METHOD, K_PATH, K_TOKENS, K_COUNT };
static const char *const req_keys[K_COUNT] = {NULL, "model", "task", "account", "method", "path",
                                              "tokens_estimate"};


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
};

static const char *const hook_names[OP_HOOK_COUNT] = {"route"};

const char *op_policy_hook_name(op_policy_hook h)
{
    return (unsigned)h < OP_HOOK_COUNT ? hook_names[h] : "?";
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

typedef struct vm {
    lua_State *L;
    op_policy_set *set;     /* one reference */
    size_t used, cap;       /* heap bytes in use, cap */
    bool mem_failed;        /* an allocation was refused during this call */
    uint64_t budget, spent; /* instructions allowed / used in this call */
    bool budget_failed;
    uint64_t call_id;       /* guards lazy req fields against use after the call */
    const op_route_request *req;
    size_t cur;             /* index of the policy running, for logs */
    int *env_refs;          /* registry refs: one environment per policy */
    int *route_refs;        /* registry refs of route functions, LUA_NOREF if none */
    op_metric_child **m_inv;/* invocations child per policy */
    op_metric_child *m_dur; /* route duration child */
    int req_meta_ref;       /* registry ref of the shared req metatable */
    int keys_ref;           /* registry ref of the interned req field names */
    bool use_paths;         /* chunk names: full paths (load check) or basenames */
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

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    vm *v = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        v->used -= old;
        return NULL;
    }
    if (nsize > old && v->used - old + nsize > v->cap) {
        if (!v->mem_failed && v->L) {
            v->mem_failed = true;
            lua_sethook(v->L, count_hook, LUA_MASKCOUNT, 1);
        }
        return NULL;
    }
    void *p = realloc(ptr, nsize);
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

/* Calls upvalue 1 with this call's arguments; returns its results. */
static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
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

/* ---- JSON <-> Lua ----
 * jansson's memory is outside the Lua cap, so no Lua error may escape while
 * a json_t is held: conversions to Lua run under lua_pcall, and conversions
 * from Lua report errors in a buffer instead of raising. */

static void push_json(lua_State *L, json_t *j, int depth)
{
    luaL_checkstack(L, 4, "JSON too deep");
    if (depth > JSON_MAX_DEPTH)
        luaL_error(L, "JSON nested deeper than %d", JSON_MAX_DEPTH);
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        lua_createtable(L, 0, (int)json_object_size(j));
        const char *k;
        json_t *val;
        json_object_foreach(j, k, val)
        {
            push_json(L, val, depth + 1);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        lua_createtable(L, (int)json_array_size(j), 0);
        size_t i;
        json_t *val;
        json_array_foreach(j, i, val)
        {
            push_json(L, val, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(j)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(j)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushlightuserdata(L, NULL); break; /* outpost.null */
    }
}

static int push_json_unprotected(lua_State *L)
{
    push_json(L, lua_touserdata(L, 1), 0);
    return 1;
}

/* Pushes j converted to Lua and releases j, even when Lua raises (then the
 * error is re-raised). */
static void push_json_and_free(lua_State *L, json_t *j)
{
    lua_pushcfunction(L, push_json_unprotected);
    lua_pushlightuserdata(L, j);
    int rc = lua_pcall(L, 1, 1, 0);
    json_decref(j);
    if (rc != LUA_OK)
        lua_error(L);
}

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
    json_error_t e;
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY, &e);
    if (!j) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON: %s (line %d, column %d)", e.text, e.line, e.column);
        return 2;
    }
    push_json_and_free(L, j);
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
static int req_index(lua_State *L);

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

/* Opens the allowed libraries and records templates in the registry:
 * "outpost.globals" holds everything a sandbox may copy. */
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
        {"json_encode", l_json_encode}, {NULL, NULL}};
    luaL_newlib(L, outpost_fns);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_setglobal(L, "outpost");

    lua_pushglobaltable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "outpost.globals");
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "outpost.loaded");
    return 0;
}

static void vm_free(vm *v)
{
    if (!v)
        return;
    if (v->L)
        lua_close(v->L);
    op_policy_set_unref(v->set);
    free(v->env_refs);
    free(v->route_refs);
    free(v->m_inv);
    free(v);
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
    v->route_refs = calloc(n, sizeof *v->route_refs);
    v->m_inv = calloc(n, sizeof *v->m_inv);
    v->L = v->env_refs && v->route_refs && v->m_inv ? lua_newstate(vm_alloc, v) : NULL;
    if (!v->L) {
        snprintf(err, errlen, "cannot create a Lua state within policy.memory_bytes (%zu)",
                 set->memory_bytes);
        vm_free(v);
        return NULL;
    }
    *(vm **)lua_getextraspace(v->L) = v;
    lua_pushcfunction(v->L, setup_state);
    if (lua_pcall(v->L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up the Lua state: %s", lua_tostring(v->L, -1));
        vm_free(v);
        return NULL;
    }
    for (size_t i = 0; i < set->n; i++) {
        lua_State *L = v->L;
        v->cur = i;
        char chunk[4200];
        snprintf(chunk, sizeof chunk, "@%s", use_paths ? set->paths[i] : set->names[i]);
        begin_call(v);
        int rc = luaL_loadbufferx(L, set->sources[i], set->lens[i], chunk, "t");
        if (rc == LUA_OK) {
            push_env(L);
            lua_pushvalue(L, -1);
            v->env_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
            lua_setupvalue(L, -2, 1);
            rc = lua_pcall(L, 0, 0, 0);
        }
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
        lua_rawgeti(L, LUA_REGISTRYINDEX, v->env_refs[i]);
        lua_getfield(L, -1, "route");
        if (lua_isfunction(L, -1)) {
            v->route_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
        } else {
            lua_pop(L, 1);
            v->route_refs[i] = LUA_NOREF;
        }
        lua_pop(L, 1);
        v->m_inv[i] = op_metric_with(g_m_invocations, set->names[i], "route");
    }
    v->m_dur = op_metric_with(g_m_duration, "route");
    lua_createtable(v->L, 0, 1);
    lua_pushcfunction(v->L, req_index);
    lua_setfield(v->L, -2, "__index");
    v->req_meta_ref = luaL_ref(v->L, LUA_REGISTRYINDEX);
    lua_createtable(v->L, K_COUNT, 0);
    for (int k = 1; k < K_COUNT; k++) {
        lua_pushstring(v->L, req_keys[k]);
        lua_rawseti(v->L, -2, k);
    }
    v->keys_ref = luaL_ref(v->L, LUA_REGISTRYINDEX);
    lua_sethook(v->L, NULL, 0, 0);
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
     * load, not on the first request. */
    vm *check = vm_new(s, true, err, errlen);
    if (!check) {
        set_free(s);
        return -1;
    }
    vm_free(check);
    *out = s;
    return 0;
}

/* ======================================================================== */
/* The request table                                                        */
/* ======================================================================== */

/* A key no policy can name: the call id a req table was made for. */
static const char REQ_CALL_KEY = 0;

/* __index for req (one metatable per state): builds req.body, req.headers
 * and req.metadata on first use. After the call the table was made for has
 * ended the request data is gone, and a policy that kept req gets nil. */
static int req_index(lua_State *L)
{
    vm *v = vm_of(L);
    const char *key = lua_tostring(L, 2);
    lua_rawgetp(L, 1, &REQ_CALL_KEY);
    uint64_t made_for = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!key || made_for != v->call_id || !v->req)
        return 0;
    const op_route_request *rq = v->req;
    if (strcmp(key, "body") == 0) {
        json_error_t e;
        json_t *j = rq->body_json ? json_loadb(rq->body_json, rq->body_len, 0, &e) : NULL;
        if (j) {
            push_json_and_free(L, j);
        } else {
            lua_newtable(L);
        }
    } else if (strcmp(key, "headers") == 0) {
        lua_createtable(L, 0, (int)rq->n_headers);
        for (size_t i = 0; i < rq->n_headers; i++) {
            char lower[256];
            size_t k = 0;
            for (const char *p = rq->headers[i].name; *p && k < sizeof lower - 1; p++)
                lower[k++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
            lower[k] = '\0';
            lua_pushstring(L, rq->headers[i].value);
            lua_setfield(L, -2, lower);
        }
    } else if (strcmp(key, "metadata") == 0) {
        lua_newtable(L);
    } else {
        return 0;
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, key); /* cache: later reads skip __index */
    return 1;
}

static void set_key_str(lua_State *L, int keys, int req, int k, const char *val)
{
    if (!val)
        return;
    lua_rawgeti(L, keys, k);
    lua_pushstring(L, val);
    lua_rawset(L, req);
}

static void push_req(vm *v, const op_route_request *rq, const char *model)
{
    lua_State *L = v->L;
    lua_createtable(L, 0, 8);
    int req = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->keys_ref);
    int keys = lua_gettop(L);
    set_key_str(L, keys, req, K_MODEL, model);
    set_key_str(L, keys, req, K_TASK, rq->task);
    set_key_str(L, keys, req, K_ACCOUNT, rq->account);
    set_key_str(L, keys, req, K_METHOD, rq->method);
    set_key_str(L, keys, req, K_PATH, rq->path);
    lua_rawgeti(L, keys, K_TOKENS);
    lua_pushinteger(L, rq->tokens_estimate);
    lua_rawset(L, req);
    lua_pop(L, 1); /* keys */
    lua_pushinteger(L, (lua_Integer)v->call_id);
    lua_rawsetp(L, req, &REQ_CALL_KEY);
    lua_rawgeti(L, LUA_REGISTRYINDEX, v->req_meta_ref);
    lua_setmetatable(L, req);
}

/* ======================================================================== */
/* route                                                                    */
/* ======================================================================== */

static op_policy_status fail(vm *v, size_t i, op_policy_status st, const char *msg,
                             op_route_decision *out)
{
    const char *name = v->set->names[i];
    const char *reason = st == OP_POLICY_BUDGET ? "budget" : st == OP_POLICY_MEMORY ? "memory"
                                                                                     : "error";
    if (st == OP_POLICY_BUDGET)
        snprintf(out->message, sizeof out->message,
                 "policy '%s' exceeded its instruction budget (%llu)", name,
                 (unsigned long long)v->set->instructions);
    else if (st == OP_POLICY_MEMORY)
        snprintf(out->message, sizeof out->message,
                 "policy '%s' exceeded its memory limit (%zu bytes)", name, v->set->memory_bytes);
    else
        snprintf(out->message, sizeof out->message, "policy '%s' failed: %s", name,
                 msg ? msg : "error");
    snprintf(out->policy, sizeof out->policy, "%s", name);
    op_counter_inc(op_metric_with(g_m_failures, name, "route", reason));
    PL_LOG_WARN("policy.failed", "policy", name, "hook", "route", "reason", reason, "message",
                out->message);
    return st;
}

/* Reads route()'s result at the top of the stack into out. Returns NULL if
 * valid, else a message (static or in buf). */
static const char *read_route_result(lua_State *L, op_route_decision *out, char *buf, size_t n)
{
    int t = lua_type(L, -1);
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TTABLE) {
        snprintf(buf, n, "route() must return nil or a table, got %s", luaL_typename(L, -1));
        return buf;
    }
    lua_getfield(L, -1, "reject");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            return "route(): 'reject' must be a table {status=, message=}";
        lua_getfield(L, -1, "status");
        lua_Integer status = 403;
        if (!lua_isnil(L, -1)) {
            int isint;
            status = lua_tointegerx(L, -1, &isint);
            if (!isint || status < 400 || status > 599)
                return "route(): reject status must be an integer from 400 to 599";
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "message");
        const char *msg = "rejected by policy";
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return "route(): reject message must be a string";
            msg = lua_tostring(L, -1);
        }
        out->action = OP_ROUTE_REJECT;
        out->status = (int)status;
        snprintf(out->message, sizeof out->message, "%s", msg);
        lua_pop(L, 2);
        return NULL;
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "model");
    if (!lua_isnil(L, -1)) {
        size_t len;
        const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!m || len == 0 || len >= sizeof out->model)
            return "route(): 'model' must be a non-empty string shorter than 256 bytes";
        memcpy(out->model, m, len + 1);
    }
    lua_pop(L, 1);
    return NULL;
}

op_policy_status op_policy_route(op_policy_set *set, const op_route_request *req,
                                 op_route_decision *out)
{
    out->action = OP_ROUTE_CONTINUE;
    out->status = 0;
    out->message[0] = out->policy[0] = '\0';
    size_t mlen = req->model ? strnlen(req->model, sizeof out->model - 1) : 0;
    memcpy(out->model, req->model ? req->model : "", mlen);
    out->model[mlen] = '\0';
    if (!set || set->n == 0)
        return OP_POLICY_OK;
    char err[400];
    vm *v = vm_for_thread(set, err, sizeof err);
    if (!v) {
        snprintf(out->message, sizeof out->message, "policy state unavailable: %.400s", err);
        snprintf(out->policy, sizeof out->policy, "%s", set->names[0]);
        return OP_POLICY_MEMORY;
    }
    uint64_t t0 = pl_time_mono_ns();
    lua_State *L = v->L;
    v->call_id++;
    v->req = req;
    op_policy_status st = OP_POLICY_OK;
    for (size_t i = 0; i < set->n; i++) {
        if (v->route_refs[i] == LUA_NOREF)
            continue;
        v->cur = i;
        op_counter_inc(v->m_inv[i]);
        begin_call(v);
        lua_rawgeti(L, LUA_REGISTRYINDEX, v->route_refs[i]);
        push_req(v, req, out->model);
        int rc = lua_pcall(L, 1, 1, 0);
        if (rc != LUA_OK) {
            st = v->budget_failed                        ? OP_POLICY_BUDGET
                 : (v->mem_failed || rc == LUA_ERRMEM)   ? OP_POLICY_MEMORY
                                                         : OP_POLICY_ERROR;
            fail(v, i, st, lua_tostring(L, -1), out);
            lua_settop(L, 0);
            break;
        }
        char buf[160];
        char model_before[256];
        memcpy(model_before, out->model, sizeof model_before);
        const char *bad = read_route_result(L, out, buf, sizeof buf);
        lua_settop(L, 0);
        if (bad) {
            memcpy(out->model, model_before, sizeof model_before);
            out->action = OP_ROUTE_CONTINUE;
            st = fail(v, i, OP_POLICY_ERROR, bad, out);
            break;
        }
        if (out->action == OP_ROUTE_REJECT) {
            snprintf(out->policy, sizeof out->policy, "%s", set->names[i]);
            break;
        }
    }
    lua_sethook(L, NULL, 0, 0);
    v->req = NULL;
    op_histogram_observe(v->m_dur, (double)(pl_time_mono_ns() - t0) / 1e9);
    if (st == OP_POLICY_MEMORY) {
        /* A state that ran out of memory may hold half-built data: rebuild. */
        op_policy_thread_cleanup();
    } else if (v->used > v->cap / 2) {
        lua_gc(L, LUA_GCCOLLECT);
    }
    return st;
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

int op_policy_cli(int argc, char **argv, FILE *out, FILE *err)
{
    const char *positional[64];
    int npos = 0;
    op_config_policy pc;
    memset(&pc, 0, sizeof pc);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--lib") == 0 || strcmp(a, "--memory") == 0 ||
             strcmp(a, "--instructions") == 0)) {
            if (i + 1 >= argc) {
                fprintf(err, "outpostctl policy test: %s needs a value\n", a);
                return 2;
            }
            const char *val = argv[++i];
            char *end;
            if (strcmp(a, "--lib") == 0) {
                pc.lib_dir = (char *)val;
            } else {
                unsigned long long n = strtoull(val, &end, 10);
                if (*end || n == 0) {
                    fprintf(err, "outpostctl policy test: %s must be a positive integer\n", a);
                    return 2;
                }
                if (strcmp(a, "--memory") == 0)
                    pc.memory_bytes = (size_t)n;
                else
                    pc.instructions = n;
            }
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(err, "outpostctl policy test: unknown option %s\n", a);
            return 2;
        } else if (npos < 64) {
            positional[npos++] = a;
        }
    }
    if (npos < 2) {
        fprintf(err, "usage: outpostctl policy test POLICY.lua [MORE.lua ...] REQUEST.json "
                     "[--lib DIR] [--memory BYTES] [--instructions N]\n");
        return 2;
    }
    const char *req_path = positional[npos - 1];
    char *text;
    size_t len;
    int rc = pl_file_read_all(req_path, 16u << 20, &text, &len);
    if (rc != 0) {
        fprintf(err, "outpostctl policy test: %s: %s\n", req_path, strerror(-rc));
        return 2;
    }
    json_error_t je;
    json_t *rq = json_loadb(text, len, 0, &je);
    free(text);
    json_t *model = json_object_get(rq, "model");
    if (!rq || !json_is_object(rq) || !json_is_string(model)) {
        fprintf(err, "outpostctl policy test: %s: %s\n", req_path,
                !rq ? je.text : "the request must be an object with a string 'model'");
        json_decref(rq);
        return 2;
    }
    json_t *body = json_object_get(rq, "body");
    char *body_text = json_is_object(body) ? json_dumps(body, JSON_COMPACT) : strdup("{}");
    op_policy_header hdrs[64];
    size_t nh = 0;
    const char *hk;
    json_t *hv;
    json_object_foreach(json_object_get(rq, "headers"), hk, hv)
    {
        if (json_is_string(hv) && nh < 64) {
            hdrs[nh].name = hk;
            hdrs[nh].value = json_string_value(hv);
            nh++;
        }
    }
    json_t *acct = json_object_get(rq, "account"), *task = json_object_get(rq, "task");
    json_t *est = json_object_get(rq, "tokens_estimate");
    op_route_request r = {
        .account = json_is_string(acct) ? json_string_value(acct) : "local",
        .model = json_string_value(model),
        .task = json_is_string(task) ? json_string_value(task) : NULL,
        .method = "POST",
        .path = "/ai/run",
        .headers = hdrs,
        .n_headers = nh,
        .body_json = body_text,
        .body_len = body_text ? strlen(body_text) : 0,
        .tokens_estimate = json_is_integer(est) ? (long long)json_integer_value(est)
                                                : estimate_tokens_json(body),
    };
    pc.files = (char **)positional;
    pc.n_files = (size_t)(npos - 1);
    op_policy_set *set = NULL;
    char lerr[1024];
    if (op_policy_set_load(&pc, &set, lerr, sizeof lerr) != 0) {
        fprintf(err, "policy load failed: %s\n", lerr);
        free(body_text);
        json_decref(rq);
        return 1;
    }
    op_route_decision d;
    uint64_t t0 = pl_time_mono_ns();
    op_policy_status st = op_policy_route(set, &r, &d);
    uint64_t t1 = pl_time_mono_ns();
    int code = 0;
    if (st != OP_POLICY_OK) {
        const char *why = st == OP_POLICY_BUDGET   ? "budget"
                          : st == OP_POLICY_MEMORY ? "memory"
                                                   : "error";
        fprintf(err, "policy failed (%s): %s\n", why, d.message);
        code = 1;
    } else {
        json_t *o = d.action == OP_ROUTE_REJECT
                        ? json_pack("{s:s, s:i, s:s, s:s}", "action", "reject", "status",
                                    d.status, "message", d.message, "policy", d.policy)
                        : json_pack("{s:s, s:s}", "action", "continue", "model", d.model);
        char *s = json_dumps(o, JSON_COMPACT);
        fprintf(out, "%s\n", s ? s : "{}");
        free(s);
        json_decref(o);
    }
    fprintf(err, "time_us=%.1f (first call on a fresh state)\n", (double)(t1 - t0) / 1e3);
    op_policy_thread_cleanup();
    op_policy_set_unref(set);
    free(body_text);
    json_decref(rq);
    return code;
}
