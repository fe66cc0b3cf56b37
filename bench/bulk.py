"""A bulk load of many users (1,000,000 by default) in a process of its own, so its peak
memory (``ru_maxrss``) is the load's and nothing else's: ``python -m bench.bulk URL N``
prints the figures as JSON. The users are made as the load reads them (a generator), as
an application streaming them from a file would.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from redisca import inspect

from . import raw, servers
from .model import DataSet, LazyRows, User
from .orm import OrmSide

CHUNK = 5_000


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_kib() -> int:
    """This process's peak resident memory: ``VmHWM``, the high-water mark of its own
    address space. Not ``ru_maxrss``: Linux keeps that across ``exec``, so a child
    started by a big parent (the benchmark after its query phase holds hundreds of MiB)
    reports the parent's peak as its own."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def load(url: str, n: int) -> dict[str, Any]:
    client = servers.client(url)
    client.flushall()
    side = OrmSide(client, DataSet(LazyRows(n), [], [], [], []))
    side.setup()
    before = _rss_kib()
    calls = []
    start = time.perf_counter()
    side.bulk_insert(CHUNK, progress=lambda done, total: calls.append(done))
    seconds = time.perf_counter() - start
    # The load's peak, before the checks below allocate anything.
    peak = _peak_kib() / 1024
    all_ids = inspect(User).layout.all_ids  # usr#r:age, or usr#all in earlier layouts
    stored = int(client.zcard(all_ids) if raw.STRIPED else client.scard(all_ids))
    info = client.info("memory")
    client.flushall(asynchronous=True)
    return {
        "n": n,
        "how": side.bulk_how(CHUNK),
        "seconds": seconds,
        "per_s": n / seconds,
        "rss_before_mib": before / 1024,
        "peak_rss_mib": peak,
        "progress_calls": len(calls),
        "stored": stored,
        "redis_used_memory_mib": int(info["used_memory"]) / 2**20,
    }


def run(url: str, n: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The load in a child process (this one's memory is not the load's)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.bulk", url, str(n)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


if __name__ == "__main__":
    print(json.dumps(load(sys.argv[1], int(sys.argv[2]))))
