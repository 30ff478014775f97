/*
 * op_openai: the OpenAI-compatible surface, as pure translation. Requests
 * of /v1/chat/completions, /v1/completions and /v1/embeddings become the
 * Workers AI input the model's plugin reads (the same input /ai/run takes),
 * and the plugin's Workers AI result becomes OpenAI's response objects and
 * stream chunks. op_api does the HTTP, auth, policy and submission around it.
 *
 * Everything a client sends is checked here before any model sees it:
 * types, ranges, and parameters that would change what the answer means
 * (tools, response formats, log probabilities, n > 1) are refused with 400
 * rather than ignored; unknown parameters are refused as OpenAI does. The
 * supported and refused parameters are listed in docs/api.md.
 *
 * Ownership: json_t results are new references for the caller. Threading:
 * all functions are reentrant.
 */
#ifndef OP_OPENAI_H
#define OP_OPENAI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum op_openai_kind {
    OP_OPENAI_CHAT = 0,        /* /v1/chat/completions */
    OP_OPENAI_COMPLETIONS = 1, /* /v1/completions */
    OP_OPENAI_EMBEDDINGS = 2,  /* /v1/embeddings */
} op_openai_kind;

#define OP_OPENAI_MODEL_MAX 256      /* bytes of a model id, NUL included */
#define OP_OPENAI_MAX_STOP 4         /* stop sequences */
#define OP_OPENAI_MAX_INPUTS 2048    /* texts in one embeddings request */
/* OpenAI's default max_tokens for /v1/completions (chat has none: the
 * model's own applies). */
#define OP_OPENAI_COMPLETIONS_DEFAULT_MAX_TOKENS 16

/* What answering a request needs to remember of it. */
typedef struct op_openai_req {
    op_openai_kind kind;
    char model[OP_OPENAI_MODEL_MAX]; /* as the client named it (an alias stays an alias) */
    bool stream;
    bool include_usage;  /* stream_options.include_usage */
    bool base64;         /* embeddings: encoding_format "base64" */
    long long dimensions;/* embeddings: as requested, 0 if not given */
    char id[48];         /* "chatcmpl-…" / "cmpl-…", one per request */
    long long created;   /* Unix seconds */
} op_openai_req;

/* An error in OpenAI's shape, {"error": {message, type, param, code}}. */
typedef struct op_openai_error {
    int status;           /* HTTP status */
    char message[512];
    char param[96];       /* the offending parameter, "" for none (null) */
    const char *code;     /* static string, or NULL (null) */
} op_openai_error;

/*
 * Checks an OpenAI request body (a JSON object) of the given kind and
 * returns the Workers AI input for the model's plugin, filling req (id and
 * created included). On a bad request returns NULL with err set (status 400
 * and the parameter at fault).
 *   chat:        {"messages": [{"role", "content": string}...], sampling...}
 *   completions: {"prompt": string, "raw": true, sampling...}
 *   embeddings:  {"text": [string, ...]}
 */
json_t *op_openai_translate(op_openai_kind kind, json_t *body, op_openai_req *req,
                            op_openai_error *err);

/* The whole (non-streamed) response for a plugin result. NULL with err set
 * (status 500) if the result does not have the task's shape; status 400 for
 * embeddings whose width is not the requested dimensions. */
json_t *op_openai_response(const op_openai_req *req, json_t *result, op_openai_error *err);

/* Stream chunks (chat and completions). first: the chunk that opens a chat
 * stream (role "assistant", empty content); NULL for completions, whose
 * stream has none. piece: one streamed piece of text (valid UTF-8). final:
 * the empty chunk with the finish_reason of result. usage: the usage chunk
 * (choices []) when include_usage was asked, else NULL. */
json_t *op_openai_chunk_first(const op_openai_req *req);
json_t *op_openai_chunk_piece(const op_openai_req *req, const char *text, size_t len);
json_t *op_openai_chunk_final(const op_openai_req *req, json_t *result);
json_t *op_openai_chunk_usage(const op_openai_req *req, json_t *result);

/* OpenAI's error "type" for an HTTP status (invalid_request_error,
 * authentication_error, permission_error, not_found_error,
 * rate_limit_error, timeout_error, server_error, ...). Static. */
const char *op_openai_error_type(int status);
/* {"error": {...}} for status/message/param/code (param and code may be
 * NULL); a new object. */
json_t *op_openai_error_object(int status, const char *message, const char *param,
                               const char *code);
/* The same, serialized (malloc'd), or NULL when out of memory. */
char *op_openai_error_json(int status, const char *message, const char *param,
                           const char *code);

/* Standard base64 (RFC 4648, padded) of n bytes into out, which holds at
 * least 4 * ((n + 2) / 3) + 1 bytes; NUL-terminated; returns the length. */
size_t op_openai_base64(const unsigned char *in, size_t n, char *out);

#endif
