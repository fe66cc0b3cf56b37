"""Tables of a run, in reStructuredText (``docs/performance.rst`` shows them as printed).

Ratios are redisca's speed over a baseline's (operations per second): ``x same-work``
against the hand-written code that sends redisca's commands, ``x floor`` against the
plain pipeline with no guarantees.
"""

from __future__ import annotations

from typing import Any

from . import cluster, expiry, targets
from .runner import UNITS

SIDES = ("redisca", "same-work", "floor")
#: Phases counted per lookup or query; the others per commit or get_many.
PER_OP = ("find", "range")


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([rule, line(header), rule, *[line(r) for r in rows], rule])


def _name(phase: str) -> str:
    return phase.replace("_", " ")


def _us(figures: dict[str, Any]) -> str:
    return f"{figures['us_per_op']:.1f}" if "us_per_op" in figures else "failed"


def _ratio(mine: dict[str, Any], base: dict[str, Any]) -> str:
    value = targets.ratio(mine, base)
    return "-" if value is None else f"{value:.2f}"


def _short(label: str) -> str:
    return label.rsplit(".", 1)[0] if label.count(".") == 2 else label


def phase_table(result: dict[str, Any], n: str) -> str:
    """Both servers side by side: µs per operation of the three sides, and the ratios."""
    servers = [s for s in result["servers"].values() if n in s.get("phases", {})]
    header = ["phase", "op"]
    for server in servers:
        short = _short(server["label"])
        header += [f"{short} µs/op: redisca / same-work / floor", "x same-work", "x floor"]
    header.append("target x floor")
    rows = []
    phases = list(servers[0]["phases"][n]["redisca"]) if servers else []
    for phase in phases:
        row = [_name(phase), UNITS[phase]]
        for server in servers:
            sides = server["phases"][n]
            row.append(" / ".join(_us(sides[s][phase]) for s in SIDES))
            row.append(_ratio(sides["redisca"][phase], sides["same-work"][phase]))
            row.append(_ratio(sides["redisca"][phase], sides["floor"][phase]))
        row.append(f"{targets.FLOOR[phase]:g}")
        rows.append(row)
    return table(header, rows)


def _rt(phase: str, figures: dict[str, Any]) -> str:
    if "round_trips" not in figures:
        return "-"
    trips = figures["round_trips"]
    return f"{trips / figures['ops']:g}" if phase in PER_OP else str(trips)


def detail_table(server: dict[str, Any], n: str) -> str:
    """What each side sent and spent: round trips, commands, client and server CPU."""
    sides = server["phases"][n]
    header = [
        "phase",
        "round trips",
        "commands/op",
        "client CPU µs/op",
        "server CPU µs/op",
        "errors",
    ]
    rows = []
    for phase in sides["redisca"]:
        figs = [sides[s][phase] for s in SIDES]

        def col(key: str, fmt: str, figs: list[dict[str, Any]] = figs) -> str:
            return " / ".join(format(f[key], fmt) if key in f else "-" for f in figs)

        errors = "; ".join(
            f"{s}: {f['error']}" for s, f in zip(SIDES, figs, strict=True) if "error" in f
        )
        rows.append(
            [
                _name(phase),
                " / ".join(_rt(phase, f) for f in figs),
                col("commands_per_op", ".2f"),
                col("cpu_us_per_op", ".1f"),
                col("server_us_per_op", ".1f"),
                errors[:120],
            ]
        )
    if not any(r[-1] for r in rows):
        header.pop()
        rows = [r[:-1] for r in rows]
    return table(header, rows)


def client_memory_table(server: dict[str, Any], n: str) -> str:
    peaks = server["client_memory"][n]
    mib = 1024 * 1024
    rows = [
        [_name(p), " / ".join(f"{peaks[s][p] / mib:.1f}" for s in SIDES)] for p in peaks["redisca"]
    ]
    return table(["phase", "peak MiB: redisca / same-work / floor"], rows)


