#!/usr/bin/env python3
"""Steady HTTP load with an exact failure count, for zero-downtime checks and bench-upgrade.

usage: load.py [--concurrency N] [--max-seconds S] [--stop-file F] [--timeout T] [--interval I]
               [--cafile PEM] [--non2xx] URL...

Each worker thread sends GET requests in turn to the URLs, each on a new connection (as a
health probe does), until the stop file exists or max-seconds pass (the loop is bounded in
time; it never targets anything but the URLs given, which the callers keep on loopback).
Prints one JSON object: requests sent, failures by kind (refused, reset, timeout, http-5xx,
other), the median, 99th percentile and maximum latency in ms. An https:// URL is verified
against --cafile (the system's roots without it), its name resolved as the system does (e.g.
/etc/hosts). With --non2xx every answer outside 200-299 is a failure (http-NNN), not only 5xx.
"""
import argparse
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--stop-file")
    ap.add_argument("--timeout", type=float, default=5)
    ap.add_argument("--interval", type=float, default=0,
                    help="seconds each worker waits between requests (a paced client)")
    ap.add_argument("--cafile", help="PEM file of the CA an https:// URL's certificate must chain to")
    ap.add_argument("--non2xx", action="store_true", help="count any status outside 200-299 as a failure")
    args = ap.parse_args()
    tls = ssl.create_default_context(cafile=args.cafile)
    good = (lambda s: 200 <= s <= 299) if args.non2xx else (lambda s: s < 500)
    deadline = time.monotonic() + args.max_seconds
    lock = threading.Lock()
    latencies, failures, examples = [], {}, []

    def stopped():
        return time.monotonic() > deadline or (args.stop_file and os.path.exists(args.stop_file))

    def one(url):
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=args.timeout, context=tls)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
        try:
            conn.request("GET", u.path or "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            return None if good(resp.status) else "http-%d" % resp.status
        except ConnectionRefusedError:
            return "refused"
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            return "reset"
        except (socket.timeout, TimeoutError):
            return "timeout"
        except ssl.SSLError as e:
            return "tls:" + (e.reason or type(e).__name__)
        except Exception as e:  # noqa: BLE001 - every failure counts, whatever its kind
            return "other:" + type(e).__name__
        finally:
            conn.close()

    def worker(i):
        n = i
        while not stopped():
            url = args.urls[n % len(args.urls)]
            n += 1
            start = time.monotonic()
            failure = one(url)
            ms = (time.monotonic() - start) * 1000
            with lock:
                latencies.append(ms)
                if failure:
                    failures[failure] = failures.get(failure, 0) + 1
                    if len(examples) < 5:
                        examples.append("%s %s after %.0f ms" % (url, failure, ms))
            if args.interval:
                time.sleep(args.interval)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0
    p50 = latencies[len(latencies) // 2] if latencies else 0
    print(json.dumps({
        "sent": len(latencies),
        "failed": sum(failures.values()),
        "failures": failures,
        "examples": examples,
        "max_ms": round(latencies[-1], 1) if latencies else 0,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
    }))


if __name__ == "__main__":
    main()
