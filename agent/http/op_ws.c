#include "http/op_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "platform/pl_log.h"

struct op_ws {
    int fd;
    int wake;                 /* eventfd: another thread queued output */
    void *handle;             /* op_http upgrade handle */
    wslay_event_context_ptr ctx;
    pthread_mutex_t mu;       /* guards ctx between the loop and senders */
    op_ws_handlers h;
    char *extra;              /* bytes read past the HTTP request */
    size_t extra_len, extra_off;
    bool closed;
    uint16_t close_code;
};

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

void op_ws_accept_key(const char *client_key, char out[29])
{
    char buf[128];
    size_t kl = strlen(client_key);
    if (kl > sizeof buf - sizeof WS_GUID)
        kl = sizeof buf - sizeof WS_GUID;
    memcpy(buf, client_key, kl);
    memcpy(buf + kl, WS_GUID, sizeof WS_GUID - 1);
    unsigned char sha[20];
    unsigned int n = sizeof sha;
    EVP_Digest(buf, kl + sizeof WS_GUID - 1, sha, &n, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, sha, 20); /* 28 chars + NUL */
}

/* ---- wslay callbacks ---- */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
    op_ws *ws = user;
    (void)flags;
    if (ws->extra_off < ws->extra_len) {
        size_t n = ws->extra_len - ws->extra_off;
        if (n > len)
            n = len;
        memcpy(buf, ws->extra + ws->extra_off, n);
        ws->extra_off += n;
        return (ssize_t)n;
    }
    ssize_t r;
    do {
        r = recv(ws->fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    if (r == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    op_ws *ws = user;
    (void)flags;
    ssize_t r;
    do {
        r = send(ws->fd, data, len, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user)
{
    op_ws *ws = user;
    (void)ctx;
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
        /* The handler may call op_ws_send, which takes mu: release it. */
        pthread_mutex_unlock(&ws->mu);
        if (ws->h.on_message)
            ws->h.on_message(ws, arg->opcode == WSLAY_TEXT_FRAME ? OP_WS_TEXT : OP_WS_BINARY,
                             arg->msg, arg->msg_length, ws->h.user);
        pthread_mutex_lock(&ws->mu);
    } else if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        ws->close_code = arg->status_code;
    }
}

/* ---- the connection's thread ---- */

static void *ws_main(void *arg)
{
    op_ws *ws = arg;
    pthread_mutex_lock(&ws->mu);
    for (;;) {
        bool want_read = wslay_event_want_read(ws->ctx);
        bool want_write = wslay_event_want_write(ws->ctx);
        if (!want_read && !want_write)
            break;
        pthread_mutex_unlock(&ws->mu);
        struct pollfd p[2] = {
            {.fd = ws->fd, .events = (short)((want_read ? POLLIN : 0) | (want_write ? POLLOUT : 0))},
            {.fd = ws->wake, .events = POLLIN},
        };
        /* Bytes already read by the HTTP layer count as readable. */
        int rc = ws->extra_off < ws->extra_len ? 1 : poll(p, 2, 1000);
        pthread_mutex_lock(&ws->mu);
        if (rc < 0 && errno != EINTR)
            break;
        if (p[1].revents & POLLIN) {
            uint64_t v;
            ssize_t n = read(ws->wake, &v, sizeof v);
            (void)n;
        }
        if ((want_read && ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) ||
                           ws->extra_off < ws->extra_len)) &&
            wslay_event_recv(ws->ctx) != 0)
            break;
        if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
            break;
    }
    ws->closed = true;
    pthread_mutex_unlock(&ws->mu);
    if (ws->h.on_close)
        ws->h.on_close(ws, ws->close_code ? ws->close_code : 1006, ws->h.user);
    wslay_event_context_free(ws->ctx);
    op_http_upgrade_close(ws->handle);
    close(ws->wake);
    pthread_mutex_destroy(&ws->mu);
    free(ws->extra);
    free(ws);
    return NULL;
}

static void on_upgraded(void *cls, int fd, const char *extra, size_t extra_len, void *handle)
{
    op_ws *ws = cls;
    ws->fd = fd;
    ws->handle = handle;
    if (extra_len) {
        ws->extra = malloc(extra_len);
        if (ws->extra) {
            memcpy(ws->extra, extra, extra_len);
            ws->extra_len = extra_len;
        }
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, ws_main, ws) != 0) {
        PL_LOG_ERROR("ws.thread_failed");
        ws->closed = true;
        if (ws->h.on_close)
            ws->h.on_close(ws, 1011, ws->h.user);
        wslay_event_context_free(ws->ctx);
        op_http_upgrade_close(handle);
        close(ws->wake);
        free(ws->extra);
        free(ws);
    }
    pthread_attr_destroy(&attr);
}

