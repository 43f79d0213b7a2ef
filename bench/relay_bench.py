"""hyrelay against its anchors: a bare picows frame pump and direct (no relay) connections.

    .venv/bin/python bench/relay_bench.py            # 3 interleaved rounds, medians (a few minutes)
    .venv/bin/python bench/relay_bench.py --quick    # 1 short round, smoke check (< 30 s)
    .venv/bin/python bench/relay_bench.py --profile  # cProfile of the relay under each workload

Every server runs in its own process pinned to one CPU; the load client (bench/_load.py) runs in
another process pinned to the other CPU, and reads the server's CPU time from /proc. See
bench/_servers.py for what each server does and bench/_load.py for the workloads. This is a
benchmark, not a test: it always exits 0, and PASS/MISS next to a target is informational.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
PER_HC = 25  # RelayConfig.max_listeners default: idle listeners are spread over HCs of 25

#: (label, message size, messages in flight, ack every n messages)
STREAMS = [("1 MiB", 1 << 20, 8, 1), ("64 KiB", 64 << 10, 64, 8), ("64 B", 64, 1000, 100)]
STREAMS_QUICK = [("1 MiB", 1 << 20, 4, 1), ("64 KiB", 64 << 10, 32, 8), ("64 B", 64, 500, 100)]

FULL = dict(runs=3, warm=0.5, secs=2.0, hs_warm=0.5, hs_secs=3.0, conc=16, idle=10_000, hold=1.5)
QUICK = dict(runs=1, warm=0.2, secs=0.6, hs_warm=0.2, hs_secs=1.0, conc=16, idle=1_000, hold=0.5)

TARGET_TPUT = 0.8
TARGET_HS = 0.5
TARGET_IDLE_KIB = 16.0

# -- child processes ----------------------------------------------------------------------------
_children: list[subprocess.Popen] = []
_logdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))


def _cpus() -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


SERVER_CPU, CLIENT_CPU = _cpus()


def _pin(cpu: int | None):  # type: ignore[no-untyped-def]
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cleanup() -> None:
    """Stop every child we started: SIGTERM, then SIGKILL after a grace period."""
    while _children:
        p = _children.pop()
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass


atexit.register(cleanup)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class Server:
    def __init__(self, kind: str, *args: str) -> None:
        self.kind = kind
        self.log = _logdir / f"{kind}-{len(_children)}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([PY, str(HERE / "_servers.py"), kind, *args], stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True, preexec_fn=_pin(SERVER_CPU))
        _children.append(self.proc)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"{kind} server did not start: {self.log.read_text()[-2000:]}")
        self.info: dict = json.loads(line)

    def spec(self, **kw: object) -> dict:
        spec = {"port": self.info["port"], "server_pid": self.info["pid"], "target": self.kind}
        if "key" in self.info:
            spec.update(rule=self.info["rule"], key=self.info["key"])
        spec.update(kw)
        return spec

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc in _children:
            _children.remove(self.proc)


def load(spec: dict, timeout: float = 120) -> dict | None:
    """Run one workload in a fresh client process; None (and a note on stderr) if it failed."""
    p = subprocess.Popen([PY, str(HERE / "_load.py"), json.dumps(spec)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_pin(CLIENT_CPU))
    _children.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    finally:
        if p in _children:
            _children.remove(p)
    if p.returncode != 0 or not out.strip():
        print(f"  ! {spec['mode']} {spec['target']} failed (rc={p.returncode}): "
              f"{err.decode(errors='replace').strip()[-600:]}", file=sys.stderr)
        return None
    return json.loads(out.strip().splitlines()[-1])


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- figures ------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2 or not statistics.median(values):
        return float("nan")
    return (max(values) - min(values)) / statistics.median(values)


class Results:
    """Raw results per (figure key, target), one entry per round (None when a run failed)."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, list[dict | None]]] = {}

    def add(self, key: str, target: str, res: dict | None) -> None:
        self.raw.setdefault(key, {}).setdefault(target, []).append(res)

    def values(self, key: str, target: str, fn) -> list[float]:  # type: ignore[no-untyped-def]
        return [fn(r) if r else float("nan") for r in self.raw.get(key, {}).get(target, [])]

    def ratio(self, key: str, fn, num: str = "relay", den: str = "pump") -> float:  # type: ignore[no-untyped-def]
        """Median of the per-round ratios (rounds are interleaved, so this cancels slow drift)."""
        a, b = self.values(key, num, fn), self.values(key, den, fn)
        return med([x / y if y else float("nan") for x, y in zip(a, b)])


