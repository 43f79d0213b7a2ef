"""Relayed HTTP through hyrelay against the same app served directly and behind nginx.

    .venv/bin/python bench/http_bench.py            # 3 interleaved rounds + 1 GiB streams (a few minutes)
    .venv/bin/python bench/http_bench.py --quick    # 1 short round, 64 MiB streams (about 35 s)
    .venv/bin/python bench/http_bench.py --profile  # perf, strace and cProfile of the relay and listeners
    .venv/bin/python bench/http_bench.py --instructions  # instructions per request under callgrind (noise-free)

Request rate: wrk (-t1 -c64, keep-alive, --latency) for a small GET and a 4 KiB POST, against
* direct:  the aiohttp origin app (bench/http_servers.py app);
* nginx:   nginx (1 worker, upstream keep-alive, no buffering) proxying to that app;
* relay:   hyrelay (`python -m hyrelay serve`) -> SDK listener (`python -m hyrelay expose --to
           http://app`, i.e. ProxyHandler) -> that app: the path comparable with nginx;
* native:  hyrelay -> SDK listener answering in its own request_handler (no origin behind it);
* solo (full run only, informational): native again, but with the relay alone on the serving CPU
           and its listener next to wrk, which shows what the relay process can do by itself.

Streams: 1 GiB uploaded (chunked POST, discarded by the receiver) and downloaded (streamed GET),
through the relay to the in-listener handler (request and response go by rendezvous), with the
relay's and the listener's peak memory growth (VmHWM after - VmRSS before, VmHWM reset through
/proc/<pid>/clear_refs); direct and nginx for comparison.

CPU placement (2 CPUs): the load generator (wrk, or the streaming client) alone on one CPU; every
serving process (app, nginx, relay, listener) on the other. So each path gets the same single
core to serve with, and requests/s compare what each path costs per request. Server CPU per
request, per process, comes from /proc/<pid>/stat over the measured window.

Instructions (--instructions): the user-space instructions each serving process executes per
request, counted by valgrind's callgrind over a measured window, for the direct app, the relay and
the in-listener handler. The host's noise does not move these counts (it moves the rates above by
up to 1.5x), so they compare code changes; they leave out the kernel's share and cache effects.

A benchmark, not a test: it always exits 0; PASS/MISS next to a target is informational.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import relay_bench as rb  # child handling, quiet-host wait, medians, machine info
from _load import proc_cpu, system_busy

PY = sys.executable
CONNS = 64
POST_SIZE = 4096
HELLO = b"Hello, world!\n"
TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
TARGET_MEM_MIB = 64.0

#: warm: seconds of wrk before the first measurement of each path and workload (quick: of each path).
FULL = dict(runs=3, warm=1, warm_once=False, secs=4, retries=1, quiet_wait=5.0, stream_bytes=1 << 30,
            stream_runs=3, solo=True)
QUICK = dict(runs=1, warm=1, warm_once=True, secs=2, retries=0, quiet_wait=0.25, stream_bytes=64 << 20,
             stream_runs=1, solo=False)

#: (key, label, path, lua body or None)
TESTS = [("get", "GET /hello (14 B answer)", "/hello", None),
         ("post", f"POST /upload ({POST_SIZE // 1024} KiB body, 20 B answer)", "/upload", POST_SIZE)]
TARGETS = ["direct", "nginx", "relay", "native"]
TARGET_NAMES = {"direct": "direct (aiohttp app)", "nginx": "nginx → app",
                "relay": "hyrelay → listener (ProxyHandler) → app", "native": "hyrelay → in-listener handler",
                "solo": "hyrelay → in-listener handler, relay alone on its CPU"}

SERVE_CPU, LOAD_CPU = rb.SERVER_CPU, rb.CLIENT_CPU
note = rb.note
#: Set when something failed: the child processes' logs in rb._logdir are kept.
KEEP_LOGS = False


def warn(msg: str) -> None:
    global KEEP_LOGS
    KEEP_LOGS = True
    note(msg)


# -- child processes ----------------------------------------------------------------------------
#: Command prefixes by child name (see under_callgrind): how the next such child is started.
_WRAP: dict[str, list[str]] = {}


class Child:
    """A serving process pinned to the serving CPU, registered with relay_bench's cleanup."""

    def __init__(self, name: str, argv: list[str], ready: str | None, timeout: float = 60.0,
                 cpu: int | None = None) -> None:
        if name in _WRAP:
            argv, timeout = _WRAP[name] + argv, max(timeout, 180.0)
        self.name = name
        self.log = rb._logdir / f"http-{name}-{len(rb._children)}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, start_new_session=True,
                                         preexec_fn=rb._pin(SERVE_CPU if cpu is None else cpu))
        rb._children.append(self.proc)
        self.pid = self.proc.pid
        self.line = ""
        if ready is not None:
            self.line = self._wait_line(ready, timeout)

    def _wait_line(self, marker: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            if marker in line:
                return line.strip()
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def pids(self) -> list[int]:
        """This process and its children (nginx's workers)."""
        pids = [self.pid]
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{tid}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                total += proc_cpu(pid)
            except OSError:
                pass
        return total

    def stop(self) -> None:
        rb.stop_child(self.proc, 20)


def _cprofile(out: str | None) -> list[str]:
    return ["-m", "cProfile", "-o", out] if out else []


def start_app(cpu: int | None = None) -> tuple[Child, int]:
    app = Child("app", [PY, str(HERE / "http_servers.py"), "app"], ready='"port"', cpu=cpu)
    return app, json.loads(app.line)["port"]


class Relay:
    """`python -m hyrelay serve` on a fresh data dir with HCs proxy and native (no sender auth)."""

    def __init__(self, profile: str | None = None, cpu: int | None = None) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="http-bench-relay-"))
        for hc in ("proxy", "native"):
            made = subprocess.run([PY, "-m", "hyrelay", "hc", "create", hc, "--data-dir", str(self.data),
                                   "--no-client-auth"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
            if made.returncode != 0:
                shutil.rmtree(self.data, ignore_errors=True)
                raise RuntimeError(f"`hyrelay hc create {hc}` failed: {made.stderr.strip()[-1500:]}")
        try:
            self.child = Child("relay", [PY, *_cprofile(profile), "-m", "hyrelay", "serve", "--port", "0",
                                         "--data-dir", str(self.data), "--log-level", "WARNING"],
                               ready="connection string:", cpu=cpu)
        except BaseException:
            shutil.rmtree(self.data, ignore_errors=True)
            raise
        self.cs = self.child.line.split("connection string:", 1)[1].strip()
        self.port = int(re.search(r"listening on http://[^:]+:(\d+)", self.child.line).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        self.child.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def start_proxy_listener(relay: Relay, app_port: int, listeners: int, profile: str | None = None) -> Child:
    return Child("listener", [PY, *_cprofile(profile), "-m", "hyrelay", "expose", "--to", f"http://127.0.0.1:{app_port}",
                            relay.cs, "--hc", "proxy", "--listeners", str(listeners), "--log-level", "WARNING"],
                 ready="http")


def start_native_listener(relay: Relay, listeners: int, profile: str | None = None,
                          cpu: int | None = None) -> Child:
    extra = ["--profile", profile] if profile else []
    return Child("listener", [PY, str(HERE / "http_servers.py"), "listener", relay.cs, "--hc", "native",
                              "--listeners", str(listeners), *extra], ready='"pid"', cpu=cpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream app {{
        server 127.0.0.1:{app_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream both ways, as the relay does, reading in 64 KiB pieces as the relay does.
            proxy_request_buffering off;
            proxy_buffering off;
            client_body_buffer_size 64k;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
}}
"""


class Nginx:
    """nginx with a generated config in a temp dir, in the foreground, proxying to the app."""

    def __init__(self, app_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="http-bench-nginx-"))
        os.chmod(self.dir, 0o755)
        last = ""
        for _ in range(3):  # the free port may be taken between our probe and nginx's bind
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=self.dir, app_port=app_port, port=self.port))
            self.child = Child("nginx", ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log"),
                                         "-g", "daemon off;"], ready=None)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.child.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.05)
            last = (self.dir / "error.log").read_text(errors="replace") if (self.dir / "error.log").exists() else ""
            self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"nginx did not start: {last[-1500:]}")

    def stop(self) -> None:
        self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- checks -------------------------------------------------------------------------------------
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check(base: str) -> None:
    """Both routes answer what the app answers, before anything is measured."""
    with _OPENER.open(f"{base}/hello", timeout=10) as r:
        body = r.read()
        if r.status != 200 or body != HELLO:
            raise RuntimeError(f"GET {base}/hello answered {r.status} {body[:100]!r}")
    req = urllib.request.Request(f"{base}/upload", data=b"x" * POST_SIZE, method="POST")
    with _OPENER.open(req, timeout=10) as r:
        body = r.read()
        if r.status != 200 or body != b"received %d bytes\n" % POST_SIZE:
            raise RuntimeError(f"POST {base}/upload answered {r.status} {body[:100]!r}")


# -- wrk ----------------------------------------------------------------------------------------
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration, summary.bytes, e.connect,
    e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_script(post: int | None) -> Path:
    path = rb._logdir / f"wrk-{'post' if post else 'get'}.lua"
    head = ""
    if post:
        head = (f'wrk.method = "POST"\nwrk.body = string.rep("x", {post})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    path.write_text(head + LUA_DONE)
    return path


def _tool(argv: list[str]) -> subprocess.Popen:
    """A helper process on the load CPU, registered for cleanup."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=rb._pin(LOAD_CPU))
    rb._children.append(p)
    return p


def _finish(p: subprocess.Popen, interrupt: bool = False, timeout: float = 120) -> tuple[str, str]:
    """Its output, once it ends (killed after *timeout*); *interrupt*: SIGINT it first."""
    if interrupt and p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    if p in rb._children:
        rb._children.remove(p)
    return out.decode(errors="replace"), err.decode(errors="replace")


def wrk(url: str, secs: int, post: int | None, procs: list[Child]) -> dict | None:
    """One wrk run; with the CPU every serving process, wrk and everyone else used meanwhile."""
    argv = ["wrk", "-t1", f"-c{CONNS}", f"-d{secs}s", "--latency", "-s", str(lua_script(post)), url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0 = [p.cpu() for p in procs]
    b0 = system_busy()[0]
    t0 = time.perf_counter()
    p = _tool(argv)
    text, err = _finish(p, timeout=secs + 60)
    dt = time.perf_counter() - t0
    c1 = [p.cpu() for p in procs]
    busy = system_busy()[0] - b0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"WRKJSON (\{.*\})", text)
    if p.returncode != 0 or not m:
        warn(f"  ! wrk {url} failed (rc={p.returncode}): {err[-500:]} {text[-500:]}")
        return None
    r = json.loads(m.group(1))
    secs_ = r["duration_us"] / 1e6
    client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    server = {proc.name: b - a for proc, a, b in zip(procs, c0, c1)}
    r.update(secs=secs_, rps=r["requests"] / secs_, errors=r["connect"] + r["read"] + r["write"] + r["status"]
             + r["timeout"], server_cpu=server, client_cpu=client,
             other_cpu=max(0.0, busy - sum(server.values()) - client), wall=dt)
    return r


def measure(url: str, secs: int, post: int | None, procs: list[Child], cfg: dict, label: str) -> dict | None:
    """A wrk run on a quiet host if possible: noisy runs are retried, the quietest is kept."""
    best = None
    for attempt in range(cfg["retries"] + 1):
        rb.wait_quiet(cfg["quiet_wait"])
        r = wrk(url, secs, post, procs)
        if r is None:
            continue
        r["attempts"] = attempt + 1
        if r["requests"] == 0:
            warn(f"  ! {label}: no request completed; retrying")
            continue
        bg = r["other_cpu"] / r["secs"]
        if best is None or bg < best["other_cpu"] / best["secs"]:
            best = r
        if bg < rb.QUIET:
            break
    return best


# -- request-rate rounds ------------------------------------------------------------------------
def run_rounds(cfg: dict, listeners: int, res: rb.Results) -> None:
    with contextlib.ExitStack() as stack:  # stops (and deletes the temp dirs of) what started, last first
        app, app_port = start_app()
        stack.callback(app.stop)
        nginx = Nginx(app_port)
        stack.callback(nginx.stop)
        relay = Relay()
        stack.callback(relay.stop)
        proxy = start_proxy_listener(relay, app_port, listeners)
        stack.callback(proxy.stop)
        native = start_native_listener(relay, listeners)
        stack.callback(native.stop)
        # Informational: the relay's own ceiling. A second relay alone on the serving CPU, its
        # listener on the load generator's CPU (so the relay is the bottleneck).
        solo = solo_listener = None
        if cfg["solo"]:
            solo = Relay()
            stack.callback(solo.stop)
            solo_listener = start_native_listener(solo, listeners, cpu=LOAD_CPU)
            stack.callback(solo_listener.stop)
        bases = {"direct": f"http://127.0.0.1:{app_port}", "nginx": f"http://127.0.0.1:{nginx.port}",
                 "relay": f"http://127.0.0.1:{relay.port}/proxy", "native": f"http://127.0.0.1:{relay.port}/native"}
        procs = {"direct": [app], "nginx": [nginx.child, app], "relay": [relay.child, proxy, app],
                 "native": [relay.child, native]}
        targets = list(TARGETS)
        if solo is not None and solo_listener is not None:
            bases["solo"] = f"http://127.0.0.1:{solo.port}/native"
            procs["solo"] = [solo.child, solo_listener]
            targets.append("solo")
        for t in targets:
            check(bases[t])
        for rnd in range(cfg["runs"]):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            note(f"round {rnd + 1}/{cfg['runs']}")
            for key, _label, path, post in TESTS:
                for t in order:
                    url = bases[t] + path
                    if rnd == 0 and cfg["warm"] and (key == TESTS[0][0] or not cfg["warm_once"]):
                        wrk(url, cfg["warm"], post, procs[t])
                    r = measure(url, cfg["secs"], post, procs[t], cfg, f"{key} {t}")
                    res.add(key, t, r)
                    if r:
                        per = " ".join(f"{n} {v / r['requests'] * 1e6:.0f}" for n, v in r["server_cpu"].items())
                        note(f"  {key:<4} {t:<6} {r['rps']:9,.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  "
                             f"p99 {r['p99_us'] / 1e3:6.2f} ms  errors {r['errors']}  server µs/req: {per}  "
                             f"wrk {r['client_cpu'] / r['secs']:.2f} other {r['other_cpu'] / r['secs']:.2f} "
                             f"(try {r['attempts']})")


# -- streams ------------------------------------------------------------------------------------
def vm(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def stream_client(spec: dict, timeout: float) -> dict | None:
    p = _tool([PY, str(HERE / "http_stream.py"), json.dumps(spec)])
    out, err = _finish(p, timeout=timeout)
    if p.returncode != 0 or not out.strip():
        warn(f"  ! stream {spec['mode']} {spec['url']} failed (rc={p.returncode}): "
             f"{err[-600:]}")
        return None
    return json.loads(out.strip().splitlines()[-1])


def one_stream(mode: str, url: str, size: int, watch: list[Child], cfg: dict) -> dict | None:
    """Stream once; peak memory growth of each watched process (VmHWM after - VmRSS before)."""
    rb.wait_quiet(min(cfg["quiet_wait"], 2.0))
    resets = [reset_hwm(c.pid) for c in watch]  # every one: no short-circuit
    resettable = all(resets)
    before = {c.name: vm(c.pid) for c in watch}
    c0 = [c.cpu() for c in watch]
    r = stream_client({"mode": mode, "url": url, "bytes": size}, timeout=600)
    if r is None:
        return None
    r["server_cpu"] = {c.name: b - a for c, a, b in zip(watch, c0, [c.cpu() for c in watch])}
    r["mem"] = {}
    for c in watch:
        after = vm(c.pid)
        r["mem"][c.name] = {"rss0": before[c.name]["VmRSS"], "hwm": after["VmHWM"], "rss1": after["VmRSS"],
                            "growth": after["VmHWM"] - before[c.name]["VmRSS"], "reset": resettable}
    r["mbps"] = r["bytes"] / r["secs"] / 1e6
    return r


class RelayPair:
    """A relay and the in-listener-handler SDK listener on it."""

    def __init__(self, listeners: int) -> None:
        self.listeners = listeners
        self.relay, self.listener = self._start()

    def _start(self) -> tuple[Relay, Child]:
        relay = Relay()
        try:
            return relay, start_native_listener(relay, self.listeners)
        except BaseException:
            relay.stop()
            raise

    @property
    def watch(self) -> list[Child]:
        return [self.relay.child, self.listener]

    def renew(self) -> None:
        self.stop()
        self.relay, self.listener = self._start()

    def stop(self) -> None:
        self.listener.stop()
        self.relay.stop()


def run_streams(cfg: dict, listeners: int, res: rb.Results) -> None:
    size = cfg["stream_bytes"]
    with contextlib.ExitStack() as stack:
        app, app_port = start_app()
        stack.callback(app.stop)
        nginx = Nginx(app_port)
        stack.callback(nginx.stop)
        pair = RelayPair(listeners)
        stack.callback(pair.stop)
        # Without a resettable VmHWM, each relayed stream gets fresh processes (their peak is then
        # their start-up's or the stream's, whichever is higher).
        fresh = not reset_hwm(pair.relay.child.pid)
        note(f"streams: {size / (1 << 20):,.0f} MiB each way")
        for _ in range(cfg["stream_runs"]):
            for mode, path in (("upload", "/sink"), ("download", "/blob")):
                for t in ("direct", "nginx", "native"):
                    if t == "native":
                        if fresh:
                            pair.renew()
                        base, watch = f"http://127.0.0.1:{pair.relay.port}/native", pair.watch
                    else:
                        base = f"http://127.0.0.1:{app_port if t == 'direct' else nginx.port}"
                        watch = [app] if t == "direct" else [nginx.child, app]
                    r = one_stream(mode, base + path, size, watch, cfg)
                    res.add(f"stream {mode}", t, r)
                    if r:
                        mem = " ".join(f"{n} +{m['growth'] / (1 << 20):.1f} MiB" for n, m in r["mem"].items())
                        cpu = " ".join(f"{n} {v / r['secs']:.2f}" for n, v in r["server_cpu"].items())
                        note(f"  {mode:<8} {t:<6} {r['mbps']:8.0f} MB/s  {'ok' if r['ok'] else 'WRONG: ' + str(r)[:200]}"
                             f"  peak growth: {mem}  cpu (cores): {cpu} client {r['client_cpu'] / r['secs']:.2f}")


# -- report -------------------------------------------------------------------------------------
fmt, med, verdict = rb.fmt, rb.med, rb.verdict


def table(res: rb.Results, cfg: dict, listeners: int) -> str:
    out = [f"| workload, {CONNS} connections | " + " | ".join(TARGET_NAMES[t] for t in TARGETS)
           + " | nginx ÷ direct | relay ÷ direct | in-listener ÷ direct | target | ProxyHandler | in-listener |",
           "|---|" + "---:|" * len(TARGETS) + "---:|---:|---:|---|---|---|"]
    spreads: list[float] = []
    for key, label, _path, _post in TESTS:
        rps = lambda r: r["rps"]
        vals = {t: res.values(key, t, rps) for t in TARGETS}
        spreads += [rb.spread(v) for v in vals.values() if len(v) > 1]
        ratios = {t: res.ratio(key, rps, t, "direct") for t in ("nginx", "relay", "native")}
        oks = " | ".join(verdict(None if math.isnan(ratios[t]) else ratios[t] >= TARGET_RATIO)
                         for t in ("relay", "native"))
        out.append(f"| {label}: requests/s | " + " | ".join(fmt(med(vals[t])) for t in TARGETS) + " | "
                   + " | ".join(fmt(ratios[t], 2) + "×" for t in ("nginx", "relay", "native"))
                   + f" | ≥ {TARGET_RATIO}× direct | {oks} |")
        for q in ("p50", "p99"):
            lat = {t: med(res.values(key, t, lambda r, q=q: r[f"{q}_us"] / 1e3)) for t in TARGETS}
            oks = " | ".join(verdict(None if math.isnan(lat[t]) else lat[t] <= TARGET_P99_MS) for t in ("relay", "native"))
            out.append(f"| {label}: {q} latency, ms | " + " | ".join(fmt(lat[t], 2) for t in TARGETS) + " | "
                       + " | ".join(fmt(lat[t] / lat["direct"], 1) + "×" for t in ("nginx", "relay", "native"))
                       + (f" | ≤ {TARGET_P99_MS:g} ms | {oks} |" if q == "p99" else " | — | | |"))
    # Where the serving core's time goes.
    out += ["", ("Serving CPU per request, µs (utime+stime of each serving process over the measured window, "
            "÷ requests; they all share one core):"), "",
            "| workload | " + " | ".join(TARGET_NAMES[t] for t in TARGETS) + " |",
            "|---|" + "---|" * len(TARGETS)]
    for key, label, _path, _post in TESTS:
        cells = []
        for t in TARGETS:
            rs = [r for r in res.raw.get(key, {}).get(t, []) if r]
            if not rs:
                cells.append("n/a")
                continue
            names = list(rs[0]["server_cpu"])
            parts = [f"{n} {fmt(med([r['server_cpu'][n] / r['requests'] * 1e6 for r in rs]))}" for n in names]
            total = fmt(med([sum(r["server_cpu"].values()) / r["requests"] * 1e6 for r in rs]))
            cells.append(f"{total} = " + " + ".join(parts) if len(names) > 1 else total)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    util = lambda r: sum(r["server_cpu"].values()) / r["secs"]
    out += ["", "Utilisation in the measured window (cores): serving processes / wrk / other processes (noise):", "",
            "| workload | " + " | ".join(TARGET_NAMES[t] for t in TARGETS) + " |", "|---|" + "---:|" * len(TARGETS)]
    for key, label, _path, _post in TESTS:
        out.append(f"| {label} | " + " | ".join(
            " / ".join(fmt(med(res.values(key, t, f)), 2) for f in
                       (util, lambda r: r["client_cpu"] / r["secs"], lambda r: r["other_cpu"] / r["secs"]))
            for t in TARGETS) + " |")
    if any(res.raw.get(k, {}).get("solo") for k, *_ in TESTS):
        out += ["", f"The relay's own ceiling: {TARGET_NAMES['solo']} (the listener and wrk share the other CPU):", "",
                ("| workload | requests/s | ÷ direct | p99 latency, ms | relay CPU µs per request | relay utilisation |"
                " listener utilisation |"), "|---|---:|---:|---:|---:|---:|---:|"]
        for key, label, _path, _post in TESTS:
            rs = [r for r in res.raw.get(key, {}).get("solo", []) if r]
            if not rs:
                continue
            out.append(f"| {label} | {fmt(med([r['rps'] for r in rs]))} | "
                       f"{fmt(res.ratio(key, lambda r: r['rps'], 'solo', 'direct'), 2)}× | "
                       f"{fmt(med([r['p99_us'] / 1e3 for r in rs]), 2)} | "
                       f"{fmt(med([r['server_cpu']['relay'] / r['requests'] * 1e6 for r in rs]))} | "
                       f"{fmt(med([r['server_cpu']['relay'] / r['secs'] for r in rs]), 2)} | "
                       f"{fmt(med([r['server_cpu']['listener'] / r['secs'] for r in rs]), 2)} |")
    errors = {t: sum(r["errors"] for k, *_ in TESTS for r in res.raw.get(k, {}).get(t, []) if r) for t in TARGETS}
    out += ["", f"Runs per figure: {cfg['runs']} × {cfg['secs']} s (median; ratios are medians of per-round "
            f"ratios). Median run-to-run spread of requests/s (max−min)/median: "
            f"{fmt(med(spreads) * 100, 0) + '%' if spreads else 'n/a (one run)'}. wrk errors (socket or non-2xx): "
            + ", ".join(f"{t} {errors[t]}" for t in TARGETS) + f". SDK listeners: {listeners} control channel(s) "
            "per listener process."]

    # Streams.
    size = cfg["stream_bytes"]
    label = f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size / (1 << 20):g} MiB"
    out += ["", (f"| {label} stream, 1 connection | direct MB/s | nginx MB/s | hyrelay MB/s (in-listener handler, "
            "rendezvous) | relay peak memory growth | listener peak memory growth | target | |"),
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for mode in ("upload", "download"):
        key = f"stream {mode}"
        mb = {t: med(res.values(key, t, lambda r: r["mbps"])) for t in ("direct", "nginx", "native")}
        # The largest growth of any run, not the median: the target is a bound.
        growth = {n: max([v for v in res.values(key, "native", lambda r, n=n: r["mem"][n]["growth"] / (1 << 20))
                          if not math.isnan(v)], default=float("nan")) for n in ("relay", "listener")}
        rs = [r for r in res.raw.get(key, {}).get("native", []) if r]
        intact = all(r["ok"] for r in rs) if rs else None
        ok = None if math.isnan(growth["relay"]) else growth["relay"] <= TARGET_MEM_MIB and bool(intact)
        what = "chunked POST, discarded" if mode == "upload" else "streamed GET"
        out.append(f"| {mode} ({what}) | {fmt(mb['direct'])} | {fmt(mb['nginx'])} | {fmt(mb['native'])} | "
                   f"{fmt(growth['relay'], 1)} MiB | {fmt(growth['listener'], 1)} MiB | relay ≤ {TARGET_MEM_MIB:g} MiB"
                   f" | {verdict(ok)} |")
    checks = [r for k in ("stream upload", "stream download") for t in ("direct", "nginx", "native")
              for r in res.raw.get(k, {}).get(t, []) if r]
    resets = [m["reset"] for r in checks for m in r["mem"].values()]
    out += ["", (f"Streams: {cfg['stream_runs']} per direction and target (MB/s: median; memory: the largest "
            f"growth of any run). Every stream delivered exactly {size:,} bytes: "
            f"{'yes' if checks and all(r['ok'] for r in checks) else 'NO'}. Peak growth = VmHWM after − VmRSS "
            f"before; VmHWM reset via /proc/<pid>/clear_refs: {'yes' if resets and all(resets) else 'no (fresh processes)'}.")]
    return "\n".join(out)


# -- profiling ----------------------------------------------------------------------------------
class ServersRelay(Relay):
    """bench/http_servers.py's RelayServer runner (what `hyrelay serve` runs), optionally under cProfile."""

    def __init__(self, profile: str | None = None, cpu: int | None = None) -> None:
        self.data = None  # type: ignore[assignment]
        extra = ["--profile", profile] if profile else []
        self.child = Child("relay", [PY, str(HERE / "http_servers.py"), "relay", *extra], ready='"cs"', cpu=cpu)
        info = json.loads(self.child.line)
        self.cs, self.port = info["cs"], info["port"]

    def stop(self) -> None:
        self.child.stop()


def servers_listener(relay: Relay, target: str, app_port: int, listeners: int, profile: str | None = None,
                     cpu: int | None = None) -> Child:
    to = ["--to", f"http://127.0.0.1:{app_port}"] if target == "relay" else []
    extra = ["--profile", profile] if profile else []
    return Child("listener", [PY, str(HERE / "http_servers.py"), "listener", relay.cs, "--hc",
                              "proxy" if target == "relay" else "native", "--listeners", str(listeners), *to, *extra],
                 ready='"pid"', cpu=cpu)


def perf_and_syscalls(cfg: dict, listeners: int) -> None:
    """Without cProfile, in the benchmark's layout: where each process's CPU goes by library
    (`perf record`: kernel, CPython, uvloop, ...) and its system calls per request (`strace -c`)."""
    for target in ("relay", "native"):
        for key, _label, path, post in TESTS:
            with contextlib.ExitStack() as stack:
                app, app_port = start_app()
                stack.callback(app.stop)
                relay = ServersRelay()
                stack.callback(relay.stop)
                lst = servers_listener(relay, target, app_port, listeners)
                stack.callback(lst.stop)
                procs = [relay.child, lst] + ([app] if target == "relay" else [])
                base = f"http://127.0.0.1:{relay.port}/{'proxy' if target == 'relay' else 'native'}"
                print(f"\n## {TARGET_NAMES[target]}, {key.upper()} at {CONNS} connections: perf and strace\n")
                check(base)
                wrk(base + path, 1, post, [])  # warm-up
                out = rb._logdir / f"perf-{target}-{key}.data"
                perf = _tool(["perf", "record", "-F", "1999", "-o", str(out), "-p",
                              ",".join(str(c.pid) for c in procs), "--", "sleep", str(max(1, cfg["secs"] - 1))]) \
                    if shutil.which("perf") else None
                r = wrk(base + path, cfg["secs"], post, procs)
                if r:
                    print(f"{r['rps']:,.0f} req/s; CPU µs per request: "
                          + ", ".join(f"{n} {v / r['requests'] * 1e6:.0f}" for n, v in r["server_cpu"].items()))
                if perf is not None:
                    _finish(perf)
                    rep = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "--sort", "pid,dso",
                                          "--percent-limit", "1"], capture_output=True, text=True, timeout=120,
                                         check=False).stdout
                    print(f"\nperf samples by process and library (relay {relay.child.pid}, listener {lst.pid}, "
                          f"app {app.pid}):\n\n```")
                    print("\n".join(line for line in rep.splitlines() if line.strip() and not line.startswith("#")))
                    print("```")
                if shutil.which("strace"):
                    for c in procs:
                        st = _tool(["strace", "-c", "-f", "-p", str(c.pid)])
                        time.sleep(0.5)
                        r = wrk(base + path, 2, post, [])
                        time.sleep(0.2)
                        _, err = _finish(st, interrupt=True)
                        if not r:
                            continue
                        rows = []
                        for line in err.splitlines():
                            f = line.split()
                            if len(f) >= 5 and f[0].replace(".", "").isdigit() and f[-1] not in ("total",):
                                calls = int(f[3]) if f[3].isdigit() else 0
                                if calls / r["requests"] >= 0.05:
                                    rows.append(f"{f[-1]} {calls / r['requests']:.2f}")
                        print(f"\nstrace -c, {c.name}: system calls per request ({r['requests']:,} requests under "
                              f"strace): " + ", ".join(rows))


def profile(cfg: dict, listeners: int) -> None:
    """cProfile of the relay and of the listener, each alone on the serving CPU.

    Everything else (the other hops and wrk) runs on the other CPU: the profiled process is then
    never preempted by the next hop, so cProfile's wall clock (cheap, unlike a CPU-time clock)
    charges each call only its own run time; idle time lands in the event loop (runners.run).
    """
    import pstats

    perf_and_syscalls(cfg, listeners)
    for target in ("relay", "native"):
        for who in ("relay", "listener"):
            key, _label, path, post = TESTS[0]
            prof = str(rb._logdir / f"{who}-{target}-{key}.prof")
            with contextlib.ExitStack() as stack:
                app, app_port = start_app(cpu=LOAD_CPU)
                stack.callback(app.stop)
                relay = ServersRelay(profile=prof if who == "relay" else None,
                                     cpu=SERVE_CPU if who == "relay" else LOAD_CPU)
                stack.callback(relay.stop)
                lst = servers_listener(relay, target, app_port, listeners,
                                       profile=prof if who == "listener" else None,
                                       cpu=SERVE_CPU if who == "listener" else LOAD_CPU)
                stack.callback(lst.stop)
                base = f"http://127.0.0.1:{relay.port}/{'proxy' if target == 'relay' else 'native'}"
                check(base)
                r = wrk(base + path, cfg["secs"], post, [relay.child, lst, app])
            print(f"\n## cProfile of the {who}: {TARGET_NAMES[target]}, {key.upper()} at {CONNS} connections\n")
            if r:
                print(f"{r['rps']:,.0f} req/s; CPU µs per request: "
                      + ", ".join(f"{n} {v / r['requests'] * 1e6:.0f}" for n, v in r["server_cpu"].items())
                      + f" ({r['requests']:,} requests; wrk errors: {r['status']} non-2xx, "
                      f"{r['errors'] - r['status']} socket)")
            if not Path(prof).exists():
                print("(no profile written)")
                continue
            stats = pstats.Stats(prof)
            print("\nBy own time:\n```")
            stats.sort_stats("tottime").print_stats(35)
            print("```\nBy cumulative time:\n```")
            stats.sort_stats("cumulative").print_stats(60)
            print("```")


# -- instructions per request --------------------------------------------------------------------
@contextlib.contextmanager
def under_callgrind(name: str, out: Path):
    """Start the child called *name* under callgrind, with counting off until switched on."""
    _WRAP[name] = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    try:
        yield
    finally:
        _WRAP.pop(name, None)


def count_instructions(child: Child, out: Path, url: str, secs: int, post: int | None) -> tuple[int, int]:
    """(instructions, requests) of *child* over one wrk run; counting is switched on just for it."""
    wrk(url, 3, post, [])  # warm-up: imports, caches, connection pools
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    subprocess.run(["callgrind_control", "--instr=on", str(child.pid)], capture_output=True, timeout=60, check=False)
    r = wrk(url, secs, post, [])
    subprocess.run(["callgrind_control", "--instr=off", str(child.pid)], capture_output=True, timeout=60, check=False)
    subprocess.run(["callgrind_control", "--dump", str(child.pid)], capture_output=True, timeout=60, check=False)
    total = 0
    for _ in range(50):  # the dump is written by the child itself, a moment later
        time.sleep(0.2)
        dumps = [f.read_text(errors="replace") for f in out.parent.glob(out.name + "*")]
        total = sum(int(n) for text in dumps for n in re.findall(r"^totals:\s+(\d+)", text, re.M))
        if total:
            break
    return total, (r or {}).get("requests", 0)


def instructions(cfg: dict, listeners: int) -> None:
    """User-space instructions per request of the direct app, the relay and the in-listener handler."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        note("missing: valgrind (apt-get install -y valgrind)")
        return
    secs = max(cfg["secs"], 4)
    rows = []
    for key, label, path, post in TESTS:
        counts: dict[str, float] = {}
        for who in ("app", "relay", "listener"):
            out = rb._logdir / f"callgrind-{who}-{key}.out"
            with contextlib.ExitStack() as stack:
                stack.enter_context(under_callgrind(who, out))
                if who == "app":
                    app, port = start_app()
                    stack.callback(app.stop)
                    child, url = app, f"http://127.0.0.1:{port}{path}"
                else:
                    relay = Relay()
                    stack.callback(relay.stop)
                    lst = start_native_listener(relay, listeners)
                    stack.callback(lst.stop)
                    child, url = (relay.child if who == "relay" else lst), f"http://127.0.0.1:{relay.port}/native{path}"
                total, requests = count_instructions(child, out, url, secs, post)
            counts[who] = total / requests if requests and total else math.nan
            note(f"  {key} {who:8} {requests:,} requests under callgrind, {fmt(counts[who])} instructions per request")
        pair = counts["relay"] + counts["listener"]
        rows.append(f"| {label} | {fmt(counts['app'])} | {fmt(counts['relay'])} | {fmt(counts['listener'])} | "
                    f"{fmt(counts['relay'] / counts['app'], 2)}× | {fmt(pair / counts['app'], 2)}× |")
    print(f"\nhyrelay HTTP benchmark (instructions), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{rb.source_version()}, {rb.machine()}\n")
    print(f"User-space instructions per request (callgrind; {CONNS} connections; kernel work not counted):\n")
    print("| workload | direct app | relay | in-listener handler | relay ÷ app | relay + listener ÷ app |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round, 64 MiB streams (smoke check)")
    parser.add_argument("--profile", action="store_true", help="cProfile the relay and listeners instead")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request under callgrind instead (noise-free)")
    parser.add_argument("--listeners", type=int, default=4, help="control channels per SDK listener process")
    parser.add_argument("--no-streams", action="store_true", help="skip the streams")
    parser.add_argument("--no-rate", action="store_true", help="skip the request-rate rounds")
    parser.add_argument("--json", metavar="FILE", help="also write the raw per-run results here")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, rb._on_signal)
    signal.signal(signal.SIGHUP, rb._on_signal)
    cfg = QUICK if args.quick else FULL
    started = time.time()
    try:
        with rb.reported(warn):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft < hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
            if missing:
                note(f"missing: {', '.join(missing)} (apt-get install -y wrk nginx)")
                return
            if args.profile:
                profile(cfg, args.listeners)
                return
            if args.instructions:
                instructions(cfg, args.listeners)
                return
            note(f"machine: {rb.machine()}")
            note(f"pinning: serving processes (app, nginx, relay, listeners) on CPU {SERVE_CPU}, "
                 f"load generator on CPU {LOAD_CPU}")
            source = rb.source_version()  # now: src/ may change while this runs
            res = rb.Results()
            if not args.no_rate:
                run_rounds(cfg, args.listeners, res)
            if not args.no_streams:
                run_streams(cfg, args.listeners, res)
            wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                         check=False).stdout.split("\n")[0]
            nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                                           check=False).stderr.strip()
            rb.publish(f"hyrelay HTTP benchmark ({'quick' if args.quick else 'full'}), "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {source}, "
                       f"{rb.machine()}, {nginx_version}, {wrk_version.split(' Copyright')[0]}",
                       table(res, cfg, args.listeners), started, args.json, cfg, res)
    finally:
        if args.profile or KEEP_LOGS:
            note(f"logs and profiles: {rb._logdir}")
        else:
            shutil.rmtree(rb._logdir, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
