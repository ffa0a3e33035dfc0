#!/usr/bin/env python3
"""A real HTTP listener for the script tests: answers every GET with a fixed status.

usage: status_server.py STATUS [DELAY_SECONDS]
Binds 127.0.0.1 on a free port, prints the port on stdout, serves until killed.
"""
import http.server
import sys
import time


def main():
    status = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay)
            body = b'{"status":"%s"}' % (b"pass" if status < 300 else b"fail")
            self.send_response(status)
            self.send_header("Content-Type", "application/health+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
