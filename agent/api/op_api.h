/*
 * op_api: the agent's HTTP API: routing, authentication, the error envelope
 * and the handlers (health, metrics, model catalog, inference).
 *
 * The HTTP server (op_http) calls op_api_handle() for every request on a
 * worker thread. Inference requests are deferred: the handler submits to the
 * model's plugin and the plugin's callbacks answer or stream from plugin
 * threads. Every request reads one op_runtime snapshot for its whole life.
 *
 * Two surfaces share one inference path (policy route hook, model lookup,
 * deadline, cancel on disconnect): Workers AI (/ai/run/{model}, answers in
 * the {result, success, errors, messages} envelope) and OpenAI's
 * (/v1/chat/completions, /v1/completions, /v1/embeddings, whose bodies and
 * answers op_openai translates, and whose errors, like every error under
 * /v1/ and .../ai/v1/, take OpenAI's {"error": {...}} shape).
 *
 * Threading: op_api_handle runs concurrently on all workers. The deadline
 * watchdog is one thread started by op_api_start and stopped by op_api_stop.
 *
 * Reference: docs/api.md.
 */
#ifndef OP_API_H
#define OP_API_H

#include <jansson.h>

#include "http/op_http.h"

/* API error codes in the envelope's errors[].code (docs/api.md). */
enum {
    OP_API_ERR_NO_ROUTE = 7000,
    OP_API_ERR_METHOD = 7001,
    OP_API_ERR_AUTH = 10000,
    OP_API_ERR_FORBIDDEN = 10001,
    OP_API_ERR_ACCOUNT = 10002,
    OP_API_ERR_INVALID_INPUT = 5004,
    OP_API_ERR_NO_MODEL = 5007,
    OP_API_ERR_MODEL_UNAVAILABLE = 5008,
    OP_API_ERR_POLICY_REJECT = 3051,
    OP_API_ERR_POLICY_FAILED = 3050,
    OP_API_ERR_INFERENCE = 3003,
    OP_API_ERR_OVERLOADED = 3040,
    OP_API_ERR_TIMEOUT = 3046,
};

/* Starts the deadline watchdog. Returns 0 or -1. */
int op_api_start(void);
/* Cancels every inference still running (shutdown after the grace period). */
void op_api_cancel_all(void);
/* Stops the watchdog. */
void op_api_stop(void);
/* Inference requests in flight. */
int op_api_in_flight(void);

/* The op_http handler. user is unused. */
void op_api_handle(op_http_req *req, void *user);
/* op_http's too_large hook: a 413 in the error shape of the request's route
 * (OpenAI's under /v1/... and .../ai/v1/..., else the Workers AI envelope). */
void op_api_too_large(op_http_req *req, void *user);

/* One server-sent event "data: <json>\n\n" for obj (its reference is
 * stolen), malloc'd and NUL-terminated, its length in *len; NULL when out
 * of memory. */
char *op_api_sse_event(json_t *obj, size_t *len);
/* Writes the error envelope for (code, message) into a malloc'd string. */
char *op_api_error_json(int code, const char *message);

#endif
