"""the cores each tier needs per 100,000 votes/s, from this machine's measured profiles.

``buzzer bench cost`` reads the profiles the other benches wrote (``bench lb`` ->
lb/profiles/measured.json, ``bench redis`` -> lb/profiles/redis.json, ``bench push`` ->
lb/profiles/push.json, ``bench tally`` -> lb/profiles/tally.json), prints each figure's
source and when it was measured, and divides. A figure no bench measured is taken from
the planner's profile and marked as such, so an estimate is never read as a measurement.
``--max-age-h`` flags profiles older than the run it belongs to.

``--measure`` first runs, one after the other in this process, short versions of those
benches (``bench lb --only h2_streams tls_resumed websockets``, ``bench ingest``,
``bench redis``, ``bench tally``, ``bench push`` at a moderate viewer count), writing
their profiles to a directory of this run's own (``--measure-dir``, default a new
temporary one: a short run never overwrites the full runs' profiles the planner reads),
then prints the table from those and says whether every figure is from this run.
``--quick`` makes every step tiny, to check the wiring, not to measure.

Cores are core-seconds per second of peak at 100 % use: the planner adds its headroom
on top (``lb plan``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import importlib
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.tools import jsonline
from lb.planner import MEASURED_DEFAULTS, MEASURED_PATH, REDIS_PATH, PlanInputs, plan

PUSH_PATH = MEASURED_PATH.parent / "push.json"
TALLY_PATH = MEASURED_PATH.parent / "tally.json"
VOTES = 100_000.0
VIEWERS = 1_000_000
DEFAULT_UPDATES_PER_S = 10.0
"""Updates per second per viewer when no profile says (bench push's and lb's default)."""

STEPS = ("lb", "ingest", "redis", "tally", "push")
"""The benches ``--measure`` runs, in this order."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lb", type=Path, default=MEASURED_PATH, help="bench lb's profile")
    p.add_argument("--redis", type=Path, default=REDIS_PATH, help="bench redis's profile")
    p.add_argument("--push", type=Path, default=PUSH_PATH, help="bench push's profile")
    p.add_argument("--tally", type=Path, default=TALLY_PATH, help="bench tally's profile")
    p.add_argument(
        "--max-age-h",
        type=float,
        default=12.0,
        help="flag profiles measured longer ago than this (default 12 h)",
    )
    g = p.add_argument_group("measuring in the same run")
    g.add_argument(
        "--measure",
        action="store_true",
        help="run short versions of the benches first (about 4 minutes) and print the"
        " table from their fresh profiles (--lb/--redis/--push/--tally are then ignored)",
    )
    g.add_argument(
        "--measure-dir",
        type=Path,
        help="where --measure writes its profiles (default: a new temporary directory)",
    )
    g.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="--measure: only these benches (default: all)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="--measure: tiny durations, to check that it runs (the figures mean nothing)",
    )


@dataclass(frozen=True)
class Row:
    tier: str
    what: str
    per_core: float
    """Votes (or viewers) one core handles."""
    demand: float
    """Votes/s (or viewers) the table is for."""
    source: str
    measured: bool

    @property
    def cores(self) -> float:
        return self.demand / self.per_core if self.per_core > 0 else float("nan")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def _stamp(data: dict[str, Any], path: Path) -> str:
    """When the profile was measured: its own timestamp, else the file's mtime."""
    at = data.get("measured_at")
    if at:
        return str(at)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ (file time)", time.gmtime(path.stat().st_mtime))


def _measured_at(data: dict[str, Any], path: Path) -> float:
    at = data.get("measured_at")
    if at:
        return float(calendar.timegm(time.strptime(str(at), "%Y-%m-%dT%H:%M:%SZ")))
    return path.stat().st_mtime


def _age_h(data: dict[str, Any], path: Path) -> float:
    return (time.time() - _measured_at(data, path)) / 3600