def run_rounds(cfg: dict, streams: list, res: Results) -> None:
    targets = ["relay", "pump", "direct"]
    servers = {"relay": Server("relay"), "pump": Server("pump"), "direct": Server("direct")}
    try:
        for rnd in range(cfg["runs"]):
            order = targets[rnd % 3:] + targets[:rnd % 3]  # rotate who goes first
            note(f"round {rnd + 1}/{cfg['runs']}")
            for label, size, window, ack_every in streams:
                for target in order:
                    r = load(servers[target].spec(mode="tput", size=size, window=window, ack_every=ack_every,
                                                  warm=cfg["warm"], secs=cfg["secs"]))
                    res.add(f"tput {label}", target, r)
                    if r:
                        note(f"  tput {label:>6} {target:<6} {r['bytes'] / r['secs'] / 1e6:9.1f} MB/s "
                             f"{r['msgs'] / r['secs']:10.0f} msg/s  server {r['server_cpu'] / r['secs']:.2f} "
                             f"client {r['client_cpu'] / r['secs']:.2f}")
            for target in order:
                if target == "direct":
                    continue
                r = load(servers[target].spec(mode="hs", conc=cfg["conc"], warm=cfg["hs_warm"],
                                              secs=cfg["hs_secs"], listeners=2))
                res.add("hs", target, r)
                if r:
                    note(f"  setup  {target:<6} {r['ok'] / r['secs']:8.0f}/s p50 {r['p50_ms']:.2f} ms "
                         f"p99 {r['p99_ms']:.2f} ms errors {r['errors']} server {r['server_cpu'] / r['secs']:.2f} "
                         f"client {r['client_cpu'] / r['secs']:.2f}")
            for target in order:
                if target == "direct":
                    continue
                # A fresh server each time, so the RSS growth is the connections' and nothing else's.
                count = cfg["idle"]
                args = ("--hcs", str(-(-(count + 20) // PER_HC))) if target == "relay" else ()
                srv = Server(target, *args)
                try:
                    r = load(srv.spec(mode="idle", count=count, per_hc=PER_HC, hold=cfg["hold"]), timeout=300)
                finally:
                    srv.stop()
                res.add("idle", target, r)
                if r:
                    note(f"  idle   {target:<6} {r['kib_per_conn']:.2f} KiB/conn ({r['alive']} alive, "
                         f"opened in {r['open_secs']:.1f} s)")
    finally:
        for srv in servers.values():
            srv.stop()


def fmt(v: float, digits: int = 0) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def table(res: Results, streams: list, cfg: dict) -> str:
    rows = []
    sp: list[float] = []

    def row(figure: str, key: str, fn, digits: int, target: str = "", check=None,  # type: ignore[no-untyped-def]
            direct: bool = True, lower_better: bool = False) -> None:
        vals = {t: res.values(key, t, fn) for t in ("relay", "pump", "direct")}
        for v in vals.values():
            if len(v) > 1:
                sp.append(spread(v))
        relay, pump, dirv = (med(vals[t]) for t in ("relay", "pump", "direct"))
        ratio = res.ratio(key, fn)
        ok = None if check is None or math.isnan(ratio if check[0] == "ratio" else relay) else (
            ratio >= check[1] if check[0] == "ratio" else relay <= check[1])
        rows.append(f"| {figure} | {fmt(relay, digits)} | {fmt(pump, digits)} | "
                    f"{fmt(dirv, digits) if direct else '—'} | {fmt(ratio, 2)}× | {target or '—'} | "
                    f"{verdict(ok) if check else ''} |")

    mbps = lambda r: r["bytes"] / r["secs"] / 1e6  # noqa: E731
    msgps = lambda r: r["msgs"] / r["secs"]  # noqa: E731
    us_mib = lambda r: r["server_cpu"] / (r["bytes"] / (1 << 20)) * 1e6 if r["bytes"] else float("nan")  # noqa: E731
    us_msg = lambda r: r["server_cpu"] / r["msgs"] * 1e6 if r["msgs"] else float("nan")  # noqa: E731
    util = lambda r: r["server_cpu"] / r["secs"]  # noqa: E731
    cutil = lambda r: r["client_cpu"] / r["secs"]  # noqa: E731
    for label, *_ in streams:
        key = f"tput {label}"
        if label == "64 B":
            row("64 B messages, msg/s", key, msgps, 0, f"≥ {TARGET_TPUT}× pump", ("ratio", TARGET_TPUT))
        else:
            row(f"{label} messages, MB/s", key, mbps, 0, f"≥ {TARGET_TPUT}× pump", ("ratio", TARGET_TPUT))
    for label, *_ in streams:
        key = f"tput {label}"
        if label == "64 B":
            row("server CPU µs per 64 B message", key, us_msg, 2)
        else:
            row(f"server CPU µs per MiB ({label} messages)", key, us_mib, 0)
    hs_rate = lambda r: r["ok"] / r["secs"]  # noqa: E731
    row(f"new connections/s (relay: sender→accept→rendezvous→101→close; pump: pairs of 2 handshakes), "
        f"{cfg['conc']} connectors", "hs", hs_rate, 0, f"≥ {TARGET_HS}× pump", ("ratio", TARGET_HS), direct=False)
    row("setup time p50, ms", "hs", lambda r: r["p50_ms"], 2, direct=False)
    row("setup time p99, ms", "hs", lambda r: r["p99_ms"], 2, direct=False)
    row("server CPU µs per connection (pump: per pair)", "hs",
        lambda r: r["server_cpu"] / r["ok"] * 1e6 if r["ok"] else float("nan"), 0, direct=False)
    row(f"KiB per idle listener ({cfg['idle']:,}; pump: idle unpaired connection)", "idle",
        lambda r: r["kib_per_conn"], 2, f"≤ {TARGET_IDLE_KIB:g} KiB", ("abs", TARGET_IDLE_KIB), direct=False)

    head = ["| figure | hyrelay | bare pump | direct | hyrelay ÷ pump | target | |",
            "|---|---:|---:|---:|---:|---|---|"]
    out = head + rows
    # Who was the bottleneck: CPU utilisation of the server and of the load client.
    out += ["", "CPU utilisation during the measured window, server / load client (1.00 = one core busy):", "",
            "| workload | hyrelay | bare pump | direct |", "|---|---:|---:|---:|"]
    for label, *_ in streams:
        key = f"tput {label}"
        cells = [f"{fmt(med(res.values(key, t, util)), 2)} / {fmt(med(res.values(key, t, cutil)), 2)}"
                 for t in ("relay", "pump", "direct")]
        out.append(f"| {label} stream | " + " | ".join(cells) + " |")
    cells = [f"{fmt(med(res.values('hs', t, util)), 2)} / {fmt(med(res.values('hs', t, cutil)), 2)}"
             for t in ("relay", "pump")]
    out.append("| connection setup | " + " | ".join(cells) + " | — |")
    errs = {t: sum(r["errors"] for r in res.raw.get("hs", {}).get(t, []) if r) for t in ("relay", "pump")}
    out += ["", f"Runs per figure: {cfg['runs']} (median; ratios are medians of per-round ratios). "
            f"Median run-to-run spread (max−min)/median: {fmt(med(sp) * 100, 0)}%. "
            f"Setup errors: hyrelay {errs['relay']}, pump {errs['pump']}."]
    return "\n".join(out)


# -- profiling ----------------------------------------------------------------------------------
def profile(cfg: dict, streams: list) -> None:
    """Run each workload against a relay under cProfile and print the top functions."""
    import pstats

    work = [("setup", dict(mode="hs", conc=cfg["conc"], warm=cfg["hs_warm"], secs=cfg["hs_secs"], listeners=2))]
    for label, size, window, ack_every in streams:
        work.append((label, dict(mode="tput", size=size, window=window, ack_every=ack_every,
                                 warm=cfg["warm"], secs=cfg["secs"])))
    for name, spec in work:
        out = _logdir / f"relay-{name.replace(' ', '')}.prof"
        srv = Server("relay", "--profile", str(out))
        try:
            r = load(srv.spec(**spec))
        finally:
            srv.stop()
        print(f"\n### cProfile of the relay: {name} workload ({out})\n")
        if r:
            print(json.dumps(r))
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(22)


# -- main ---------------------------------------------------------------------------------------
def machine() -> str:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("picows", "uvloop", "aiohttp"):
        try:
            from importlib.metadata import version
            versions.append(f"{mod} {version(mod)}")
        except Exception:  # noqa: BLE001
            pass
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
            + ", ".join(versions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round with small sizes (smoke check)")
    parser.add_argument("--profile", action="store_true", help="cProfile the relay under each workload instead")
    parser.add_argument("--json", metavar="FILE", help="also write the raw per-run results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    cfg, streams = (QUICK, STREAMS_QUICK) if args.quick else (FULL, STREAMS)
    started = time.time()
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < cfg["idle"] + 200:
            cfg = dict(cfg, idle=max(100, hard - 200))
            note(f"RLIMIT_NOFILE hard limit is {hard}: holding {cfg['idle']} idle connections instead")
        if args.profile:
            profile(cfg, streams)
            return
        note(f"machine: {machine()}")
        note(f"pinning: servers on CPU {SERVER_CPU}, load client on CPU {CLIENT_CPU}")
        res = Results()
        run_rounds(cfg, streams, res)
        print()
        print(f"hyrelay benchmark ({'quick' if args.quick else 'full'}), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {machine()}")
        print()
        print(table(res, streams, cfg))
        print(f"\nTotal time {time.time() - started:.0f} s.")
        if args.json:
            Path(args.json).write_text(json.dumps({"config": cfg, "machine": machine(), "results": res.raw},
                                                  indent=1))
    except KeyboardInterrupt:
        note("interrupted")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports and exits 0
        import traceback
        traceback.print_exc()
        note(f"benchmark aborted: {exc}")
    finally:
        cleanup()
    sys.exit(0)


if __name__ == "__main__":
    main()
