/*
 * gw_local: the gateway's `local` provider (also named `workers-ai`): the
 * agent's own models, called in process through the plugin host, answering
 * with the same bytes the agent's HTTP API would, so that the gateway core
 * treats a local model exactly like an upstream HTTP provider (same
 * gw_response_cb callbacks: head, data pieces, done).
 *
 * Endpoints
 *   "@cf/meta/llama-3.1-8b-instruct", "ai/run/@x/y", "run/@x/y"
 *       Workers AI: the body is the model input; the answer is the
 *       {result, success, errors, messages} envelope, or with "stream": true
 *       an event stream of {"response": "..."} events, a last event with the
 *       usage, and [DONE].
 *   "chat/completions", "completions", "embeddings" (optionally "v1/...")
 *       OpenAI-compatible: the model is the body's "model"; the answer is
 *       OpenAI's object or chunk stream (usage included in streams).
 * Errors (unknown model, bad input, plugin refusal, model failure) are
 * answered as HTTP-like responses through the callbacks (status >= 400 and
 * an error body in the endpoint's shape), never as a transport error, so
 * that fallback and retry policies see them as they would an upstream's.
 *
 * Threading: callbacks run on the plugin's threads, or on the calling
 * thread before gw_local_start returns (an immediate error, a fast model).
 * They never overlap for one call. Ownership: the call holds a reference on
 * rt's model until it completes; the caller's reference is dropped with
 * gw_local_release.
 */
#ifndef GW_LOCAL_H
#define GW_LOCAL_H

#include <jansson.h>
#include <stdbool.h>

#include "gateway/gw_upstream.h"
#include "runtime/op_runtime.h"

typedef struct gw_local_call gw_local_call;

/* True for the provider names that mean the agent's own models. */
bool gw_local_is_provider(const char *provider);

/* The model a local request names: the endpoint's model id, or the body's
 * "model" for the OpenAI endpoints. Returns false if there is none. */
bool gw_local_model(const char *endpoint, json_t *body, char *out, size_t outlen);

/* Starts the call. body is the step's query (borrowed; serialized here).
 * model overrides the model named by endpoint/body (a route policy's
 * choice), or NULL. Returns 0 with *out (one reference; release it), or -1
 * when out of memory (no callback comes). */
int gw_local_start(op_runtime *rt, const char *endpoint, const char *model, json_t *body,
                   const gw_response_cb *cb, gw_local_call **out);
/* Asks the model to stop; on_done follows (if it has not run). */
void gw_local_cancel(gw_local_call *c);
void gw_local_release(gw_local_call *c);

#endif
