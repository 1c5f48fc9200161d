"""one HAProxy core: the generated config against a minimal one, in the same run.

``buzzer bench lb`` runs one HAProxy node with the generated config on one core, against
a minimal HAProxy config on the same core in the same run.

HAProxy (either config) runs on CPU 0 with one thread. The load tools (wrk, openssl
s_time) and the backend run on CPU 1. The backend is a second HAProxy that answers every
request itself (``http-request return``), which is about the cheapest HTTP responder
there is, so that what is measured is the proxy. Each figure is measured for the minimal
config and the generated one back to back, and the ratio printed; the worker's CPU use
is printed beside each, because a figure is only HAProxy's own when its core is busy.
The last line printed is one JSON object with every figure.

Every figure is measured in ``--rounds`` rounds, minimal and generated back to back in
alternating order (bench.tools.rounds); the ratio printed is the median of the rounds'
ratios, with its spread and whether the spread allows a conclusion.

``h2_streams`` is what an app client costs: h2load keeps one TLS connection per client
and ``--h2-streams`` votes in flight on it (HTTP/2). Next to it, ``tls_resumed`` is an
HTTP/1.1 client that opens a new, resumed, TLS connection per vote. The planner reads
``haproxy_h2_req_per_s`` for the votes of clients that keep their connection.

``websockets`` (``--websockets N``, or ``--only websockets``) holds as many websockets as
the descriptor limit allows, up to N, through the generated config to
``bench.tools.wsbroadcast``, which pushes ``--ws-rate`` updates a second to every one;
``bench.tools.wsholder`` processes hold them from several 127.0.x.y addresses. It reports
HAProxy's RSS per held websocket and its CPU per update forwarded to one socket, which
the planner sizes ``maxconn`` and the update fan-out from. One round: it is bounded by
memory and descriptors, not by a rate that other work on the machine would disturb.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.target import vote_target
from bench.tools import h2load, jsonline
from bench.tools.proc import cpu_seconds, rss_bytes
from bench.tools.rounds import order, summarise
from buzzer.certs import make_cert
from buzzer.ports import free_port
from lb.inventory import Server
from lb.planner import HISTORICAL, MEASURED_PATH
from lb.process import HaproxyProcess
from lb.render import RateLimit, RenderParams, RenderSettings, render

PATH = "/v1/polls/p1/votes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--tls-clients", type=int, default=8, help="parallel openssl s_time")
    p.add_argument("--h2-clients", type=int, default=16, help="h2load connections")
    p.add_argument("--h2-streams", type=int, default=8, help="h2load streams per connection")
    p.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per figure (default 5)"
    )
    p.add_argument("--haproxy-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument(
        "--no-ingest",
        action="store_true",
        help="skip votes/s through HAProxy to a real ingest process",
    )
    p.add_argument(
        "--profile-out",
        type=Path,
        default=MEASURED_PATH,
        help=f"where to write the measured profile (default {MEASURED_PATH})",
    )
    p.add_argument("--no-profile", action="store_true", help="do not write the profile")
    p.add_argument(
        "--only",
        nargs="*",
        help="measure only these (new_conns keepalive h2_streams ... websockets); the"
        " profile then keeps its other figures",
    )
    g = p.add_argument_group("websockets held through the generated config")
    g.add_argument(
        "--websockets",
        type=int,
        default=20_000,
        metavar="N",
        help="websockets to hold, as many as the file-descriptor limit allows up to N;"
        " 0 skips (default %(default)s)",
    )
    g.add_argument(
        "--ws-rate", type=float, default=10.0, help="updates per second pushed to every socket"
    )
    g.add_argument(
        "--ws-seconds", type=float, default=10.0, help="CPU measured over this long (default 10)"
    )
    g.add_argument("--ws-clients", type=int, default=2, help="client processes holding them")
    g.add_argument(
        "--ws-l4",
        action="store_true",
        help="through a TCP-mode (L4) HAProxy instead of the generated config: what viewers"
        " would cost on a path that does not parse HTTP (reported, not written to the profile)",
    )


@dataclass
class Figure:
    rate: float
    cpu: float
    """Share of one core the HAProxy worker used during the measurement."""
    errors: int

    @property
    def per_core(self) -> float:
        """The rate per second of HAProxy CPU: the client core, not HAProxy's, is often
        the limit on two cores, and this is what one busy HAProxy core would do."""
        return self.rate / self.cpu if self.cpu > 0.05 else 0.0


@contextmanager
def _cpu_meter(pid: int, out: dict[str, float]) -> Iterator[None]:
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    yield
    elapsed = time.monotonic() - t0
    out["cpu"] = (cpu_seconds(pid) - c0) / elapsed


def _taskset(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd]


def _wrk(url: str, seconds: float, connections: int, cpu: int, close: bool) -> tuple[float, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    res = subprocess.run(
        _taskset(cpu, [*cmd, url]), capture_output=True, text=True, timeout=seconds + 30
    )
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {res.stdout}{res.stderr}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", res.stdout))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", res.stdout)
    return float(m.group(1)), errors + (int(non2xx.group(1)) if non2xx else 0)


def _s_time(
    host: str, port: int, seconds: float, clients: int, cpu: int, reuse: bool
) -> tuple[float, int]:
    # s_time runs one connection at a time, so its rate is bound by round trips, not by
    # the server; several in parallel fill the server's core. With -www each connection
    # also sends one GET, as a real client would.
    cmd = [
        "openssl", "s_time", "-connect", f"{host}:{port}", "-www", PATH,
        "-time", str(max(1, round(seconds))), "-reuse" if reuse else "-new",
    ]  # fmt: skip
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            _taskset(cpu, cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(clients)
    ]
    count, errors = 0, 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        # s_time's own "in N real seconds" is whole seconds; time the run here instead.
        m = re.search(r"(\d+) connections in [\d.]+ real seconds", out)
        if m is None:
            errors += 1
            continue
        count += int(m.group(1))
    return count / (time.monotonic() - t0), errors


# The least HAProxy needs to proxy HTTP: the baseline both other configs are held to.
_BARE = [
    "global",
    "    nbthread 1",
    "    maxconn 8000",
    "defaults",
    "    mode http",
    "    timeout connect 2s",
    "    timeout client 30s",
    "    timeout server 30s",
]


def _responder(port: int) -> str:
    return "\n".join(
        [
            *_BARE,
            "frontend answer",
            f"    bind 127.0.0.1:{port}",
            "    http-request return status 200 content-type application/json"
            ' string \'{"backend":"responder"}\'',
            "",
        ]
    )


def _minimal(host: str, port: int, tls_port: int, certs: list[Path], backend: int) -> str:
    crts = " ".join(f"crt {c}" for c in certs)
    return "\n".join(
        [
            *_BARE,
            "frontend fe",
            f"    bind {host}:{port}",
            f"    bind {host}:{tls_port} ssl {crts} alpn h2,http/1.1",
            "    default_backend be",
            "backend be",
            f"    server s1 127.0.0.1:{backend}",
            "",
        ]
    )


def _generated(
    host: str,
    port: int,
    tls_port: int | None,
    certs: list[Path],
    backend: int,
    workdir: Path,
    stats_port: int,
) -> str:
    settings = RenderSettings(
        runtime_socket=str(workdir / "admin.sock"),
        bind_host=host,
        http_port=port,
        https_port=tls_port,
        certs=tuple(str(c) for c in certs),
        redirect_to_https=False,
        stats_port=stats_port,
        nbthread=1,
        log_target="stdout",
        # The limit stays on, as in production, above what the bench's one address sends.
        rate_limit=RateLimit(requests=100_000_000),
    )
    inventory = {"ingest": [Server("127.0.0.1", backend)], "push": [Server("127.0.0.1", backend)]}
    return render(RenderParams(maxconn=8000), inventory, settings)


def _h2(url: str, seconds: float, clients: int, streams: int, cpu: int) -> tuple[float, int]:
    r = h2load.h2load(url, clients=clients, streams=streams, seconds=seconds, body=b"{}", cpu=cpu)
    if r.protocol != "h2":
        raise RuntimeError(f"h2load negotiated {r.protocol or 'nothing'}, not h2:\n{r.raw}")
    return r.rps, r.errors


@dataclass
class Measure:
    name: str
    run: Callable[[str, int, int], tuple[float, int]]
    """(host, http_port, tls_port) -> (rate, errors)"""
    tls: str | None = None  # which certificate the TLS listener needs


def run(args: argparse.Namespace) -> int:
    for tool in ("haproxy", "wrk", "openssl", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench lb: {tool} not found", file=sys.stderr)
            return 2
    secs, hcpu, ccpu = args.seconds, args.haproxy_cpu, args.client_cpu
    measures = [
        Measure("new_conns", lambda h, p, t: _wrk(f"http://{h}:{p}{PATH}", secs,
                                               args.connections, ccpu, close=True)),
        Measure("keepalive", lambda h, p, t: _wrk(f"http://{h}:{p}{PATH}", secs,
                                               args.connections, ccpu, close=False)),
        # wrk resumes TLS sessions (HAProxy reports 99% reuse under it), so full
        # handshakes come from `openssl s_time -new`, which never resumes.
        Measure("tls_full_ecdsa", lambda h, p, t: _s_time(h, t, secs, args.tls_clients, ccpu,
                                                          reuse=False), "ecdsa"),
        Measure("tls_full_rsa", lambda h, p, t: _s_time(h, t, secs, args.tls_clients, ccpu,
                                                        reuse=False), "rsa"),
        Measure("tls_resumed", lambda h, p, t: _s_time(h, t, secs, args.tls_clients, ccpu,
                                                       reuse=True), "ecdsa"),
        Measure("h2_streams", lambda h, p, t: _h2(f"https://{h}:{t}{PATH}", secs,
                                                  args.h2_clients, args.h2_streams, ccpu),
                "ecdsa"),
    ]  # fmt: skip
    if not h2load.available():
        print("bench lb: h2load not found (nghttp2-client): h2_streams skipped", file=sys.stderr)
        measures = [m for m in measures if m.name != "h2_streams"]
    if args.only:
        measures = [m for m in measures if m.name in args.only]
    do_ws = args.websockets > 0 and (not args.only or "websockets" in args.only)

    results: dict[str, dict[str, list[Figure]]] = {}
    runs = 0
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        work = Path(tmp)
        certs = {"ecdsa": make_cert(work, "ecdsa"), "rsa": make_cert(work, "rsa")}
        backend_port = free_port()
        responder = HaproxyProcess(work / "responder", cpu=ccpu, log_path=work / "resp.log")
        responder.start(_responder(backend_port))
        try:
            for m in measures:
                cert = [certs[m.tls or "ecdsa"]]
                results[m.name] = {"minimal": [], "generated": []}
                for rnd, kind in order(args.rounds, ("minimal", "generated")):
                    port, tls_port = free_port(), free_port()
                    # A fresh loopback address per run: the TIME_WAIT left by one run's
                    # closed connections must not slow the next run's connects.
                    runs += 1
                    host = f"127.0.{1 + runs // 250}.{1 + runs % 250}"
                    d = work / f"{m.name}-{kind}"
                    text = (
                        _minimal(host, port, tls_port, cert, backend_port)
                        if kind == "minimal"
                        else _generated(host, port, tls_port, cert, backend_port, d, free_port())
                    )
                    hap = HaproxyProcess(
                        d,
                        runtime_socket=d / "admin.sock" if kind == "generated" else None,
                        cpu=hcpu,
                        log_path=Path(os.devnull),
                    )
                    hap.start(text)
                    try:
                        if kind == "generated":
                            _wait_up(hap)
                        cpu: dict[str, float] = {}
                        with _cpu_meter(hap.worker_pids()[0], cpu):
                            rate, errors = m.run(host, port, tls_port)
                        results[m.name][kind].append(Figure(rate, cpu["cpu"], errors))
                        if m.tls and kind == "generated":
                            print(f"{m.name:<16} session reuse seen by HAProxy:"
                                  f" {_ssl_reuse_pct(hap)}%")  # fmt: skip
                    finally:
                        hap.stop()
                    f = results[m.name][kind][-1]
                    print(
                        f"{m.name:<16} r{rnd} {kind:<9} {f.rate:>10,.0f}/s  haproxy cpu {f.cpu:4.0%}"
                        f"  per core-second {f.per_core:>10,.0f}  errors {f.errors}",
                        flush=True,
                    )
        finally:
            responder.stop()

    ingest: float | None = None
    if not args.no_ingest and not args.only:
        ingest = _votes_through_haproxy(args, hcpu)
    ws = _websockets(args, hcpu, ccpu) if do_ws else None

    summary = _summary(results, ingest, secs, ws)
    print()
    print(f"{'figure':<16} {'minimal':>10} {'generated':>10} {'ratio':>6}"
          f" {'min/core':>10} {'gen/core':>10} {'ratio':>6}")  # fmt: skip
    for name, r in summary["figures"].items():
        if name in ("websockets", "websockets_l4"):
            continue
        print(
            f"{name:<16} {r['minimal']:>10,.0f} {r['generated']:>10,.0f} {r['ratio']:>6.2f}"
            f" {r['minimal_per_core']:>10,.0f} {r['generated_per_core']:>10,.0f}"
            f" {r['ratio_per_core']:>6.2f}  spread {r['ratio_spread']:.0%}"
            f"{'' if r['conclusive'] else ' TOO WIDE TO CONCLUDE'}"
        )
    ka = summary["figures"].get("keepalive")
    if ka:
        verdict = "yes" if ka["ratio"] >= 0.9 else "NO"
        if not ka["conclusive"]:
            verdict = "spread too wide to conclude"
        print(f"keep-alive median ratio >= 0.9 over {args.rounds} rounds: {verdict}")
    mobile = summary["profile"]
    if "haproxy_h2_req_per_s" in mobile and "haproxy_tls_resumed_per_s" in mobile:
        print(
            f"app clients (h2, {args.h2_streams} streams/conn): "
            f"{mobile['haproxy_h2_req_per_s']:,.0f} votes per HAProxy core-second;"
            f" HTTP/1.1 new resumed TLS connection per vote:"
            f" {mobile['haproxy_tls_resumed_per_s']:,.0f}"
        )
    print(f"historical node: {HISTORICAL.haproxy_new_conns_per_s:,.0f} new connections/s")
    if not args.no_profile:
        write_profile(args.profile_out, summary, merge=bool(args.only))
        print(f"profile written to {args.profile_out}")
    print(jsonline.dumps(summary, sort_keys=True))
    return 0


def _votes_through_haproxy(args: argparse.Namespace, hcpu: int) -> float:
    """Real votes (tokens, validation, atomic append) through the generated config to
    one real ingest process, next to the same votes sent to it directly."""
    with (
        tempfile.TemporaryDirectory(prefix="lb-bench-votes-") as tmp,
        vote_target(cpu=None) as target,
    ):
        d = Path(tmp)
        port = free_port()
        backend = int(target.url.rsplit(":", 1)[1])
        hap = HaproxyProcess(
            d, runtime_socket=d / "admin.sock", cpu=hcpu, log_path=Path(os.devnull)
        )
        hap.start(_generated("127.0.0.1", port, None, [], backend, d, free_port()))
        try:
            _wait_up(hap)
            target.wrk(2, args.connections)  # warm up
            direct = target.wrk(args.seconds, args.connections)
            through = target.wrk(args.seconds, args.connections, f"http://127.0.0.1:{port}")
        finally:
            hap.stop()
    print(
        f"votes/s direct to ingest:       {direct.rps:>9,.0f}  p99 {direct.p99_ms:.1f} ms"
        f"  non-2xx {direct.non2xx}"
    )
    print(
        f"votes/s through HAProxy:        {through.rps:>9,.0f}  p99 {through.p99_ms:.1f} ms"
        f"  non-2xx {through.non2xx}  ({through.rps / direct.rps:.2f} of direct)"
    )
    return through.rps


def _wait_up(hap: HaproxyProcess, timeout: float = 5.0, backend: str = "ingest") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s.up for s in hap.runtime.servers_state(backend) if not s.in_maint):
            return
        time.sleep(0.05)
    raise RuntimeError(f"bench backend {backend!r} not up behind HAProxy")


def _figure(r: dict[str, list[Figure]]) -> dict[str, Any]:
    mini, gen = r["minimal"], r["generated"]
    rate_ratio = summarise(
        [g.rate / m.rate if m.rate else 0.0 for m, g in zip(mini, gen, strict=True)]
    )
    core_ratio = summarise(
        [g.per_core / m.per_core if m.per_core else 0.0 for m, g in zip(mini, gen, strict=True)]
    )

    def med(figs: list[Figure], attr: str) -> float:
        return summarise([getattr(f, attr) for f in figs]).median

    return {
        "minimal": round(med(mini, "rate"), 1),
        "generated": round(med(gen, "rate"), 1),
        "ratio": round(rate_ratio.median, 3),
        "ratio_spread": round(rate_ratio.spread, 3),
        "ratio_verdict": rate_ratio.verdict,
        "conclusive": rate_ratio.conclusive,
        "rounds": rate_ratio.rounds,
        "minimal_per_core": round(med(mini, "per_core"), 1),
        "generated_per_core": round(med(gen, "per_core"), 1),
        "generated_per_core_spread": round(summarise([g.per_core for g in gen]).spread, 3),
        "ratio_per_core": round(core_ratio.median, 3),
        "haproxy_cpu_minimal": round(med(mini, "cpu"), 2),
        "haproxy_cpu_generated": round(med(gen, "cpu"), 2),
        "errors": sum(f.errors for f in mini + gen),
    }


def write_profile(path: Path, summary: dict[str, Any], merge: bool) -> None:
    """Write the measured profile; with ``merge`` (an ``--only`` run) the figures it
    measured replace theirs in the file and the rest are kept, so that one figure can be
    measured again without losing the others."""
    if merge:
        try:
            old = json.loads(path.read_text())
        except FileNotFoundError:
            old = {}
        summary = {
            **old,
            # The file's date stays its other figures'; each merged figure has its own.
            **{k: v for k, v in summary.items() if k not in ("figures", "profile", "measured_at")},
            "figures": {**old.get("figures", {}), **summary["figures"]},
            "profile": {**old.get("profile", {}), **summary["profile"]},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonline.dumps(summary, indent=2, sort_keys=True) + "\n")


def _summary(
    results: dict[str, dict[str, list[Figure]]],
    ingest: float | None,
    secs: float,
    ws: dict[str, Any] | None = None,
) -> dict[str, Any]:
    figures = {name: _figure(r) for name, r in results.items()}
    if ws is not None and ws.get("l4"):
        # Another path, not the generated config: reported beside it, never planned from.
        figures["websockets_l4"] = ws
        ws = None
    elif ws is not None:
        figures["websockets"] = ws

    def gen(name: str) -> float | None:
        return figures[name]["generated_per_core"] if name in figures else None

    profile = {
        "haproxy_new_conns_per_s": gen("new_conns"),
        "haproxy_keepalive_req_per_s": gen("keepalive"),
        "haproxy_tls_full_per_s": gen("tls_full_rsa"),
        "haproxy_tls_full_ecdsa_per_s": gen("tls_full_ecdsa"),
        "haproxy_tls_resumed_per_s": gen("tls_resumed"),
        "haproxy_h2_req_per_s": gen("h2_streams"),
        "ingest_votes_per_s": ingest,
        **({k: ws[k] for k in WS_PROFILE_KEYS if ws.get(k)} if ws else {}),
    }
    return {
        "bench": "lb",
        "seconds": secs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "haproxy": _haproxy_version(),
        "historical_new_conns_per_s": HISTORICAL.haproxy_new_conns_per_s,
        "figures": figures,
        "profile_basis": "generated config, rate per HAProxy core-second (rate / worker CPU)",
        "profile": {k: v for k, v in profile.items() if v is not None},
    }


def _ssl_reuse_pct(hap: HaproxyProcess) -> str:
    for line in hap.runtime.command("show info").splitlines():
        if line.startswith("SslFrontendSessionReuse_pct:"):
            return line.split(":", 1)[1].strip()
    return "?"


def _haproxy_version() -> str:
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


# Websockets held through the generated config (--only websockets).

WS_PROFILE_KEYS = (
    "haproxy_bytes_per_conn",
    "haproxy_kernel_bytes_per_conn",
    "haproxy_cpu_per_conn_update",
)
"""What ``_websockets`` gives the planner (lb.planner.Profile fields)."""

# Ephemeral ports per (source address, destination) pair: 32768-60999 by default. Each
# client source address and each backend listener stays well under it.
_PER_ADDRESS = 20_000


def _rss_bytes(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def _kernel_bytes() -> int:
    """Slab (socket structures) plus TCP buffer pages, machine-wide: noisy on a busy
    machine, so it is reported beside HAProxy's own RSS, never mixed into it."""
    slab = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            slab = int(line.split()[1]) * 1024
    pages = 0
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()
            pages = int(f[f.index("mem") + 1])
    return slab + pages * os.sysconf("SC_PAGE_SIZE")


