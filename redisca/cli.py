"""``python -m redisca check|reindex|stats|sweep|migrate MODULE:registry`` (and ``reshard
MODULE:registry Model N``): maintenance from a shell.

argparse only, so the core needs nothing more; ``flask redisca ...``
(:mod:`redisca.flaskcli`) runs the same tasks through the functions here. ``--cluster``
(default: ``$REDISCA_CLUSTER``) makes the client a ``redis.cluster.RedisCluster``.

Exit status: 0 all well; 1 problems found (check, or values reindex could not
index, or expired entities sweep could not remove); 2 bad usage (arguments, a registry
that cannot be imported, an unknown model or field); 3 the task could not run (Redis
unreachable, a reindex already running, a run that lost its marker).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import redis
from redis.exceptions import RedisClusterException

from .conf import CLUSTER_ENV, DEFAULT_URL, Client, cluster_flag, make_client
from .errors import MappingError, RediscaError
from .maintenance import (
    MaintenanceError,
    UnknownName,
    check,
    migrate,
    reindex,
    reshard,
    stats,
    sweep,
)
from .mapping.mapper import Mapper, mapper_of
from .mapping.registry import Registry

OK, PROBLEMS, USAGE, FAILED = 0, 1, 2, 3


class UsageError(Exception):
    """Arguments that name nothing usable (exit status 2)."""


def load_target(spec: str) -> Any:
    """``module:attribute`` → the registry (or class, or list of classes) it names;
    a bare ``module`` means ``module:registry``."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "registry"
    if not module_name:
        raise UsageError(f"{spec!r}: expected MODULE:ATTRIBUTE, e.g. myapp.models:registry")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Registry | Mapper):
        return target
    classes = target if isinstance(target, list | tuple) else [target]
    try:
        for cls in classes:
            mapper_of(cls)
    except MappingError:
        raise UsageError(f"{spec} is not a redisca Registry (nor mapped classes)") from None
    return target


def client_for(url: str | None, cluster: bool | None = None) -> Client:
    """``--url``, else ``$REDIS_URL``, else redis://localhost:6379/0 (as sessions do);
    a ``RedisCluster`` when ``cluster`` (``--cluster``; ``None``: ``$REDISCA_CLUSTER``)."""
    if cluster is None:
        cluster = cluster_flag(os.environ.get(CLUSTER_ENV))
    return make_client(url or os.environ.get("REDIS_URL") or DEFAULT_URL, cluster=cluster)


# -- progress ---------------------------------------------------------------------