def growth_table(result: dict[str, Any]) -> str:
    """redisca's µs per operation at each N, on each server: flat rows mean linear time."""
    header = ["phase"]
    columns = []
    for server in result["servers"].values():
        ns = sorted(server.get("phases", {}), key=int)
        for n in ns:
            header.append(f"{_short(server['label'])} N={int(n):,}")
            columns.append((server, n))
        if len(ns) > 1:
            header.append(f"{int(ns[-1]):,} / {int(ns[0]):,}")
            columns.append((server, "ratio"))
    first = columns[0][0]["phases"][sorted(columns[0][0]["phases"], key=int)[0]]["redisca"]
    rows = []
    for phase in first:
        row = [_name(phase)]
        for server, n in columns:
            if n == "ratio":
                ns = sorted(server["phases"], key=int)
                a = server["phases"][ns[0]]["redisca"][phase]
                b = server["phases"][ns[-1]]["redisca"][phase]
                ok = "us_per_op" in a and "us_per_op" in b
                row.append(f"{b['us_per_op'] / a['us_per_op']:.2f}" if ok else "-")
            else:
                row.append(_us(server["phases"][n]["redisca"][phase]))
        rows.append(row)
    return table(header, rows)


def memory_table(result: dict[str, Any]) -> str:
    """Redis memory and keys per inserted user, written with the same ids on every side."""
    header = [
        "server",
        "N",
        "bytes/entity: redisca / same-work / floor",
        "x floor",
        "keys/entity: redisca / same-work / floor",
    ]
    rows = []
    for server in result["servers"].values():
        for n in sorted(server.get("phases", {}), key=int):
            inserts = [server["phases"][n][s].get("insert", {}) for s in SIDES]
            if any("redis_bytes_per_entity" not in f for f in inserts):
                continue
            b = [f["redis_bytes_per_entity"] for f in inserts]
            k = [f["redis_keys_per_entity"] for f in inserts]
            rows.append(
                [
                    _short(server["label"]),
                    f"{int(n):,}",
                    " / ".join(f"{x:.0f}" for x in b),
                    f"{b[0] / b[2]:.2f}",
                    " / ".join(f"{x:.3f}" for x in k),
                ]
            )
    return table(header, rows)


def memory_kinds_table(result: dict[str, Any]) -> str:
    """Where each side's bytes per user go, by key kind, at each server's largest N."""
    header = ["server", "N", "key kind", "redisca B/user", "same-work", "floor"]
    rows = []
    for server in result["servers"].values():
        phases = server.get("phases", {})
        if not phases:
            continue
        n = max(phases, key=int)
        kinds = [phases[n][s].get("insert", {}).get("redis_bytes_by_kind", {}) for s in SIDES]
        for kind in dict.fromkeys(k for side in kinds for k in side):
            cells = [f"{side[kind]:.1f}" if kind in side else "" for side in kinds]
            rows.append([_short(server["label"]), f"{int(n):,}", kind, *cells])
    return table(header, rows) if rows else ""


def query_table(server: dict[str, Any]) -> str:
    """Server time per query (SLOWLOG, median µs) at each size, and wall time."""
    sizes = sorted(server["queries"], key=int)
    header = ["query"] + [f"{int(n):,} server µs" for n in sizes]
    if len(sizes) > 1:
        header.append(f"{int(sizes[-1]):,} / {int(sizes[0]):,}")
    header += [f"{int(n):,} wall ms" for n in sizes] + ["round trips", "results"]
    shapes = list(dict.fromkeys(s for n in sizes for s in server["queries"][n]["shapes"]))
    rows = []
    for shape in shapes:
        figs = [server["queries"][n]["shapes"].get(shape) for n in sizes]
        row = [shape] + [_server_us(f) for f in figs]
        if len(sizes) > 1:
            a, b = figs[0], figs[-1]
            ok = a and b and a.get("server_us") and "server_us" in b
            row.append(f"{b['server_us'] / a['server_us']:.2f}" if ok else "-")
        row += [f"{f['wall_ms']:.2f}" if f and "wall_ms" in f else "-" for f in figs]
        row.append(str(figs[-1].get("round_trips", "-")) if figs[-1] else "-")
        row.append(" / ".join(_results(f) for f in figs))
        rows.append(row)
    return table(header, rows)


