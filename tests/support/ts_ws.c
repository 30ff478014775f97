/*
 * ts_ws: see ts_ws.h.
 */
#include "ts_ws.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        ssize_t k = recv(fd, (char *)buf + got, n - got, 0);
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

int ts_ws_connect(int port, const char *path, const char *const *headers, char *status_line,
                  size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n",
                     path);
    for (size_t i = 0; headers && headers[i]; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s\r\n", headers[i]);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if (send(fd, req, (size_t)n, 0) != n) {
        close(fd);
        return -1;
    }
    /* Read the response head byte by byte, so no frame byte is consumed. */
    char head[4096];
    size_t h = 0;
    while (h < sizeof head - 1) {
        if (read_full(fd, head + h, 1, 5000) != 0)
            break;
        h++;
        if (h >= 4 && memcmp(head + h - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    head[h] = '\0';
    char *eol = strstr(head, "\r\n");
    if (eol)
        *eol = '\0';
    snprintf(status_line, len, "%s", head);
    if (!strstr(head, " 101 ")) {
        close(fd);
        return -1;
    }
    return fd;
}

void ts_ws_send_text(int fd, const char *text)
{
    size_t n = strlen(text);
    uint8_t *f = malloc(n + 14);
    size_t h = 0;
    f[h++] = 0x81;
    if (n < 126) {
        f[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(n >> 8);
        f[h++] = (uint8_t)n;
    } else {
        f[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            f[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        f[h + i] = (uint8_t)text[i] ^ mask[i % 4];
    send(fd, f, h + n, 0);
    free(f);
}

int ts_ws_read(int fd, char **out, int timeout_ms)
{
    uint8_t hd[2];
    *out = NULL;
    if (read_full(fd, hd, 2, timeout_ms) != 0)
        return -1;
    uint64_t n = hd[1] & 0x7f;
    if (n == 126) {
        uint8_t e[2];
        if (read_full(fd, e, 2, timeout_ms) != 0)
            return -1;
        n = ((uint64_t)e[0] << 8) | e[1];
    } else if (n == 127) {
        uint8_t e[8];
        if (read_full(fd, e, 8, timeout_ms) != 0)
            return -1;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = (n << 8) | e[i];
    }
    if (n > (64u << 20))
        return -1;
    char *p = malloc(n + 1);
    if (n && read_full(fd, p, n, timeout_ms) != 0) {
        free(p);
        return -1;
    }
    p[n] = '\0';
    *out = p;
    return hd[0] & 0x0f;
}
