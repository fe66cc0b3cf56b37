"""Which client redisca makes: ``REDISCA_CLUSTER`` (the environment, ``conf``),
``python -m redisca ... --cluster`` and Flask's ``REDISCA_CLUSTER`` give a
``redis.cluster.RedisCluster`` that sees the whole 3-master test cluster; unset or
false, a plain ``redis.Redis``; a value that is neither, a clear error.

Each client made here is asked the cluster itself (its masters, ``CLUSTER INFO``, a
``PING``), so a client of the right class on the wrong server would fail. At the end,
whole runs through those clients: a Flask app whose requests commit on the cluster, and
``python -m redisca stats --cluster``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from flask import Flask, request
from models import Company, User
from redis.cluster import RedisCluster

import redisca
from redisca import OperationalError, Session, ValidationError, conf
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


# -- end to end ------------------------------------------------------------------------


@pytest.fixture
def flushed(redis_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    """The run's cluster with every master flushed, before and after."""

    def flush() -> None:
        for node in redis_cluster.masters:
            with node.client() as client:
                client.flushall()

    flush()
    yield redis_cluster
    flush()


def _node_of(cluster: EmbeddedCluster, key: str) -> int:
    return cluster.node_for_key(key).port


def test_a_flask_app_commits_on_the_cluster(flushed: EmbeddedCluster) -> None:
    """REDISCA_CLUSTER=True: requests commit through the routing executor, on two
    masters (``{co}`` and ``{usr}`` are served by different ones), read back, and a
    unique value claimed twice is a 409."""
    assert _node_of(flushed, "{co}:c1") != _node_of(flushed, "{usr}:u1")
    app = _app(REDISCA_URL=flushed.url, REDISCA_CLUSTER=True, TESTING=True)
    ext = FlaskRedisca(app, autosave=True)

    @app.post("/users")
    def join() -> Any:
        company = ext.session.get(Company, "c1") or Company("acme", id="c1")
        user = User(request.form["email"], age=int(request.form["age"]), company=company)
        ext.session.add(user)
        return {"id": user.id}, 201

    @app.get("/users/<ident>")
    def show(ident: str) -> Any:
        user = ext.get_or_404(User, ident)
        assert user.company is not None
        return {"email": user.email, "company": user.company.name}

    @app.get("/adults")
    def adults() -> Any:
        query = ext.session.query(User).filter(User.age >= 18).order_by(User.age)
        return {"emails": [u.email for u in query.all()]}

    web = app.test_client()
    made = web.post("/users", data={"email": "ann@x.org", "age": "30"})
    assert made.status_code == 201, made.text
    ident = made.json["id"]
    assert web.post("/users", data={"email": "bob@x.org", "age": "12"}).status_code == 201
    assert web.get(f"/users/{ident}").json == {"email": "ann@x.org", "company": "acme"}
    assert web.get("/adults").json == {"emails": ["ann@x.org"]}
    taken = web.post("/users", data={"email": "ANN@x.org", "age": "40"})
    assert taken.status_code == 409
    assert web.get("/users/zz").status_code == 404

    # what the cluster itself holds, each key read on the master serving it
    with flushed.node_for_key(f"{{usr}}:{ident}").client(decode_responses=True) as node:
        assert node.hget(f"{{usr}}:{ident}", "eml") == "ann@x.org"
        assert node.zcard("{usr}#r:age") == 2
    with flushed.node_for_key("{co}:c1").client(decode_responses=True) as node:
        assert node.hget("{co}:c1", "name") == "acme"
    app.extensions["redisca"].client.close()


def _seed(cluster: EmbeddedCluster, n: int) -> None:
    with cluster.client() as client, Session(client) as session:
        acme = Company("acme", id="c1")
        session.add_all(User(f"u{i}@x.org", age=i, company=acme, id=str(i)) for i in range(n))
        session.commit()


def test_stats_on_the_cluster(flushed: EmbeddedCluster) -> None:
    """``python -m redisca stats models:registry --cluster`` counts the models of every
    master: Company's keys and User's are on different ones."""
    _seed(flushed, 30)
    for args, env in [
        (("--cluster", "--url", flushed.url), {}),
        ((), {"REDIS_URL": flushed.url, "REDISCA_CLUSTER": "1"}),
    ]:
        environ = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **env}
        done = subprocess.run(
            [sys.executable, "-m", "redisca", "stats", "models:registry", "--json", *args],
            capture_output=True,
            text=True,
            env={**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, **environ},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        models = {m["model"]: m for m in json.loads(done.stdout)["models"]}
        assert models["User"]["entities"] == 30 and models["User"]["ids"] == 30
        assert models["Company"]["entities"] == 1 and models["Company"]["ids"] == 1
