"""Operations on stored data: check the indexes, rebuild them, count what is there.

``check`` and ``stats`` only read; ``reindex`` rebuilds indexes while the
application keeps committing. ``python -m redisca`` runs them from a shell
(``docs/operations.rst``).
"""

from __future__ import annotations

from .check import CheckReport, ModelSummary, check
from .common import MaintenanceError, Progress, UnknownName
from .problems import KINDS, Problem
from .reindex import DEFAULT_TTL, ModelReindex, ReindexReport, RunLost, reindex
from .stats import ModelStats, StatsReport, stats

__all__ = [
    "DEFAULT_TTL",
    "KINDS",
    "CheckReport",
    "MaintenanceError",
    "ModelReindex",
    "ModelStats",
    "ModelSummary",
    "Problem",
    "Progress",
    "ReindexReport",
    "RunLost",
    "StatsReport",
    "UnknownName",
    "check",
    "reindex",
    "stats",
]