def rows(
    lb: dict[str, Any] | None,
    redis: dict[str, Any] | None,
    push: dict[str, Any] | None,
    sources: dict[str, str] | None = None,
    tally: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> list[Row]:
    """The table's rows from the profiles (any may be missing: ``None``). ``ingest`` is
    ``bench ingest``'s summary (its ``vote_rps``: one ingest process on one core), which
    ``--measure`` has in hand; without it the ingest row is bench lb's figure."""
    src = sources or {}
    base = MEASURED_DEFAULTS
    prof = (lb or {}).get("profile", {})
    out: list[Row] = []

    def lb_row(tier: str, what: str, key: str) -> None:
        if prof.get(key):
            out.append(Row(tier, what, float(prof[key]), VOTES, src.get("lb", "bench lb"), True))
        elif key == "haproxy_h2_req_per_s":
            # No h2 figure: the planner costs kept-alive TLS votes at the HTTP/1.1
            # keep-alive figure (lb.planner.Profile.haproxy_h2_req_per_s), so does this.
            ka = prof.get("haproxy_keepalive_req_per_s") or base.haproxy_keepalive_req_per_s
            out.append(Row(tier, what, float(ka), VOTES, "planner: keep-alive figure", False))
        else:
            fallback = float(getattr(base, key))
            out.append(Row(tier, what, fallback, VOTES, "planner default", False))

    lb_row("haproxy", "h2, one kept TLS connection, streams (app clients)", "haproxy_h2_req_per_s")
    lb_row("haproxy", "HTTP/1.1, new resumed TLS connection per vote", "haproxy_tls_resumed_per_s")
    if ingest and ingest.get("vote_rps"):
        s = src.get("ingest", "bench ingest")
        out.append(
            Row(
                "ingest",
                "votes/s per process (one core)",
                float(ingest["vote_rps"]),
                VOTES,
                s,
                True,
            )
        )
    else:
        lb_row("ingest", "votes/s per process (through HAProxy)", "ingest_votes_per_s")
    if redis and redis.get("accepted_per_cpu_s") and redis.get("applied_per_cpu_s"):
        s = src.get("redis", "bench redis")
        out.append(
            Row("redis", "accept (vote_batch.lua)", redis["accepted_per_cpu_s"], VOTES, s, True)
        )
        out.append(Row("redis", "apply (apply.lua)", redis["applied_per_cpu_s"], VOTES, s, True))
    else:
        # The default is for both scripts together: half the time each.
        both = base.redis_votes_per_s
        out.append(Row("redis", "accept + apply", both, VOTES, "planner default", False))
    t = tally or {}
    ts = src.get("tally", "bench tally")

    def tally_row(tier: str, what: str, key: str) -> bool:
        if t.get(key):
            out.append(Row(tier, what, float(t[key]), VOTES, ts, True))
            return True
        return False

    if not tally_row("tally", "consumer (apply.lua), votes/s", "tally_votes_per_cpu_s"):
        out.append(
            Row(
                "tally", "consumer votes/s", base.tally_votes_per_s, VOTES, "planner default", False
            )
        )
    # The writer and the archiver run in the tally process too; unmeasured, they have no
    # planner figure to fall back on, so their rows appear only once bench tally ran.
    tally_row("tally", "PostgreSQL writer (pgwriter.py), votes/s", "pgwriter_votes_per_cpu_s")
    tally_row("tally", "archiver (archiver.py), votes/s", "archiver_votes_per_cpu_s")
    # The writer's load is rows, not votes (see lb.planner): take the planner's row count
    # for this peak and the rows one PostgreSQL core takes, measured or estimated.
    p = plan(PlanInputs(peak_votes_per_s=VOTES, headroom=1.0), base)
    pg_rows = p.load["postgres_rows_per_s"]
    what = f"writer ({pg_rows:,.0f} rows/s at this peak)"
    if t.get("postgres_rows_per_cpu_s"):
        rows_per_core = float(t["postgres_rows_per_cpu_s"])
        out.append(Row("postgres", what, rows_per_core * VOTES / pg_rows, VOTES, ts, True))
    else:
        per_core = base.postgres_rows_per_vcpu_s * VOTES / pg_rows
        out.append(Row("postgres", what, per_core, VOTES, "planner estimate", False))
    tally_row("postgres", "archive (every vote a vote_archive row)", "postgres_archived_per_cpu_s")
    updates = DEFAULT_UPDATES_PER_S
    if push and push.get("updates_per_s"):
        updates = float(push["updates_per_s"])
    if push and push.get("cores_per_1m_viewers"):
        per_core = VIEWERS / float(push["cores_per_1m_viewers"])
        what = f"per 1M viewers, {push.get('updates_per_s', '?')} updates/s"
        out.append(Row("push", what, per_core, VIEWERS, src.get("push", "bench push"), True))
    else:
        out.append(
            Row("push", "per 1M viewers", base.push_viewers, VIEWERS, "planner default", False)
        )
    ws = prof.get("haproxy_cpu_per_conn_update")
    if ws:
        # CPU-seconds per update forwarded to one websocket (bench lb --only websockets):
        # one core forwards 1 / ws updates a second, to 1 / (ws x rate) viewers.
        out.append(
            Row(
                "haproxy",
                f"websocket updates per 1M viewers, {updates:g} updates/s",
                1.0 / (float(ws) * updates),
                VIEWERS,
                src.get("lb", "bench lb"),
                True,
            )
        )
    return out


def totals(rs: list[Row]) -> tuple[float, float]:
    """(cores per VOTES votes/s, cores per VIEWERS viewers). The app-client HAProxy row is
    the one the planner uses for TLS votes on kept connections; the per-vote-connection row
    is its worst case, so the vote total uses h2."""
    per_vote = sum(r.cores for r in rs if r.demand == VOTES and "new resumed" not in r.what)
    per_viewer = sum(r.cores for r in rs if r.demand == VIEWERS)
    return per_vote, per_viewer


def table(rs: list[Row]) -> str:
    head = f"{'tier':<9} {'what':<54} {'per core':>10} {'cores':>7}  source"
    lines = [head, "-" * len(head)]
    for r in rs:
        mark = "" if r.measured else " (not measured)"
        lines.append(
            f"{r.tier:<9} {r.what:<54} {r.per_core:>10,.0f} {r.cores:>7.1f}  {r.source}{mark}"
        )
    return "\n".join(lines)


# -- --measure: the benches, short, in this run ---------------------------------------------


def step_argv(step: str, out: Path, quick: bool) -> list[str]:
    """The command line of one ``--measure`` step: the bench's defaults, shorter."""
    if step == "lb":
        argv = ["--only", "h2_streams", "tls_resumed", "websockets"]
        argv += ["--profile-out", str(out / "measured.json")]
        if quick:
            return [*argv, "--seconds", "0.5", "--rounds", "1", "--websockets", "200",
                    "--ws-seconds", "1"]  # fmt: skip
        return [*argv, "--seconds", "3", "--rounds", "3", "--websockets", "5000",
                "--ws-seconds", "5"]  # fmt: skip
    if step == "ingest":
        return (
            ["--seconds", "0.5", "--rounds", "1"] if quick else ["--seconds", "3", "--rounds", "3"]
        )
    if step == "redis":
        argv = ["--out", str(out / "redis.json")]
        return [*argv, "--seconds", "0.5" if quick else "3", "--rounds", "1" if quick else "3"]
    if step == "tally":
        argv = ["--out", str(out / "tally.json")]
        return [*argv, "--votes", "5000" if quick else "100000", "--rounds", "1" if quick else "3"]
    if step == "push":
        argv = ["--profile-out", str(out / "push.json")]
        if quick:
            return [*argv, "--viewers", "100", "--seconds", "2", "--rounds", "1"]
        return [*argv, "--viewers", "2000", "--seconds", "8", "--rounds", "4"]
    raise ValueError(step)


class _Tee(io.TextIOBase):
    """Prints as it goes and keeps a copy: the bench's last line is its JSON summary."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.out.write(s)
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        self.out.flush()

    def last_json(self) -> dict[str, Any] | None:
        for line in reversed("".join(self.parts).splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    data: dict[str, Any] = json.loads(line)
                    return data
        return None


def run_step(step: str, argv: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Run ``buzzer bench <step> <argv>`` through its module's ``run()``; (exit code, the
    JSON summary it printed). A failing step is reported and the others still run."""
    module = importlib.import_module(f"bench.{step}")
    parser = argparse.ArgumentParser(prog=f"buzzer bench {step}")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            rc = int(module.run(args))
    except Exception as exc:  # one bench failing must not lose the others' figures
        print(f"bench {step} failed: {type(exc).__name__}: {exc}", flush=True)
        return 2, None
    return rc, tee.last_json()


@dataclass
class Measured:
    """What ``--measure`` ran: where its profiles are, and what they can't say."""

    paths: dict[str, Path]
    ingest: dict[str, Any]
    """bench ingest's JSON summary (it writes no profile), with ``measured_at``."""
    started: float
    codes: dict[str, int]
    """Exit code of each step."""


def measure(args: argparse.Namespace) -> Measured:
    """Run the steps, one after the other, and say where their profiles are."""
    out: Path = args.measure_dir or Path(tempfile.mkdtemp(prefix="buzzer-bench-cost-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"measuring {', '.join(args.steps)}; profiles go to {out}", flush=True)
    ingest: dict[str, Any] = {}
    codes: dict[str, int] = {}
    for step in STEPS:
        if step not in args.steps:
            continue
        argv = step_argv(step, out, args.quick)
        print(f"\n== buzzer bench {step} {' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        rc, summary = run_step(step, argv)
        codes[step] = rc
        print(f"== bench {step}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if step == "ingest" and summary:
            ingest = {
                **summary,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (out / "ingest.json").write_text(jsonline.dumps(ingest, indent=2) + "\n")
    paths = {
        "lb": out / "measured.json",
        "redis": out / "redis.json",
        "push": out / "push.json",
        "tally": out / "tally.json",
    }
    return Measured(paths, ingest, started, codes)


def fresh(data: dict[str, Any] | None, path: Path, started: float, ended: float) -> bool:
    """Whether a profile was written, and measured, between ``started`` and ``ended``."""
    if data is None:
        return False
    # measured_at has whole seconds: the run's start is rounded down to match.
    at = _measured_at(data, path)
    return int(started) <= at <= ended + 1 and path.stat().st_mtime >= int(started)


def run(args: argparse.Namespace) -> int:
    files = {"lb": args.lb, "redis": args.redis, "push": args.push, "tally": args.tally}
    ingest: dict[str, Any] | None = None
    started = 0.0
    codes: dict[str, int] = {}
    if args.measure:
        m = measure(args)
        files, ingest, started, codes = m.paths, m.ingest, m.started, m.codes
        print()
    data = {k: _read(p) for k, p in files.items()}
    ended = time.time()
    sources: dict[str, str] = {}
    stale: list[str] = []
    not_fresh: list[str] = []
    for name, d in data.items():
        if d is None:
            print(f"{name:<6} no profile at {files[name]}: run `buzzer bench {name}`")
            not_fresh.append(name)
            continue
        sources[name] = f"bench {name} {_stamp(d, files[name])}"
        if _age_h(d, files[name]) > args.max_age_h:
            stale.append(name)
        if args.measure and not fresh(d, files[name], started, ended):
            not_fresh.append(name)
    if ingest:
        sources["ingest"] = f"bench ingest {ingest['measured_at']}"
    elif args.measure:
        not_fresh.append("ingest")
    print(f"cores per {VOTES:,.0f} votes/s (viewers: per {VIEWERS:,}), at 100 % use\n")
    rs = rows(data["lb"], data["redis"], data["push"], sources, data["tally"], ingest)
    print(table(rs))
    total, viewer_cores = totals(rs)
    print(
        f"\ntotal per {VOTES:,.0f} votes/s (HAProxy as h2 app clients): {total:.1f} cores;"
        f" per {VIEWERS:,} viewers (push + HAProxy updates): {viewer_cores:.1f} cores"
    )
    print(f"seed's figure: 5,000 requests/s per node -> {VOTES / 5000:.0f} nodes for HAProxy alone")
    window = ""
    if args.measure:
        window = (
            f"{time.strftime('%H:%M:%S', time.gmtime(started))}-"
            f"{time.strftime('%H:%M:%S', time.gmtime(ended))} UTC"
        )
        unmeasured = sorted({r.tier for r in rs if not r.measured})
        if not not_fresh and not unmeasured:
            print(f"every figure above was measured in this run, {window}")
        else:
            print(
                f"NOT all from this run ({window}): profiles missing or older:"
                f" {', '.join(not_fresh) or 'none'}; rows not measured:"
                f" {', '.join(unmeasured) or 'none'}"
            )
    if stale:
        print(f"WARNING: profiles older than {args.max_age_h:g} h: {', '.join(stale)}")
    push_cores = sum(r.cores for r in rs if r.tier == "push")
    summary: dict[str, Any] = {
        "bench": "cost",
        "votes_per_s": VOTES,
        "viewers": VIEWERS,
        "rows": [
            {
                "tier": r.tier,
                "what": r.what,
                "per_core": round(r.per_core, 1),
                "cores": round(r.cores, 2),
                "source": r.source,
                "measured": r.measured,
            }
            for r in rs
        ],
        "total_cores_per_100k_votes": round(total, 2),
        "push_cores_per_1m_viewers": round(push_cores, 2),
        "viewer_cores_per_1m_viewers": round(viewer_cores, 2),
        "stale": stale,
    }
    if args.measure:
        summary["measured_in_this_run"] = not not_fresh and all(r.measured for r in rs)
        summary["window"] = window
        summary["profiles_dir"] = str(files["lb"].parent)
        summary["step_exit_codes"] = codes
        summary["not_fresh"] = not_fresh
    print(jsonline.dumps(summary))
    return 0
