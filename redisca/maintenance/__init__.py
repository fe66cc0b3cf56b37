"""Operations on stored data: check the indexes, rebuild them, count what is there.

``check`` and ``stats`` only read; ``reindex`` rebuilds indexes while the
application keeps committing; ``sweep`` removes what expired entities left;
``migrate`` moves data of the layout before hash tags into today's; ``reshard``
moves a model's data to the number of shards it now declares. ``python -m
redisca`` runs them from a shell (``docs/operations.rst``).
"""

from __future__ import annotations

from .check import CheckReport, ModelSummary, check
from .common import MaintenanceError, Progress, UnknownName
from .migrate import MigrateReport, ModelMigration, migrate
from .problems import KINDS, Problem
from .reindex import DEFAULT_TTL, ModelReindex, ReindexReport, RunLost, reindex
from .reshard import ModelReshard, ReshardReport, reshard
from .stats import ModelStats, StatsReport, stats
from .sweep import ModelSweep, SweepReport, sweep

__all__ = [
    "DEFAULT_TTL",
    "KINDS",
    "CheckReport",
    "MaintenanceError",
    "MigrateReport",
    "ModelMigration",
    "ModelReindex",
    "ModelReshard",
    "ModelStats",
    "ModelSummary",
    "ModelSweep",
    "Problem",
    "Progress",
    "ReindexReport",
    "ReshardReport",
    "RunLost",
    "StatsReport",
    "SweepReport",
    "UnknownName",
    "check",
    "migrate",
    "reindex",
    "reshard",
    "stats",
    "sweep",
]