static void refuse(op_http_req *r, int status, const char *msg)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"success\":false,\"errors\":[{\"code\":%d,\"message\":\"%s\"}],\"messages\":[],"
             "\"result\":null}",
             status, msg);
    if (status == 426)
        op_http_add_header(r, "Sec-WebSocket-Version", "13");
    op_http_respond(r, status, "application/json", body, strlen(body));
}

/* True if the comma-separated header value contains token (any case). */
static bool header_has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = end;
    }
    return false;
}

int op_ws_accept(op_http_req *r, const op_ws_handlers *h)
{
    const char *upgrade = op_http_req_header(r, "Upgrade");
    const char *connection = op_http_req_header(r, "Connection");
    const char *key = op_http_req_header(r, "Sec-WebSocket-Key");
    const char *version = op_http_req_header(r, "Sec-WebSocket-Version");
    if (strcmp(op_http_req_method(r), "GET") != 0 || !upgrade ||
        !header_has_token(upgrade, "websocket") || !connection ||
        !header_has_token(connection, "upgrade")) {
        refuse(r, 426, "this endpoint needs a WebSocket upgrade");
        return -1;
    }
    if (!version || strcmp(version, "13") != 0) {
        refuse(r, 426, "unsupported Sec-WebSocket-Version (13 required)");
        return -1;
    }
    /* A key is 16 random bytes in base64: 24 characters. */
    if (!key || strlen(key) != 24) {
        refuse(r, 400, "missing or malformed Sec-WebSocket-Key");
        return -1;
    }
    op_ws *ws = calloc(1, sizeof *ws);
    if (!ws) {
        refuse(r, 500, "out of memory");
        return -1;
    }
    ws->h = *h;
    ws->fd = -1;
    ws->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&ws->mu, NULL);
    struct wslay_event_callbacks cb = {
        .recv_callback = ws_recv,
        .send_callback = ws_send,
        .on_msg_recv_callback = ws_on_msg,
    };
    if (ws->wake < 0 || wslay_event_context_server_init(&ws->ctx, &cb, ws) != 0) {
        if (ws->wake >= 0)
            close(ws->wake);
        pthread_mutex_destroy(&ws->mu);
        free(ws);
        refuse(r, 500, "cannot set up the WebSocket");
        return -1;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, h->max_message_bytes ? h->max_message_bytes
                                                                             : 1u << 20);
    char accept[29];
    op_ws_accept_key(key, accept);
    op_http_add_header(r, "Upgrade", "websocket");
    op_http_add_header(r, "Sec-WebSocket-Accept", accept);
    const char *offered = op_http_req_header(r, "Sec-WebSocket-Protocol");
    if (h->protocol && offered && header_has_token(offered, h->protocol))
        op_http_add_header(r, "Sec-WebSocket-Protocol", h->protocol);
    if (op_http_respond_upgrade(r, on_upgraded, ws) != 0) {
        wslay_event_context_free(ws->ctx);
        close(ws->wake);
        pthread_mutex_destroy(&ws->mu);
        free(ws);
        return -1;
    }
    return 0;
}

static void wake(op_ws *ws)
{
    uint64_t one = 1;
    ssize_t n = write(ws->wake, &one, sizeof one);
    (void)n;
}

int op_ws_send(op_ws *ws, int opcode, const void *data, size_t len)
{
    struct wslay_event_msg msg = {
        .opcode = (uint8_t)(opcode == OP_WS_BINARY ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME),
        .msg = data,
        .msg_length = len,
    };
    pthread_mutex_lock(&ws->mu);
    int rc = ws->closed ? -1 : wslay_event_queue_msg(ws->ctx, &msg);
    pthread_mutex_unlock(&ws->mu);
    if (rc == 0)
        wake(ws);
    return rc == 0 ? 0 : -1;
}

void op_ws_close(op_ws *ws, uint16_t code, const char *reason)
{
    pthread_mutex_lock(&ws->mu);
    if (!ws->closed)
        wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason,
                                reason ? strlen(reason) : 0);
    pthread_mutex_unlock(&ws->mu);
    wake(ws);
}