def _results(figures: dict[str, Any] | None) -> str:
    if not figures or "results" not in figures:
        return "-"
    return f"{figures['results']:,.0f}"


def _server_us(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "-"
    if "server_us" not in figures:
        return "failed"
    return f"{figures['server_us']:,.0f}"


def query_errors(server: dict[str, Any]) -> list[str]:
    return [
        f"{int(n):,} items, {shape}: {f['error']}"
        for n, level in server["queries"].items()
        for shape, f in level["shapes"].items()
        if "error" in f
    ]


def load_table(server: dict[str, Any]) -> str:
    rows = []
    for n in sorted(server["queries"], key=int):
        load = server["queries"][n]["load"]
        rows.append(
            [
                f"{int(n):,}",
                f"{load['loaded']:,}",
                f"{load['seconds']:.1f}",
                f"{load['per_s']:,.0f}",
                load["how"],
            ]
        )
    return table(["size", "items added", "seconds", "items/s", "how"], rows)


def ping_table(result: dict[str, Any]) -> str:
    rows = []
    for server in result["servers"].values():
        ping = server.get("ping")
        if not ping:
            continue
        for name, f in ping["runs"].items():
            if "worst_ms" in f:
                cells = [
                    f"{f['seconds']:.2f}",
                    f"{f['worst_ms']:.1f}",
                    f"{f['p99_ms']:.1f}",
                    f"{f['median_ms']:.2f}",
                    f"{f['pings']:,}",
                ]
            else:
                cells = [str(f.get("error"))[:60], "", "", "", ""]
            rows.append([_short(server["label"]), f"{ping['n']:,}", name, *cells])
    header = ["server", "N", "write", "seconds", "worst ms", "p99 ms", "median ms", "pings"]
    return table(header, rows)


def bulk_table(result: dict[str, Any]) -> str:
    rows = []
    for server in result["servers"].values():
        f = server.get("bulk")
        if not f:
            continue
        if "seconds" not in f:
            rows.append([_short(server["label"]), "", str(f.get("error"))[:80], "", "", "", ""])
            continue
        rows.append(
            [
                _short(server["label"]),
                f"{f['n']:,}",
                f["how"],
                f"{f['seconds']:.1f}",
                f"{f['per_s']:,.0f}",
                f"{f['peak_rss_mib']:.0f} ({f['rss_before_mib']:.0f} before)",
                f"{f['redis_used_memory_mib']:.0f}",
            ]
        )
    header = ["server", "users", "how", "seconds", "users/s", "peak client RSS MiB", "Redis MiB"]
    return table(header, rows)


def _big(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return "failed: " + str(figures["error"])[:80]
    return f"committed in {figures['seconds']:.1f} s"


def async_table(result: dict[str, Any], n: str) -> str:
    """The async column at N = n: AsyncSession against the floor on redis.asyncio, and
    its ratio beside the sync one's (the target: at least 0.8 of it)."""
    header = ["server", "phase", "async µs/op: redisca / floor", "x floor async", "x floor sync"]
    header += ["async / sync ratio", "client CPU µs/op: async / sync redisca"]
    rows = []
    for server in result["servers"].values():
        sides = server.get("async_phases", {}).get(n)
        sync = server.get("phases", {}).get(n)
        if not sides:
            continue
        for phase, mine in sides["async redisca"].items():
            floor = sides["async floor"].get(phase, {})
            a = _ratio(mine, floor)
            b = _ratio(sync["redisca"][phase], sync["floor"][phase]) if sync else "-"
            try:
                both = f"{float(a) / float(b):.2f}"
            except ValueError:
                both = "-"
            cpu = f"{mine.get('cpu_us_per_op', 0):.1f}"
            if sync and "cpu_us_per_op" in sync["redisca"].get(phase, {}):
                cpu += f" / {sync['redisca'][phase]['cpu_us_per_op']:.1f}"
            row = [server["label"], _name(phase), f"{_us(mine)} / {_us(floor)}", a, b, both, cpu]
            rows.append(row)
    return table(header, rows)


def render(result: dict[str, Any]) -> str:
    """Every table of one run (one parser), then its targets."""
    title = f"{result['parser']} parser · Python {result['python']} · redis-py {result['redis_py']}"
    servers = result["servers"]
    parts = [f"**{title}** · servers: " + ", ".join(s["label"] for s in servers.values())]
    ns = sorted({n for s in servers.values() for n in s.get("phases", {})}, key=int)
    for n in ns:
        parts.append(f"**N = {int(n):,}: µs per operation and ratios**\n\n{phase_table(result, n)}")
        for server in servers.values():
            if n in server.get("phases", {}):
                parts.append(
                    f"**N = {int(n):,} · {server['label']}: redisca / same-work / floor**\n\n"
                    + detail_table(server, n)
                )
            if n in server.get("client_memory", {}):
                parts.append(
                    f"**N = {int(n):,} · {server['label']}: peak Python memory**\n\n"
                    + client_memory_table(server, n)
                )
    for n in sorted({n for s in servers.values() for n in s.get("async_phases", {})}, key=int):
        parts.append(
            f"**N = {int(n):,}: async (AsyncSession vs the floor on redis.asyncio)**\n\n"
            + async_table(result, n)
        )
    if ns:
        parts.append(f"**redisca's µs per operation as N grows**\n\n{growth_table(result)}")
        parts.append(f"**Redis memory per user**\n\n{memory_table(result)}")
        kinds = memory_kinds_table(result)
        if kinds:
            parts.append(f"**Redis memory per user by key kind**\n\n{kinds}")
    for server in servers.values():
        if server.get("queries"):
            parts.append(f"**Query phase · {server['label']}: loading**\n\n{load_table(server)}")
            parts.append(
                f"**Query phase · {server['label']}: server time per query**\n\n"
                + query_table(server)
            )
            errors = query_errors(server)
            if errors:
                parts.append("Failed queries: " + "; ".join(errors))
    if any(s.get("ping") for s in servers.values()):
        parts.append(f"**PING latency during a big write**\n\n{ping_table(result)}")
    big = [
        [_short(s["label"]), f"{s['big_commit']['n']:,}", _big(s["big_commit"])]
        for s in servers.values()
        if s.get("big_commit")
    ]
    if big:
        parts.append(
            "**One commit of many users on a default client (5 s socket timeout)**\n\n"
            + table(["server", "users", "result"], big)
        )
    for server in servers.values():
        if server.get("expiry"):
            figures = server["expiry"]
            parts.append(
                f"**Expiry phase · {server['label']}: N = {figures['n']:,}, half expired and "
                f"not swept, against none expired; then the sweep**\n\n"
                + expiry.render(figures, table)
            )
    if any(s.get("bulk") for s in servers.values()):
        parts.append(f"**Bulk load**\n\n{bulk_table(result)}")
    if result.get("cluster"):
        figures = result["cluster"]
        parts.append(
            f"**Cluster phase: one model, shards=1 vs 16, on 1 and 3 masters (N = "
            f"{figures['n']:,}, commits of {figures['batch']})**\n\n{cluster.render(figures)}"
        )
    checked = targets.check(result)
    lines = [t.line() for t in checked if t.met is not None]
    missing = sum(t.met is None for t in checked)
    if missing:
        lines.append(f"({missing} more targets need figures this run did not measure)")
    if lines:
        parts.append(
            "**Targets**\n\n.. code-block:: text\n\n" + "\n".join("    " + x for x in lines)
        )
    steps = []
    for server in servers.values():
        for step, info in server.get("steps", {}).items():
            load = " ".join(f"{x:.2f}" for x in info["load_before"])
            steps.append([_short(server["label"]), step, f"{info['seconds']:.0f}", load])
    if steps:
        parts.append(
            "**Steps** (load: the machine's 1/5/15-minute load average as the step began)\n\n"
            + table(["server", "step", "seconds", "load before"], steps)
        )
    return "\n\n".join(parts) + "\n"
