/*
 * op_ws: WebSocket (RFC 6455) connections on top of op_http's upgrade, with
 * framing by wslay (docs/decisions/0001-http-server.md). The AI gateway's
 * WebSocket API (road step 3) is built on this.
 *
 * A handler that wants a WebSocket calls op_ws_accept() on the request: it
 * checks the upgrade headers (400/426 in the error envelope if they are
 * wrong), answers 101, and from then on the connection is served by one
 * thread of its own, which calls the handlers below. Pings are answered and
 * close handshakes completed by the library.
 *
 * Ownership: op_ws is owned by its thread; handlers may keep the pointer
 * until on_close has returned, and must not use it after.
 *
 * Threading: on_message and on_close run on the connection's thread, one at
 * a time. op_ws_send and op_ws_close may be called from any thread.
 *
 * Limits: messages over max_message_bytes close the connection with 1009.
 */
#ifndef OP_WS_H
#define OP_WS_H

#include <stddef.h>
#include <stdint.h>

#include "http/op_http.h"

typedef struct op_ws op_ws;

enum { OP_WS_TEXT = 1, OP_WS_BINARY = 2 };

typedef struct op_ws_handlers {
    /* A whole message (fragments joined); data valid during the call. */
    void (*on_message)(op_ws *ws, int opcode, const uint8_t *data, size_t len, void *user);
    /* The connection ended (close frame, error or peer gone); last call. */
    void (*on_close)(op_ws *ws, uint16_t code, void *user);
    void *user;
    size_t max_message_bytes; /* 0 = 1 MiB */
    /* Subprotocol to confirm if the client offers it (Sec-WebSocket-Protocol), or NULL. */
    const char *protocol;
} op_ws_handlers;

/* Validates the upgrade request and answers it. Returns 0 if the connection
 * will become a WebSocket, -1 if an error response was sent instead. */
int op_ws_accept(op_http_req *req, const op_ws_handlers *h);

/* Queues a message (copied). Returns 0, or -1 if the connection is closing. */
int op_ws_send(op_ws *ws, int opcode, const void *data, size_t len);

/* Starts the close handshake with code and reason. */
void op_ws_close(op_ws *ws, uint16_t code, const char *reason);

/* Computes Sec-WebSocket-Accept for a client key into out (29 bytes). */
void op_ws_accept_key(const char *client_key, char out[29]);

#endif