class ProgressBar:
    """One line on a terminal, redrawn in place: counts, a bar when the total is known,
    and the rate."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.current: tuple[str, str] | None = None
        self.started = 0.0
        self.width = 0

    def __call__(self, model: str, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if (model, phase) != self.current:
            self.close()
            self.current, self.started = (model, phase), now
        elapsed = now - self.started
        text = f"{model} {phase}: {done:,}"
        if total:
            filled = min(20, int(20 * done / total))
            text = f"{model} {phase} [{'#' * filled}{'.' * (20 - filled)}] {done:,}/{total:,}"
        if done and elapsed > 0.05:
            text += f"  {done / elapsed:,.0f}/s"
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.current is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.current, self.width = None, 0


# -- the tasks, printed ----------------------------------------------------------------


def run_task(
    task: str,
    target: Any,
    client: Client,
    *,
    models: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    batch: int = 500,
    as_json: bool = False,
    progress: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    shards: int | None = None,
) -> int:
    """Run one task and print its report; returns the exit status (``reshard``: the
    model is ``models[0]``, the shard count ``shards``)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    bar = ProgressBar(err) if progress else None
    try:
        if task == "reshard":
            report = reshard(
                target, (models or [""])[0], shards or 0, client, batch=batch, progress=bar
            )
        else:
            report = _run(task, target, client, models or None, fields or None, batch, bar)
    except MaintenanceError as exc:
        _close(bar)
        err.write(f"redisca {task}: {exc}\n")
        return USAGE if isinstance(exc, UnknownName) else FAILED
    except (RediscaError, redis.RedisError, RedisClusterException) as exc:
        _close(bar)
        err.write(f"redisca {task}: {exc}\n")
        return FAILED
    _close(bar)
    if as_json:
        out.write(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        PRINTERS[task](report, out)
    return PROBLEMS if not getattr(report, "ok", True) else OK


def _run(
    task: str,
    target: Any,
    client: Client,
    models: Sequence[str] | None,
    fields: Sequence[str] | None,
    batch: int,
    bar: ProgressBar | None,
) -> Any:
    if task == "check":
        return check(target, client, models=models, batch=batch, progress=bar)
    if task == "reindex":
        return reindex(target, client, models=models, fields=fields, batch=batch, progress=bar)
    if task == "migrate":
        return migrate(target, client, models=models, batch=batch, progress=bar)
    if task == "sweep":
        return sweep(target, client, models=models, batch=batch, progress=bar)
    return stats(target, client, models=models, batch=batch, progress=bar)


def _close(bar: ProgressBar | None) -> None:
    if bar is not None:
        bar.close()


def _print_check(report: Any, out: TextIO) -> None:
    for m in report.models:
        extra = ", reindex running" if m.reindexing else ""
        extra += f", {m.unconfirmed} unconfirmed (kept changing)" if m.unconfirmed else ""
        extra += f", {m.old_keys:,} keys of the layout before hash tags" if m.old_keys else ""
        if m.expired:
            extra += (
                f", {m.expired:,} expired entities not yet swept ({m.expired_entries:,} "
                "entries left; not problems: `sweep` removes them)"
            )
        out.write(
            f"{m.model} ({m.prefix}): {m.entities:,} entities, {m.index_keys:,} other keys, "
            f"{m.entries:,} entries checked, {m.problems} problems, {m.seconds:.2f} s{extra}\n"
        )
    _print_problems(report.problems, out)
    out.write("ok: no problem found\n" if report.ok else f"{len(report.problems)} problems\n")


def _print_problems(problems: Sequence[Any], out: TextIO) -> None:
    for p in problems:
        field = f" [{p.field}]" if p.field else ""
        out.write(f"  {p.kind}: {p.model} {p.key!r}{field}: {p.detail}\n")


def _print_reindex(report: Any, out: TextIO) -> None:
    for m in report.models:
        out.write(
            f"{m.model} ({m.prefix}): rebuilt {', '.join(m.rebuilt)} from {m.entities:,} "
            f"entities ({m.entries:,} entries, {m.retries} pages read again); switched "
            f"{m.renamed:,} keys in, deleted {m.deleted:,}; switch {m.switch_ms} ms, "
            f"{m.seconds:.2f} s\n"
        )
    _print_problems(report.problems, out)
    if not report.ok:
        out.write(f"{len(report.problems)} values could not be indexed\n")


def _print_migrate(report: Any, out: TextIO) -> None:
    for m in report.models:
        kept = f", {m.kept:,} left in place (see below)" if m.kept else ""
        out.write(
            f"{m.model} ({m.prefix}): moved {m.moved:,} entities to the hash-tagged layout, "
            f"deleted {m.dropped:,} old index keys{kept}, {m.seconds:.2f} s\n"
        )
    _print_problems([p for p in report.problems if p not in report.reindex.problems], out)
    _print_reindex(report.reindex, out)


def _print_reshard(report: Any, out: TextIO) -> None:
    for m in report.models:
        found = ", ".join(str(n) for n in m.found_layouts) or "none"
        out.write(
            f"{m.model} ({m.prefix}): {m.shards} shards; layouts found with {found} shards; "
            f"moved {m.moved:,} entities ({m.resumed:,} of an interrupted run, {m.kept:,} "
            f"kept: see below), deleted {m.dropped:,} old keys, {m.seconds:.2f} s\n"
        )
    _print_problems([p for p in report.problems if p not in report.reindex.problems], out)
    _print_reindex(report.reindex, out)


def _print_stats(report: Any, out: TextIO) -> None:
    for m in report.models:
        keys = ", ".join(f"{n:,} {kind}" for kind, n in m.index_keys.items()) or "none"
        memory = f"~{_size(m.memory_total)}" if m.memory_sampled else "n/a"
        reindexing = ", reindex running" if m.reindexing else ""
        if m.expiring:
            reindexing += f"; {m.expiring:,} with an expiry, {m.expired:,} expired not yet swept"
        out.write(
            f"{m.model} ({m.prefix}): {m.entities:,} entities, {m.ids:,} ids, index keys: "
            f"{keys}; {m.index_entries:,} index entries; memory {memory}{reindexing}\n"
        )


def _print_sweep(report: Any, out: TextIO) -> None:
    for m in report.models:
        skipped = f", {m.skipped:,} left (changed meanwhile)" if m.skipped else ""
        out.write(
            f"{m.model} ({m.prefix}): removed {m.removed:,} expired entities{skipped} in "
            f"{m.batches:,} batches, {m.seconds:.2f} s ({m.per_second:,.0f}/s)\n"
        )
    if not report.models:
        out.write("no expiring model (registry.mapped(ttl=...) or expiring=True)\n")
    _print_problems(report.problems, out)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


PRINTERS: dict[str, Callable[[Any, TextIO], None]] = {
    "check": _print_check,
    "reindex": _print_reindex,
    "migrate": _print_migrate,
    "reshard": _print_reshard,
    "stats": _print_stats,
    "sweep": _print_sweep,
}


# -- argparse -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m redisca",
        description="Check, rebuild and count the data of redisca models.",
        epilog="Exit status: 0 ok, 1 problems found, 2 bad usage, 3 could not run.",
    )
    tasks = top.add_subparsers(dest="task", required=True, metavar="TASK")
    helps = {
        "check": "compare every index with the entity hashes (reads only)",
        "reindex": "rebuild indexes from the hashes, while the application runs",
        "stats": "count entities, index keys and entries; estimate memory",
        "sweep": "remove what expired entities left (hashes, index entries, claims)",
        "migrate": "move data of the layout before hash tags (P:<id>) to {P}:<id>, then reindex",
        "reshard": "move a model's data to the shards=N its mapping declares, then reindex",
    }
    for name, text in helps.items():
        sub = tasks.add_parser(name, help=text, description=text)
        sub.add_argument("target", metavar="MODULE:registry", help="the registry to work on")
        if name == "reshard":
            sub.add_argument("model_name", metavar="MODEL", help="the model (class or prefix)")
            sub.add_argument(
                "shards", type=int, metavar="N", help="the shards its mapping now declares"
            )
        sub.add_argument("--url", help="Redis URL (default: $REDIS_URL, else localhost)")
        sub.add_argument(
            "--cluster",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="the URL names a Redis Cluster node (default: $REDISCA_CLUSTER)",
        )
        if name != "reshard":
            sub.add_argument(
                "--model", action="append", metavar="NAME", help="only this model (class or prefix)"
            )
        if name == "reindex":
            sub.add_argument(
                "--field", action="append", metavar="NAME", help="only this indexed attribute"
            )
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--batch", type=int, default=500, help="keys per round trip (500)")
        sub.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress on stderr (default: when stderr is a terminal)",
        )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "field", None) and not args.model:
        sys.stderr.write("redisca reindex: --field needs --model\n")
        return USAGE
    try:
        target = load_target(args.target)
    except UsageError as exc:
        sys.stderr.write(f"redisca {args.task}: {exc}\n")
        return USAGE
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        client = client_for(args.url, args.cluster)
    except ValueError as exc:  # a bad URL or $REDISCA_CLUSTER (a ValidationError)
        sys.stderr.write(f"redisca {args.task}: {exc}\n")
        return USAGE
    except RediscaError as exc:  # a cluster client connects now (an OperationalError)
        sys.stderr.write(f"redisca {args.task}: {exc}\n")
        return FAILED
    try:
        return run_task(
            args.task,
            target,
            client,
            models=[args.model_name] if args.task == "reshard" else args.model,
            fields=getattr(args, "field", None),
            batch=max(1, args.batch),
            as_json=args.json,
            progress=progress,
            shards=getattr(args, "shards", None),
        )
    finally:
        client.close()


__all__ = ["ProgressBar", "UsageError", "client_for", "load_target", "main", "run_task"]
