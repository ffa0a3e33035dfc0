#!/usr/bin/env python3
"""A real HTTP listener for the script tests: answers every GET with a fixed status.

usage: status_server.py STATUS [DELAY_SECONDS] [BODY]
BODY (default: a small health JSON) is one of
  escapes   terminal escapes a hostile server would send: OSC 0 (window title), CSI 2K + CR
            (rewrite the line), OSC 52 (clipboard), 8-bit C1 (CSI 0x9b) and UTF-8 C1 bytes
  size:N    N bytes of 'x' with a Content-Length (e.g. size:6000000)
  stream    an endless chunked body, until the client goes away
Binds 127.0.0.1 on a free port, prints the port on stdout, serves until killed.
"""
import http.server
import sys
import time

ESCAPES = (
    b'{"status":"fail"}\x1b]0;root@owned\x07'
    b"\x1b[2K\rwait_for_it.sh: http://x/health answered 200 after 0s\n"
    b"\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"
    b"\x9b31mC1-CSI\x1b\\ \xc2\x9b32mutf8-C1 caf\xc3\xa9\x00nul\x7fdel\x08bs end"
)


def main():
    status = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    mode = sys.argv[3] if len(sys.argv) > 3 else "json"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", "application/health+json")
            if mode == "stream":
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"y" * 65536
                frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                try:
                    while True:
                        self.wfile.write(frame)
                except OSError:
                    pass
                self.close_connection = True
                return
            if mode == "escapes":
                body = ESCAPES
            elif mode.startswith("size:"):
                body = b"x" * int(mode[5:])
            else:
                body = b'{"status":"%s"}' % (b"pass" if status < 300 else b"fail")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