def _haproxy_pids(hap: HaproxyProcess) -> list[int]:
    return [hap.master_pid, *hap.worker_pids()]


class _Clients:
    """``bench.tools.wsholder`` processes, each asked for its count over stdin."""

    def __init__(self, url: str, count: int, procs: int, cpu: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        per = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        for i, n in enumerate(per):
            sources = [f"127.0.{10 + i}.{2 + j}" for j in range(max(1, -(-n // _PER_ADDRESS)))]
            cmd = [sys.executable, "-m", "bench.tools.wsholder", url, "--count", str(n)]
            for src in sources:
                cmd += ["--source", src]
            self.procs.append(
                subprocess.Popen(
                    _taskset(cpu, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )

    def opened(self) -> tuple[int, dict[str, int]]:
        opened, errors = 0, dict[str, int]()
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("websocket client exited before opening its sockets")
            r = json.loads(line)
            opened += r["opened"]
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return opened, errors

    def counts(self) -> tuple[int, int]:
        """(frames received, sockets still open), summed over the processes."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
        received, still = 0, 0
        for p in self.procs:
            assert p.stdout is not None
            r = json.loads(p.stdout.readline())
            received += r["received"]
            still += r["open"]
        return received, still

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _l4_config(port: int, backends: list[int], maxconn: int, sock: Path) -> str:
    """HAProxy forwarding TCP to the push listeners, no HTTP: the websockets' bytes are
    copied without being parsed (``splice-auto`` lets the kernel move them when it can)."""
    servers = "\n".join(
        f"    server push{i} 127.0.0.1:{p}" for i, p in enumerate(backends, start=1)
    )
    # maxpipes: splicing reserves two descriptors per pipe, a quarter of maxconn by
    # default, more than the descriptor limit leaves; small frames are not spliced anyway.
    return f"""global
    maxconn {maxconn}
    maxpipes 256
    nbthread 1
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend viewers
    bind 127.0.0.1:{port}
    default_backend push

backend push
    balance leastconn
{servers}
"""


def _websockets(args: argparse.Namespace, hcpu: int, ccpu: int) -> dict[str, Any]:
    """Hold as many websockets as this machine allows, up to ``--websockets``, through
    the generated config to a backend that pushes ``--ws-rate`` updates a second to all;
    HAProxy's memory and CPU per held websocket.

    HAProxy holds two descriptors per websocket (client side, server side) and inherits
    this process's RLIMIT_NOFILE, raised to the hard limit first: that limit, not the
    request, often sets how many are held. The memory figure is taken after updates
    have flowed, since forwarding them is what makes HAProxy allocate buffers."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd_cap = (hard - 1000) // 2
    n = min(args.websockets, fd_cap)
    if n < args.websockets:
        print(
            f"websockets: {n:,} of {args.websockets:,} asked: HAProxy needs two descriptors"
            f" each and the hard RLIMIT_NOFILE here is {hard:,} (raise it: ulimit -Hn)",
            flush=True,
        )
    rate, secs = args.ws_rate, args.ws_seconds
    with tempfile.TemporaryDirectory(prefix="lb-bench-ws-") as tmp:
        d = Path(tmp)
        ports = [free_port() for _ in range(max(1, -(-n // _PER_ADDRESS)))]
        cmd = [sys.executable, "-m", "bench.tools.wsbroadcast", "--rate", str(rate)]
        for p in ports:
            cmd += ["--port", str(p)]
        backend = subprocess.Popen(
            _taskset(ccpu, cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert backend.stdout is not None
        backend.stdout.readline()  # listening
        port = free_port()
        settings = RenderSettings(
            runtime_socket=str(d / "admin.sock"),
            bind_host="127.0.0.1",
            http_port=port,
            redirect_to_https=False,
            stats_port=free_port(),
            nbthread=1,
            log_target="stdout",
            rate_limit=RateLimit(requests=100_000_000),
        )
        servers = [Server("127.0.0.1", p) for p in ports]
        if args.ws_l4:
            text = _l4_config(port, ports, n + 100, d / "admin.sock")
        else:
            text = render(
                RenderParams(maxconn=n + 100), {"ingest": servers[:1], "push": servers}, settings
            )
        hap = HaproxyProcess(d, runtime_socket=d / "admin.sock", cpu=hcpu, log_path=d / "hap.log")
        clients: _Clients | None = None
        try:
            hap.start(text)
            _wait_up(hap, backend="push")
            worker = hap.worker_pids()[0]
            time.sleep(0.5)
            rss0, kern0 = _rss_bytes(_haproxy_pids(hap)), _kernel_bytes()
            t0 = time.monotonic()
            clients = _Clients(f"http://127.0.0.1:{port}/v1/live", n, args.ws_clients, ccpu)
            opened, errors = clients.opened()
            open_s = time.monotonic() - t0
            time.sleep(1.0)
            rss_idle = _rss_bytes(_haproxy_pids(hap))
            # Held but quiet: what holding costs HAProxy's core with no traffic.
            idle: dict[str, float] = {}
            with _cpu_meter(worker, idle):
                time.sleep(min(3.0, secs / 2))
            os.kill(backend.pid, signal.SIGUSR1)
            time.sleep(1.0)
            busy: dict[str, float] = {}
            r0, _ = clients.counts()
            t1 = time.monotonic()
            with _cpu_meter(worker, busy):
                time.sleep(secs)
            r1, still = clients.counts()
            elapsed = time.monotonic() - t1
            os.kill(backend.pid, signal.SIGUSR2)
            time.sleep(0.5)
            rss1, kern1 = _rss_bytes(_haproxy_pids(hap)), _kernel_bytes()
        finally:
            if clients is not None:
                clients.stop()
            hap.stop()
            backend.terminate()
            backend.wait(timeout=10)

    delivered = r1 - r0
    held = max(opened, 1)
    # The held sockets' own cost, above HAProxy's idle core use.
    fanout_cpu = max(0.0, busy["cpu"] - idle["cpu"]) * elapsed
    cpu_per = fanout_cpu / delivered if delivered else 0.0
    # Four sockets per viewer on this machine (client, HAProxy's two, backend); a node
    # holds two of them.
    kernel_per = max(0, kern1 - kern0) / held / 2
    out: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "asked": args.websockets,
        "held": opened,
        "still_open": still,
        "errors": errors,
        "fd_hard_limit": hard,
        "open_seconds": round(open_s, 1),
        "update_rate_asked": rate,
        "update_rate_delivered": round(delivered / held / elapsed, 2) if elapsed else 0.0,
        "seconds": round(elapsed, 1),
        "haproxy_rss_before": rss0,
        "haproxy_rss_held": rss_idle,
        "haproxy_rss_after_updates": rss1,
        "haproxy_cpu_idle": round(idle["cpu"], 3),
        "haproxy_cpu_updates": round(busy["cpu"], 3),
        "kernel_bytes_delta": kern1 - kern0,
        "haproxy_bytes_per_conn": round(max(0, max(rss1, rss_idle) - rss0) / held, 1),
        "haproxy_bytes_per_conn_idle": round(max(0, rss_idle - rss0) / held, 1),
        "haproxy_kernel_bytes_per_conn": round(kernel_per, 1),
        "haproxy_cpu_per_conn_update": cpu_per,
        "l4": bool(args.ws_l4),
        "basis": ("TCP-mode (L4) config" if args.ws_l4 else "generated config")
        + ", HAProxy on one core; bytes per held websocket"
        " (its client and server sides); CPU-seconds per update forwarded to one socket",
    }
    per10k = cpu_per * 10_000 * rate
    print(
        f"websockets held {opened:,} of {n:,} (errors {errors or 0}, still open {still:,});"
        f" opened in {open_s:.1f} s",
        flush=True,
    )
    print(
        f"haproxy rss {rss0 / 2**20:.1f} MiB -> {rss_idle / 2**20:.1f} MiB held"
        f" -> {rss1 / 2**20:.1f} MiB after updates:"
        f" {out['haproxy_bytes_per_conn']:,.0f} bytes per websocket"
        f" (+ kernel about {kernel_per:,.0f}, machine-wide, noisy)"
    )
    print(
        f"updates: {delivered:,} frames in {elapsed:.1f} s"
        f" ({out['update_rate_delivered']:g}/s per socket of {rate:g} asked);"
        f" haproxy cpu {idle['cpu']:.0%} held idle, {busy['cpu']:.0%} with updates:"
        f" {cpu_per * 1e6:.2f} us per update per socket,"
        f" {per10k:.0%} of a core per 10k viewers at {rate:g} updates/s"
    )
    if out["update_rate_delivered"] < 0.9 * rate:
        print(
            f"note: the sockets got {out['update_rate_delivered']:g} of {rate:g} updates/s:"
            " the client and backend core, not HAProxy, set the pace"
        )
    if busy["cpu"] < 0.5:
        # Below saturation HAProxy wakes for fewer events at a time, so each update
        # costs it more than on a busy core.
        print(
            f"note: HAProxy's core was {busy['cpu']:.0%} busy: the CPU per update is an"
            " upper bound (more sockets or --ws-rate load it further)"
        )
    return out
