"""``flask redisca check|reindex|stats|sweep|migrate|reshard``: the tasks of :mod:`redisca.cli`
inside a Flask app, registered through the ``flask.commands`` entry point.

The registry comes from ``--registry MODULE:ATTR``, else from
``app.config["REDISCA_REGISTRY"]`` (a registry, or ``"module:attr"``). The
connection is the :class:`~redisca.flask.FlaskRedisca` extension's client when
the app has one, else one made from ``REDISCA_URL`` / ``REDISCA`` as the extension
would, unless ``--url`` or ``--cluster``/``--no-cluster`` is given. A client made
here is a ``RedisCluster`` per ``--cluster``, else ``app.config["REDISCA_CLUSTER"]``,
else ``$REDISCA_CLUSTER``. This module alone imports Flask and click.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from . import cli as shell
from .conf import CLUSTER_ENV, Client, cluster_flag, make_client
from .errors import RediscaError
from .flask import EXTENSION_KEY, ConfigurationError, _client_from_config, _cluster_setting

CONFIG_KEY = "REDISCA_REGISTRY"

group = AppGroup("redisca", help="Check, rebuild and count redisca's data (docs: operations).")


def _target(spec: str | None) -> Any:
    value = spec if spec is not None else current_app.config.get(CONFIG_KEY)
    if value is None:
        raise click.UsageError(
            f"name the registry: --registry MODULE:ATTR, or app.config[{CONFIG_KEY!r}]"
        )
    if not isinstance(value, str):
        return value
    try:
        return shell.load_target(value)
    except shell.UsageError as exc:
        raise click.UsageError(str(exc)) from None


def _client(url: str | None, cluster: bool | None) -> tuple[Client, bool]:
    """The client, and whether this command made it (and must close it)."""
    state = current_app.extensions.get(EXTENSION_KEY)
    if url is None and cluster is None and state is not None:
        return state.client, False
    try:
        if cluster is None:
            cluster = _cluster_default()
        if url:
            return make_client(url, cluster=cluster), True
        return _client_from_config(current_app.config, cluster), True
    except (ConfigurationError, ValueError) as exc:  # ValueError: a bad URL or setting
        raise click.UsageError(str(exc)) from None


def _cluster_default() -> bool:
    """``app.config["REDISCA_CLUSTER"]`` when the app sets it, else ``$REDISCA_CLUSTER``."""
    if CLUSTER_ENV in current_app.config:
        return _cluster_setting(current_app.config)
    return cluster_flag(os.environ.get(CLUSTER_ENV))


def _options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--registry", "spec", metavar="MODULE:ATTR", help="the registry"),
            click.option("--url", help="Redis URL (default: the app's)"),
            click.option(
                "--cluster/--no-cluster",
                default=None,
                help="the URL names a Redis Cluster node (default: the app's "
                "REDISCA_CLUSTER, else $REDISCA_CLUSTER)",
            ),
            click.option("--model", "models", multiple=True, help="only this model"),
            click.option("--json", "as_json", is_flag=True, help="machine-readable output"),
            click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True),
            click.option(
                "--progress/--no-progress",
                default=None,
                help="progress on stderr (default: when stderr is a terminal)",
            ),
        ]
    ):
        func = option(func)
    return func


def _run(
    task: str, options: dict[str, Any], fields: tuple[str, ...] = (), shards: int | None = None
) -> None:
    if fields and not options["models"]:
        raise click.UsageError("--field needs --model")
    target = _target(options["spec"])
    try:
        client, made = _client(options["url"], options["cluster"])
    except RediscaError as exc:  # a cluster client connects at once (OperationalError)
        sys.stderr.write(f"redisca {task}: {exc}\n")
        raise click.exceptions.Exit(shell.FAILED) from None
    progress = options["progress"]
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        status = shell.run_task(
            task,
            target,
            client,
            models=list(options["models"]) or None,
            fields=list(fields) or None,
            batch=options["batch"],
            as_json=options["as_json"],
            progress=progress,
            out=sys.stdout,
            err=sys.stderr,
            shards=shards,
        )
    finally:
        if made:
            client.close()
    if status:
        raise click.exceptions.Exit(status)


@group.command("check")
@_options
def check_command(**options: Any) -> None:
    """Compare every index with the entity hashes (reads only); exit 1 on problems."""
    _run("check", options)


@group.command("reindex")
@_options
@click.option("--field", "fields", multiple=True, help="only this indexed attribute")
def reindex_command(fields: tuple[str, ...], **options: Any) -> None:
    """Rebuild indexes from the hashes, while the application keeps running."""
    _run("reindex", options, fields)


@group.command("stats")
@_options
def stats_command(**options: Any) -> None:
    """Count entities, index keys and entries; estimate memory."""
    _run("stats", options)


@group.command("sweep")
@_options
def sweep_command(**options: Any) -> None:
    """Remove what expired entities left (hashes, index entries, claims)."""
    _run("sweep", options)


@group.command("migrate")
@_options
def migrate_command(**options: Any) -> None:
    """Move data of the layout before hash tags (P:<id>) to {P}:<id>, then reindex."""
    _run("migrate", options)


@group.command("reshard")
@click.argument("model")
@click.argument("shards", type=click.IntRange(min=1))
@_options
def reshard_command(model: str, shards: int, **options: Any) -> None:
    """Move MODEL's data to the SHARDS its mapping declares, then reindex."""
    options["models"] = (model,)
    _run("reshard", options, shards=shards)


#: What the ``flask.commands`` entry point names.
cli = group

__all__ = ["CONFIG_KEY", "cli", "group"]
