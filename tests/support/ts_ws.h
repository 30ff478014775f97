/*
 * ts_ws: a small WebSocket client for tests (RFC 6455 on a raw socket):
 * handshake with optional extra headers, masked text frames out, whole
 * server frames in. Test code only: asserts on protocol errors.
 */
#ifndef TS_WS_H
#define TS_WS_H

#include <stddef.h>

/* Connects to 127.0.0.1:port, sends the upgrade for path with extra header
 * lines ("Name: value", NULL-terminated list, may be NULL). Returns the
 * socket with the 101 read, or -1 with the status line in status_line. */
int ts_ws_connect(int port, const char *path, const char *const *headers, char *status_line,
                  size_t len);
/* Sends one masked text frame. */
void ts_ws_send_text(int fd, const char *text);
/* Reads one frame: returns its opcode (1 text, 8 close, ...) with the
 * payload (malloc'd, NUL-terminated) in *out, or -1 on timeout/EOF. */
int ts_ws_read(int fd, char **out, int timeout_ms);

#endif
