#!/usr/bin/env python3
"""Floods an HTTP(S) endpoint with idle and slowloris connections while a paced prober asks
/health on new connections; samples the service's threads and its established connections.

Used by tests/support/front-flood.sh (which documents the figures); standard library only.

  front_flood.py flood --url URL [--connect IP] [--cacert FILE] --service-port PORT
                       [--service-pid PID] [--idle N] [--slow N] [--seconds S] [--rate R]
  front_flood.py hold ...   (internal: the flood itself, in its own process)

Every loop is bounded by --seconds; the run stops by itself.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse


def target(args):
    u = urllib.parse.urlsplit(args.url)
    if u.scheme not in ("http", "https") or not u.hostname:
        sys.exit(f"front_flood.py: --url must be http(s)://HOST[:PORT]/PATH, got {args.url!r}")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = args.connect or u.hostname
    path = u.path or "/health"
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=args.cacert) if args.cacert else ssl.create_default_context()
        ctx.set_alpn_protocols(["http/1.1"])
    return host, port, u.hostname, path, ctx


def request(name, path):
    return f"GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: front-flood\r\n\r\n".encode()


async def read_response(r):
    """Reads one response with Content-Length; returns its status code."""
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if length:
        await r.readexactly(length)
    return status


async def hold(args):
    host, port, name, path, ctx = target(args)
    stop_at = None
    st = {"idle_tried": 0, "idle_open": 0, "idle_failed": 0, "idle_closed": 0, "slow_open": 0, "slow_cut": 0,
          "slow_failed": 0, "idle_non2xx": 0}
    gate = asyncio.Semaphore(args.concurrency)
    done = asyncio.Event()
    writers = []

    async def idle_one():
        # Held open: reopened whenever the other side closes it (an idle timeout, a restart),
        # so the flood stays at N connections however long it lasts.
        first = True
        while not done.is_set():
            try:
                async with gate:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection(host, port, ssl=ctx, server_hostname=name if ctx else None), 20)
                    writers.append(w)
                    w.write(request(name, path))
                    await w.drain()
                    status = await asyncio.wait_for(read_response(r), 20)
                    if not 200 <= status < 300:
                        st["idle_non2xx"] += 1
            except Exception:
                st["idle_failed"] += 1
                if first:
                    st["idle_tried"] += 1
                    first = False
                await asyncio.sleep(1)
                continue
            if first:
                st["idle_tried"] += 1
                first = False
            st["idle_open"] += 1
            try:
                await r.read(1)  # b"" when the other side closes
            except Exception:
                pass
            st["idle_open"] -= 1
            if not done.is_set():
                st["idle_closed"] += 1
                w.close()

    async def slow_one():
        while not done.is_set():
            opened = False
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname=name if ctx else None), 20)
                writers.append(w)
                w.write(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n".encode())
                await w.drain()
                opened = True
                st["slow_open"] += 1
                reader = asyncio.ensure_future(r.read(1))
                while not done.is_set():
                    finished, _ = await asyncio.wait({reader}, timeout=args.slow_interval)
                    if finished:
                        break
                    w.write(b"X-Slow: 1\r\n")  # one more header line, never the blank one
                    await w.drain()
                reader.cancel()
                w.close()
            except Exception:
                if not opened:
                    st["slow_failed"] += 1
                    await asyncio.sleep(0.5)
            if opened:
                st["slow_open"] -= 1
                if not done.is_set():
                    st["slow_cut"] += 1

    tasks = [asyncio.ensure_future(slow_one()) for _ in range(args.slow)]
    tasks += [asyncio.ensure_future(idle_one()) for _ in range(args.idle)]
    t0 = time.monotonic()
    deadline = t0 + args.seconds + 120  # set-up may take a while, never forever
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        settled = st["idle_tried"] >= args.idle
        if settled and stop_at is None:
            stop_at = time.monotonic() + args.seconds
            print(json.dumps({"event": "established", "t": round(time.monotonic() - t0, 1), **st}), flush=True)
        print(json.dumps({"t": round(time.monotonic() - t0, 1), **st}), flush=True)
        if stop_at is not None and time.monotonic() >= stop_at:
            break
    done.set()
    for w in writers:
        try:
            w.transport.abort()
        except Exception:
            pass
    for t in tasks:
        t.cancel()
    print(json.dumps({"event": "end", **st}), flush=True)


def probe_once(host, port, name, path, ctx, timeout):
    t0 = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl does
        try:
            if ctx:
                s = ctx.wrap_socket(s, server_hostname=name)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        return time.monotonic() - t0, status, None
    except Exception as e:
        return time.monotonic() - t0, 0, type(e).__name__


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def threads_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None


def service_pid(port):
    """The process listening on port: with socket activation systemd holds the socket too
    (users:(("server",pid=812,fd=3),("systemd",pid=1,fd=40))), so not systemd when another is there."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    users = re.findall(r'\("([^"]*)",pid=(\d+),', out)
    for name, pid in users:
        if name != "systemd":
            return int(pid)
    return int(users[0][1]) if users else None


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024)
    except (OSError, TypeError):
        return None


def established_to(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def flood(args):
    host, port, name, path, ctx = target(args)
    pid0 = args.service_pid or service_pid(args.service_port)
    front_pid = service_pid(port) if ctx else None  # the front's process, when it is visible here
    me = [sys.executable, os.path.abspath(__file__), "hold"] + sys.argv[2:]
    holder = subprocess.Popen(me, stdout=subprocess.PIPE, text=True)
    established = threading.Event()
    last = {}

    def read_holder():
        for line in holder.stdout:
            ev = json.loads(line)
            last.update(ev)
            if ev.get("event") == "established":
                established.set()
        established.set()

    threading.Thread(target=read_holder, daemon=True).start()
    t_setup = time.monotonic()
    established.wait(args.seconds + 130)
    setup_s = time.monotonic() - t_setup
    at_start = dict(last)

    results = []
    lock = threading.Lock()

    def one():
        res = probe_once(host, port, name, path, ctx, args.probe_timeout)
        with lock:
            results.append(res)

    samples = []
    pids = set()
    threads = []
    t0 = time.monotonic()
    n = int(args.seconds * args.rate)
    next_sample = t0
    for i in range(n):
        at = t0 + i / args.rate
        while True:
            now = time.monotonic()
            if now >= next_sample:
                pid = args.service_pid or service_pid(args.service_port)
                if pid:
                    pids.add(pid)
                samples.append((threads_of(pid) if pid else None, established_to(args.service_port),
                                rss_mb(front_pid) if front_pid else None))
                next_sample += 1.0
            if now >= at:
                break
            time.sleep(min(at - now, 0.01))
        th = threading.Thread(target=one)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    holder.wait(timeout=60)
    lat = [r[0] * 1000 for r in results if r[2] is None and 200 <= r[1] < 300]
    errors = {}
    for r in results:
        if r[2] is not None or not 200 <= r[1] < 300:
            k = r[2] or f"HTTP {r[1]}"
            errors[k] = errors.get(k, 0) + 1
    thr = [s[0] for s in samples if s[0] is not None]
    conns = [s[1] for s in samples]
    front_rss = [s[2] for s in samples if s[2] is not None]
    pid1 = args.service_pid or service_pid(args.service_port)
    print(json.dumps({
        "url": args.url, "setup_s": round(setup_s, 1),
        "idle_open_at_start": at_start.get("idle_open"), "idle_failed": last.get("idle_failed"),
        "idle_open_at_end": last.get("idle_open"), "idle_closed": last.get("idle_closed"),
        "slow_open_at_start": at_start.get("slow_open"), "slow_cut": last.get("slow_cut"),
        "probes": len(results), "failed": sum(errors.values()), "errors": errors,
        "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "service_threads_max": max(thr) if thr else None, "service_threads_min": min(thr) if thr else None,
        "service_conns_max": max(conns) if conns else None,
        "front_rss_mb_max": max(front_rss) if front_rss else None,
        "service_pid_before": pid0, "service_pid_after": pid1, "service_pids_seen": sorted(pids),
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["flood", "hold"])
    p.add_argument("--url", required=True)
    p.add_argument("--connect", help="IP to connect to instead of resolving the URL's host")
    p.add_argument("--cacert")
    p.add_argument("--service-port", type=int, required=True)
    p.add_argument("--service-pid", type=int)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--slow-interval", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--probe-timeout", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=200)
    args = p.parse_args()
    if args.mode == "hold":
        asyncio.run(hold(args))
    else:
        flood(args)


if __name__ == "__main__":
    main()
