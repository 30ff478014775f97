#!/usr/bin/env python3
"""A TLS HTTP/1.1 server for tests/unit/test_gw_upstream.c.

Usage: gw_upstream_tls_server.py CERT.pem KEY.pem

Listens on a free loopback port, prints that port on one line of stdout, and
answers every GET with 200 "hello over tls" on keep-alive connections until
it is killed. A client that refuses the certificate only costs a failed
accept, which the server ignores.
"""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the test can see reuse

    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
