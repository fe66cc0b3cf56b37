"""Which client redisca makes: ``REDISCA_CLUSTER`` (the environment, ``conf``),
``python -m redisca ... --cluster`` and Flask's ``REDISCA_CLUSTER`` give a
``redis.cluster.RedisCluster`` that sees the whole 3-master test cluster; unset or
false, a plain ``redis.Redis``; a value that is neither, a clear error.

Each client made here is asked the cluster itself (its masters, ``CLUSTER INFO``, a
``PING``), so a client of the right class on the wrong server would fail."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from flask import Flask
from redis.cluster import RedisCluster

import redisca
from redisca import OperationalError, ValidationError, conf
from redisca.cli import FAILED, USAGE, client_for, parser
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.flask import ConfigurationError, FlaskRedisca
from redisca.flaskcli import _client as flask_cli_client

TESTS = Path(__file__).parent
TRUE = ["1", "true", "TRUE", "yes", "Yes", " true "]
FALSE = ["", "0", "false", "False", "no", "NO"]


def sees_the_cluster(client: Any, cluster: EmbeddedCluster) -> None:
    """``client`` is a RedisCluster that knows the test cluster's three masters and
    talks to it."""
    assert isinstance(client, RedisCluster)
    ports = sorted(node.port for node in client.get_primaries())
    assert ports == sorted(node.port for node in cluster.masters)
    info = client.cluster_info()
    assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3
    assert client.ping() is True


@pytest.fixture
def url_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Any]]:
    """No ``conf.db``, no ``REDIS_URL``/``REDISCA_CLUSTER``, and a cache of URL clients
    of this test's own (closed after it)."""
    made: dict[Any, Any] = {}
    monkeypatch.setattr(conf, "db", None)
    monkeypatch.setattr(conf, "_url_clients", made)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDISCA_CLUSTER", raising=False)
    yield made
    for client in made.values():
        client.close()


# -- the flag --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [*TRUE, True, 1])
def test_cluster_flag_on(value: object) -> None:
    assert conf.cluster_flag(value) is True


@pytest.mark.parametrize("value", [*FALSE, None, False, 0])
def test_cluster_flag_off(value: object) -> None:
    assert conf.cluster_flag(value) is False


@pytest.mark.parametrize("value", ["maybe", "2", "on", "y", 2, 1.0, ["1"]])
def test_cluster_flag_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValidationError, match=r"REDISCA_CLUSTER=.*expected 1, true or yes") as e:
        conf.cluster_flag(value)
    assert e.value.field == "REDISCA_CLUSTER" and e.value.value == value
    assert isinstance(e.value, ValueError)


# -- conf ------------------------------------------------------------------------------


