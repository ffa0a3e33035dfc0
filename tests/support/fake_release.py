#!/usr/bin/env python3
"""A stand-in release for `tribist-host releases preflight`'s tests: answers /health 200 with a releaseId.

usage: fake_release.py RELEASE_ID address-file|log-line
Binds 127.0.0.1 on the port TRIBIST_LISTEN names (0: the kernel picks one) and says which
port the way the mode names: `address-file` writes it to $TRIBIST_ADDRESS_FILE (a temporary
file renamed into place, as the server does) and logs a line that does not say it;
`log-line` logs `listening on http://127.0.0.1:PORT` as servers that predate the address
file do. Serves until killed.
"""
import http.server
import os
import sys


def main():
    release, mode = sys.argv[1], sys.argv[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status":"pass","releaseId":"%s"}' % release.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/health+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host, port = os.environ.get("TRIBIST_LISTEN", "127.0.0.1:0").rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    addr = "%s:%d" % server.server_address[:2]
    if mode == "address-file":
        path = os.environ["TRIBIST_ADDRESS_FILE"]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(addr + "\n")
        os.rename(tmp, path)
        print("serving, the address is in the address file", file=sys.stderr, flush=True)
    else:
        print("listening on http://%s (fake)" % addr, file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
