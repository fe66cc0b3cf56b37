"""Tables of a run, in reStructuredText (``docs/performance.rst`` shows them as printed)."""

from __future__ import annotations

from typing import Any

from .runner import UNITS

#: Phases that are one unit of work (one commit, one get_many): round trips per phase.
#: The others count round trips per lookup or query.
PER_OP = ("find", "range")
TARGETS = {
    "insert": 0.6,
    "get": 0.7,
    "find": 0.8,
    "range": 0.7,
    "update_plain": 0.5,
    "update_indexed": 0.5,
    "delete": 0.6,
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([rule, line(header), rule, *[line(r) for r in rows], rule])


def _rt(phase: str, figures: dict[str, Any]) -> str:
    trips = figures["round_trips"]
    if phase in PER_OP:
        return f"{trips / figures['ops']:g}"
    return str(trips)


def phase_table(result: dict[str, Any], n: str) -> str:
    entry = result["by_n"][n]
    mine, base = entry["redisca"], entry["baseline"]
    memory = entry.get("memory")
    header = [
        "phase",
        "op",
        "redisca op/s",
        "baseline op/s",
        "ratio",
        "target",
        "round trips",
        "commands/op",
        "client CPU µs/op",
    ]
    if memory:
        header.append("peak MiB")
    header.append("Redis B/entity")
    rows = []
    for phase, m in mine.items():
        b = base[phase]
        ratio = m["ops_per_s"] / b["ops_per_s"]
        target = TARGETS[phase]
        row = [
            phase.replace("_", " "),
            UNITS[phase],
            f"{m['ops_per_s']:,.0f}",
            f"{b['ops_per_s']:,.0f}",
            f"{ratio:.2f}",
            f"{target:.1f} {'ok' if ratio >= target else 'MISSED'}",
            f"{_rt(phase, m)} / {_rt(phase, b)}",
            f"{m['commands_per_op']:.2f} / {b['commands_per_op']:.2f}",
            f"{m['cpu_us_per_op']:.1f} / {b['cpu_us_per_op']:.1f}",
        ]
        if memory:
            mib = 1024 * 1024
            row.append(
                f"{memory['redisca'][phase] / mib:.1f} / {memory['baseline'][phase] / mib:.1f}"
            )
        mem = m.get("redis_bytes_per_entity")
        row.append(f"{mem:.0f} / {b['redis_bytes_per_entity']:.0f}" if mem else "")
        rows.append(row)
    return _table(header, rows)


def growth_table(result: dict[str, Any]) -> str:
    """µs per operation at each N: flat rows mean linear time."""
    ns = list(result["by_n"])
    header = ["phase"] + [f"N={int(n):,}" for n in ns] + ["round trips"]
    rows = []
    first = result["by_n"][ns[0]]["redisca"]
    for phase in first:
        cells = [phase.replace("_", " ")]
        trips = []
        for n in ns:
            m = result["by_n"][n]["redisca"][phase]
            b = result["by_n"][n]["baseline"][phase]
            cells.append(f"{1e6 / m['ops_per_s']:.1f} / {1e6 / b['ops_per_s']:.1f}")
            trips.append(_rt(phase, m))
        cells.append(", ".join(trips))
        rows.append(cells)
    return _table(header, rows)


def render(result: dict[str, Any]) -> str:
    parts = []
    title = f"{result['parser']} parser · {result['server']} · Python {result['python']}"
    title += f" · redis-py {result['redis_py']}"
    for n in result["by_n"]:
        parts.append(f"N = {int(n):,} · {title}\n\n{phase_table(result, n)}\n")
    if len(result["by_n"]) > 1:
        parts.append(f"µs per operation, redisca / baseline · {title}\n\n{growth_table(result)}\n")
    return "\n".join(parts)