def test_redis_url_with_redisca_cluster_gives_a_cluster_client(
    redis_cluster: EmbeddedCluster, url_clients: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    monkeypatch.setenv("REDISCA_CLUSTER", "1")
    client = conf.default_client()
    sees_the_cluster(client, redis_cluster)
    assert conf.default_client() is client  # one per URL, as for a plain client
    assert redisca.Session().bind_for(object) is client
    assert redisca.Key("k").db is client

    monkeypatch.setenv("REDISCA_CLUSTER", "no")  # the same URL, now a plain client
    plain = conf.default_client()
    assert type(plain) is redis.Redis and plain is not client
    assert plain.connection_pool.connection_kwargs["port"] == redis_cluster.masters[0].port


def test_a_bad_redisca_cluster_is_a_clear_error(
    redis_cluster: EmbeddedCluster, url_clients: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    monkeypatch.setenv("REDISCA_CLUSTER", "cluster")
    with pytest.raises(ValidationError, match="REDISCA_CLUSTER='cluster'"):
        conf.default_client()
    with pytest.raises(ValidationError, match="REDISCA_CLUSTER"):
        redisca.Session().bind_for(object)
    assert url_clients == {}


def test_conf_db_may_be_a_cluster_client(
    redis_cluster: EmbeddedCluster, url_clients: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_cluster.client()
    monkeypatch.setattr(conf, "db", client)
    monkeypatch.setenv("REDISCA_CLUSTER", "not even read")
    assert conf.default_client() is client
    sees_the_cluster(conf.default_client(), redis_cluster)
    client.close()


def test_make_client(redis_cluster: EmbeddedCluster, redis_server: EmbeddedServer) -> None:
    plain = conf.make_client(redis_cluster.url)
    assert type(plain) is redis.Redis
    assert plain.execute_command("CLUSTER", "INFO")  # a node, spoken to as one server
    plain.close()
    # keyword arguments alone, and 1.x's {"db": 0}, which RedisCluster itself refuses
    node = redis_cluster.masters[1]
    options = {"host": "127.0.0.1", "port": node.port, "db": 0, "decode_responses": True}
    client = conf.make_client(None, cluster=True, **options)
    sees_the_cluster(client, redis_cluster)
    assert client.set("k", "v") and client.get("k") == "v"
    client.delete("k")
    client.close()


def test_a_cluster_client_for_what_is_no_cluster_is_an_operational_error(
    redis_cluster: EmbeddedCluster, redis_server: EmbeddedServer
) -> None:
    with pytest.raises(OperationalError, match="Cluster mode is not enabled") as e:
        conf.make_client(redis_server.url, cluster=True)
    assert e.value.orig is not None
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(OperationalError) as e:
        conf.make_client(url, cluster=True)
    assert "s3cret" not in str(e.value)  # a URL's password is not repeated


@pytest.mark.parametrize(
    ("path", "options"), [("/3", {}), ("/0?db=2", {}), ("", {"db": 1}), ("/4", {"db": 0})]
)
def test_a_cluster_has_database_0_only(
    redis_cluster: EmbeddedCluster, path: str, options: dict[str, Any]
) -> None:
    url = redis_cluster.url.rsplit("/", 1)[0] + path
    with pytest.raises(ValidationError, match="a Redis Cluster has database 0 only") as e:
        conf.make_client(url, cluster=True, **options)
    assert e.value.field == "db" and e.value.value != 0


# -- python -m redisca ------------------------------------------------------------------


def test_every_task_takes_cluster() -> None:
    for task in ("check", "reindex", "stats", "migrate"):
        assert parser().parse_args([task, "m:r", "--cluster"]).cluster is True
        assert parser().parse_args([task, "m:r", "--no-cluster"]).cluster is False
        assert parser().parse_args([task, "m:r"]).cluster is None


def test_client_for(
    redis_cluster: EmbeddedCluster, url_clients: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with client_for(redis_cluster.url, True) as client:
        sees_the_cluster(client, redis_cluster)
    plain = client_for(redis_cluster.url)  # no flag, no $REDISCA_CLUSTER
    assert type(plain) is redis.Redis
    plain.close()
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    monkeypatch.setenv("REDISCA_CLUSTER", "Yes")
    with client_for(None) as client:  # both from the environment
        sees_the_cluster(client, redis_cluster)
    plain = client_for(None, False)  # --no-cluster wins over the environment
    assert type(plain) is redis.Redis
    plain.close()
    monkeypatch.setenv("REDISCA_CLUSTER", "sure")
    with pytest.raises(ValidationError, match="REDISCA_CLUSTER='sure'"):
        client_for(None)


def _redisca(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **env}
    environ.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "redisca", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=120)


def test_the_command_line_refuses_a_bad_flag_or_a_server_that_is_no_cluster(
    redis_server: EmbeddedServer,
) -> None:
    done = _redisca("stats", "models:registry", "--url", redis_server.url, REDISCA_CLUSTER="2")
    assert done.returncode == USAGE, done.stderr
    assert "REDISCA_CLUSTER='2': expected 1, true or yes" in done.stderr
    assert "Traceback" not in done.stderr
    done = _redisca("stats", "models:registry", "--url", redis_server.url, "--cluster")
    assert done.returncode == FAILED, done.stderr
    assert "redisca stats: cannot make a Redis Cluster client" in done.stderr
    assert "Cluster mode is not enabled" in done.stderr and "Traceback" not in done.stderr


# -- Flask -------------------------------------------------------------------------------


def _app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


@pytest.mark.parametrize("flag", [True, "1", "true", 1])
def test_flask_redisca_cluster_makes_a_cluster_client(
    redis_cluster: EmbeddedCluster, flag: object
) -> None:
    app = _app(REDISCA_URL=redis_cluster.url, REDISCA_CLUSTER=flag)
    ext = FlaskRedisca(app)
    with app.app_context():
        sees_the_cluster(ext.client, redis_cluster)
        assert ext.session.bind_for(object) is ext.client
    app.extensions["redisca"].client.close()


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_flask_redisca_cluster_from_the_environment_as_the_docs_say(
    redis_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLASK_REDISCA_URL", redis_cluster.url)
    monkeypatch.setenv("FLASK_REDISCA_CLUSTER", value)  # JSON: 1 and true, else a str
    app = Flask(__name__)
    app.config.from_prefixed_env()
    FlaskRedisca(app)
    client = app.extensions["redisca"].client
    sees_the_cluster(client, redis_cluster)
    client.close()


def test_flask_cluster_from_redisca_options_alone(redis_cluster: EmbeddedCluster) -> None:
    node = redis_cluster.masters[2]
    app = _app(REDISCA={"host": "127.0.0.1", "port": node.port, "db": 0}, REDISCA_CLUSTER=True)
    FlaskRedisca(app)
    client = app.extensions["redisca"].client
    sees_the_cluster(client, redis_cluster)
    client.close()


@pytest.mark.parametrize("flag", [None, False, "0", ""])
def test_flask_without_redisca_cluster_the_client_is_plain(
    redis_cluster: EmbeddedCluster, flag: object
) -> None:
    app = _app(REDISCA_URL=redis_cluster.url)
    if flag is not None:
        app.config["REDISCA_CLUSTER"] = flag
    FlaskRedisca(app)
    assert type(app.extensions["redisca"].client) is redis.Redis


def test_flask_bad_redisca_cluster(
    redis_cluster: EmbeddedCluster, redis_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(REDISCA_URL=redis_cluster.url, REDISCA_CLUSTER="please")
    with pytest.raises(ConfigurationError, match=r"app.config\['REDISCA_CLUSTER'\]='please'"):
        FlaskRedisca(app)
    assert "redisca" not in app.extensions
    # the extension reads the app's config only, not the environment
    monkeypatch.setenv("REDISCA_CLUSTER", "1")
    FlaskRedisca(app := _app(REDISCA_URL=redis_server.url))
    assert type(app.extensions["redisca"].client) is redis.Redis
    # a server that is no cluster node; a database other than 0
    with pytest.raises(OperationalError, match="Cluster mode is not enabled"):
        FlaskRedisca(_app(REDISCA_URL=redis_server.url, REDISCA_CLUSTER=True))
    with pytest.raises(ConfigurationError, match="database 0 only, not 5"):
        node = {"host": "127.0.0.1", "port": redis_cluster.masters[0].port, "db": 5}
        FlaskRedisca(_app(REDISCA=node, REDISCA_CLUSTER=1))


def test_flask_commands_pick_the_client(
    redis_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flask redisca``: --cluster/--no-cluster, else the app's REDISCA_CLUSTER, else
    $REDISCA_CLUSTER; the extension's own client when neither --url nor a flag is given."""
    monkeypatch.delenv("REDISCA_CLUSTER", raising=False)
    url = redis_cluster.url

    def picked(app: Flask, url: str | None, cluster: bool | None) -> Any:
        """The client's class after checking a cluster client against the cluster."""
        with app.app_context():
            client, made = flask_cli_client(url, cluster)
        if isinstance(client, RedisCluster):
            sees_the_cluster(client, redis_cluster)
        if made:
            client.close()
        return client if not made else type(client)

    bare = _app(REDISCA_URL=url)  # no extension
    assert picked(bare, None, None) is redis.Redis
    assert picked(bare, None, True) is RedisCluster
    assert picked(bare, url, True) is RedisCluster
    monkeypatch.setenv("REDISCA_CLUSTER", "true")
    assert picked(bare, None, None) is RedisCluster
    assert picked(bare, url, False) is redis.Redis
    configured = _app(REDISCA_URL=url, REDISCA_CLUSTER=False)  # the app's config wins
    assert picked(configured, None, None) is redis.Redis
    monkeypatch.delenv("REDISCA_CLUSTER")

    app = _app(REDISCA_URL=url, REDISCA_CLUSTER=True)
    FlaskRedisca(app)
    assert picked(app, None, None) is app.extensions["redisca"].client  # not made: kept
    assert picked(app, url, None) is RedisCluster  # --url: with the app's flag
    assert picked(app, None, False) is redis.Redis
    app.extensions["redisca"].client.close()

    with pytest.raises(click.UsageError, match="REDISCA_CLUSTER"):
        picked(_app(REDISCA_URL=url, REDISCA_CLUSTER="x"), None, None)
    monkeypatch.setenv("REDISCA_CLUSTER", "x")
    with pytest.raises(click.UsageError, match="REDISCA_CLUSTER='x'"):
        picked(bare, url, None)
