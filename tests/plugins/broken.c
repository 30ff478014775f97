/*
 * broken: one source for the test plugins the host must refuse. Each .so is
 * this file built with one BROKEN_* macro (see CMakeLists.txt); the
 * descriptor is valid except for the one defect named by the macro, so each
 * library tests exactly one check. Test-only: never shipped.
 */
#include <stddef.h>

#include "outpost/plugin.h"

struct outpost_plugin_state {
    int unused;
};

static outpost_plugin_state g_state __attribute__((unused));

static outpost_error *broken_init(const outpost_host_api *host, outpost_plugin_state **state)
{
#ifdef BROKEN_INIT_FAILS
    *state = NULL;
    return host->error_new(OUTPOST_ERR_UNAVAILABLE, "no accelerator found");
#else
    (void)host;
    *state = &g_state;
    return NULL;
#endif
}

static void broken_fini(outpost_plugin_state *state)
{
    (void)state;
}

static outpost_error *broken_model_load(outpost_plugin_state *state,
                                        const outpost_model_config *cfg,
                                        const outpost_device *dev, outpost_model **model,
                                        outpost_model_info *info)
{
    (void)state, (void)cfg, (void)dev, (void)model, (void)info;
    return NULL;
}

__attribute__((unused)) static void broken_model_unload(outpost_model *model)
{
    (void)model;
}

static outpost_error *broken_submit(outpost_model *model, outpost_request *const *reqs, size_t n)
{
    (void)model, (void)reqs, (void)n;
    return NULL;
}

static void broken_cancel(outpost_model *model, outpost_request *req)
{
    (void)model, (void)req;
}

static const char *const broken_tasks[] = {OUTPOST_TASK_TEXT_GENERATION, NULL};

#if defined(BROKEN_DUP_NAME)
#define BROKEN_NAME "echo" /* the echo test plugin's name */
#elif defined(BROKEN_BAD_NAME)
#define BROKEN_NAME "Bad Name"
#else
#define BROKEN_NAME "broken"
#endif

static const outpost_plugin broken_plugin = {
#ifdef BROKEN_ABI_MAJOR
    .abi_major = 99,
#else
    .abi_major = OUTPOST_PLUGIN_ABI_MAJOR,
#endif
    .abi_minor = OUTPOST_PLUGIN_ABI_MINOR,
#ifdef BROKEN_SMALL_STRUCT
    .struct_size = 16,
#else
    .struct_size = sizeof(outpost_plugin),
#endif
#ifdef BROKEN_SIGNATURE
    .build_signature = "outpost-abi-1;ptr=4;long=4;size_t=4;int=4;order=1234",
#else
    .build_signature = OUTPOST_PLUGIN_BUILD_SIGNATURE,
#endif
    .name = BROKEN_NAME,
    .version = "0.0.1",
    .tasks = broken_tasks,
    .init = broken_init,
    .fini = broken_fini,
    .model_load = broken_model_load,
#ifdef BROKEN_NULL_FIELDS
    .model_unload = NULL,
#else
    .model_unload = broken_model_unload,
#endif
    .submit = broken_submit,
    .cancel = broken_cancel,
};

#ifdef BROKEN_NO_ENTRY
/* Exports something, just not the entry point. */
__attribute__((visibility("default"))) const outpost_plugin *outpost_plugin_entry_v0(void);
__attribute__((visibility("default"))) const outpost_plugin *outpost_plugin_entry_v0(void)
{
    return &broken_plugin;
}
#else
OUTPOST_PLUGIN_DEFINE(broken_plugin)
#endif
