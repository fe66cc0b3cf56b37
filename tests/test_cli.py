"""The command line: ``python -m redisca check|reindex|stats MODULE:registry`` run as a
subprocess against the test server (output, JSON, exit codes, progress), and the same
tasks as ``flask redisca ...`` (click's runner, and the ``flask`` command itself through
the ``flask.commands`` entry point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from helpers import CLUSTER, as_str, guard_key, stripe_key
from models import Company, User, registry

from redisca import Session
from redisca.cli import FAILED, OK, PROBLEMS, USAGE, ProgressBar, run_task
from redisca.flask import FlaskRedisca
from redisca.flaskcli import cli as flask_cli

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _cluster_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the suite's cluster mode the URLs name a cluster node: the commands are told so
    as a user tells them (``$REDISCA_CLUSTER``, which the subprocesses inherit)."""
    if CLUSTER:
        monkeypatch.setenv("REDISCA_CLUSTER", "1")


def seed(r: redis.Redis, n: int = 30) -> None:
    with Session(r) as s:
        acme = Company("acme", id="c1")
        s.add_all(User(f"u{i}@x.org", age=i, company=acme, id=str(i)) for i in range(n))
        s.commit()


@pytest.fixture
def r(make_client: Any) -> redis.Redis:
    """One client mode is enough here: the commands make their own clients."""
    client: redis.Redis = make_client()
    client.flushall()
    return client


class Done:
    """A finished command; its output decoded as is (a terminal's \r kept)."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = done.returncode
        self.stdout = done.stdout.decode()
        self.stderr = done.stderr.decode()


def run_cmd(command: list[str], env: dict[str, str]) -> Done:
    return Done(subprocess.run(command, capture_output=True, env=env, timeout=120))


def redisca_cmd(*args: str, url: str) -> Done:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("REDIS_URL", None)
    return run_cmd([sys.executable, "-m", "redisca", *args, "--url", url], env)


# -- python -m redisca ---------------------------------------------------------------------


def test_check_clean_then_broken_then_reindexed(r: redis.Redis, redis_url: str) -> None:
    seed(r)
    done = redisca_cmd("check", "models:registry", url=redis_url)
    assert done.returncode == OK, done.stderr
    assert "User (usr): 30 entities" in done.stdout and "ok: no problem found" in done.stdout
    assert done.stderr == ""  # not a terminal: no progress

    r.zrem("{co}#all", "c1")
    r.zadd("{usr}#all", {"3": 0})  # User's ids are in usr#r:age: a leftover
    r.sadd("{usr}#i:company:c2", "4")
    done = redisca_cmd("check", "models:registry", url=redis_url)
    assert done.returncode == PROBLEMS
    assert "missing_from_all: Company '{co}#all': c1 has a hash" in done.stdout
    assert "old_layout: User '{usr}#all': an all-ids set the model no longer keeps" in done.stdout
    assert "orphan_entry: User '{usr}#i:company:c2' [company]" in done.stdout
    assert done.stdout.rstrip().endswith("3 problems")

    done = redisca_cmd("reindex", "models:registry", "--batch", "7", url=redis_url)
    assert done.returncode == OK, done.stderr
    assert "Company (co): rebuilt #all, name from 1 entities" in done.stdout
    assert "User (usr): rebuilt eml, age, company from 30 entities" in done.stdout
    assert not r.exists("{usr}#all")
    assert redisca_cmd("check", "models", url=redis_url).returncode == OK  # module:registry


def test_json_output(r: redis.Redis, redis_url: str) -> None:
    seed(r)
    stripe = as_str(stripe_key("usr", "eml", "u7@x.org"))
    r.hdel(stripe, "u7@x.org")
    done = redisca_cmd("check", "models:registry", "--json", "--model", "User", url=redis_url)
    assert done.returncode == PROBLEMS
    report = json.loads(done.stdout)
    assert report["ok"] is False and [m["model"] for m in report["models"]] == ["User"]
    assert report["problems"] == [
        {
            "kind": "missing_unique",
            "model": "User",
            "key": stripe,
            "field": "email",
            "detail": "value 'u7@x.org': 7 holds the value, the stripe does not name it",
        }
    ]

    done = redisca_cmd(
        "reindex", "models:registry", "--json", "--model", "usr", "--field", "email", url=redis_url
    )
    assert done.returncode == OK, done.stderr
    run = json.loads(done.stdout)["models"][0]
    assert (run["model"], run["rebuilt"], run["entities"]) == ("User", ["eml"], 30)

    done = redisca_cmd("stats", "models:registry", "--json", url=redis_url)
    assert done.returncode == OK
    stats = {m["model"]: m for m in json.loads(done.stdout)["models"]}
    assert stats["User"]["entities"] == stats["User"]["ids"] == 30
    stripes = len({stripe_key("usr", "eml", f"u{i}@x.org") for i in range(30)})
    guards = len({guard_key("usr", str(i)) for i in range(30)})
    assert stats["User"]["index_keys"] == {  # no "all": usr#r:age holds the ids
        "eq": 1, "range": 1, "unique": stripes, "guard": guards,
    }  # fmt: skip
    # the company set, the age index, the emails in their stripes
    assert stats["User"]["index_entries"] == 90 and stats["User"]["memory_total"] > 0


def test_stats_text(r: redis.Redis, redis_url: str) -> None:
    seed(r, 5)
    done = redisca_cmd("stats", "models:registry", "--model", "Company", url=redis_url)
    assert done.returncode == OK
    assert done.stdout.startswith("Company (co): 1 entities, 1 ids, index keys: 1 all, 1 unique")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "nope_module:registry"], "cannot import 'nope_module'"),
        (["check", "models:nothing"], "has no attribute 'nothing'"),
        (["check", "models:UTC"], "not a redisca Registry"),
        (["check", "models:datetime"], "not a redisca Registry"),
        (["check", "models:User"], None),
        (["check", "models:registry", "--model", "Nope"], "no mapped model 'Nope'"),
        (["reindex", "models:registry", "--field", "age"], "--field needs --model"),
        (["reindex", "models:registry", "--model", "User", "--field", "nickname"], "not indexed"),
    ],
)
def test_usage_errors_exit_2(redis_url: str, args: list[str], message: str | None) -> None:
    done = redisca_cmd(*args, url=redis_url)
    if message is None:  # a mapped class is a fine target too
        assert done.returncode == OK, done.stderr
        return
    assert done.returncode == USAGE
    assert message in done.stderr and done.stdout == ""


def test_argparse_errors_exit_2(redis_url: str) -> None:
    done = redisca_cmd("frobnicate", "models:registry", url=redis_url)
    assert done.returncode == USAGE and "invalid choice" in done.stderr


def test_a_run_that_cannot_start_exits_3(r: redis.Redis, redis_url: str) -> None:
    seed(r, 3)
    r.rpush("{usr}#x", "abcd", "#all")  # another run's marker
    done = redisca_cmd("reindex", "models:registry", "--model", "User", url=redis_url)
    assert done.returncode == FAILED and "running already" in done.stderr


def test_an_unreachable_server_exits_3(redis_url: str) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(port=1, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    out, err = _Text(), _Text()
    assert run_task("check", registry, client, out=out, err=err) == FAILED
    assert err.text.startswith("redisca check: ") and "onnect" in err.text


def test_progress_goes_to_stderr_when_asked(r: redis.Redis, redis_url: str) -> None:
    seed(r, 50)
    done = redisca_cmd("check", "models:registry", "--progress", "--batch", "5", url=redis_url)
    assert done.returncode == OK
    assert "\rUser entities [" in done.stderr and "/50" in done.stderr
    assert "ok: no problem found" in done.stdout and "\r" not in done.stdout


def test_the_progress_bar_shows_counts_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr("redisca.cli.time.monotonic", lambda: next(clock))
    out = _Text()
    bar = ProgressBar(out)  # type: ignore[arg-type]
    bar("User", "entities", 0, 1000)
    bar("User", "entities", 500, 1000)
    bar("User", "index keys", 7, None)
    bar.close()
    lines = out.text.split("\n")
    assert lines[0].endswith("\rUser entities [##########..........] 500/1,000  500/s")
    assert lines[1] == "\rUser index keys: 7" and lines[2] == ""


class _Text:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# -- flask redisca ------------------------------------------------------------------------


def make_app(redis_url: str, **config: Any) -> Flask:
    app = Flask("cli_test_app")
    if CLUSTER:
        app.config["REDISCA_CLUSTER"] = True
    app.config.update(config)
    if "REDISCA_URL" in config or "REDISCA" in config:
        FlaskRedisca(app)
    return app


def test_the_entry_point_names_the_group() -> None:
    (point,) = [p for p in entry_points(group="flask.commands") if p.name == "redisca"]
    assert point.load() is flask_cli


def test_flask_commands_with_the_extensions_client(r: redis.Redis, redis_url: str) -> None:
    seed(r)
    app = make_app(redis_url, REDISCA_URL=redis_url, REDISCA_REGISTRY="models:registry")
    runner = app.test_cli_runner()
    done = runner.invoke(flask_cli, ["check"])
    assert done.exit_code == OK, done.output
    assert "ok: no problem found" in done.output

    r.zrem("{usr}#r:age", "3")
    done = runner.invoke(flask_cli, ["check", "--json", "--model", "User"])
    assert done.exit_code == PROBLEMS
    assert [p["kind"] for p in json.loads(done.stdout)["problems"]] == ["missing_entry"]

    done = runner.invoke(flask_cli, ["reindex", "--model", "User", "--batch", "4"])
    assert done.exit_code == OK, done.output
    assert runner.invoke(flask_cli, ["check"]).exit_code == OK
    done = runner.invoke(flask_cli, ["stats", "--json"])
    assert done.exit_code == OK
    assert {m["model"] for m in json.loads(done.stdout)["models"]} == {"User", "Company"}


def test_check_reports_the_layout_before_hash_tags_and_migrate_moves_it(
    r: redis.Redis, redis_url: str
) -> None:
    seed(r, 3)
    r.hset("usr:old", mapping={"eml": "old@x.org", "age": "50"})  # redisca 1.x's user
    r.zadd("usr:age", {"old": 50})  # and 1.x's range index
    done = redisca_cmd("check", "models:registry", url=redis_url)
    assert done.returncode == PROBLEMS
    assert "User (usr): 3 entities" in done.stdout
    assert "2 keys of the layout before hash tags" in done.stdout
    assert "old_layout: User 'usr:old': an entity hash of the layout before" in done.stdout
    assert "moves it to {usr}:old" in done.stdout

    app = make_app(redis_url, REDISCA_URL=redis_url, REDISCA_REGISTRY="models:registry")
    runner = app.test_cli_runner()
    done = runner.invoke(flask_cli, ["migrate", "--json"])
    assert done.exit_code == OK, done.output
    report = json.loads(done.stdout)
    assert {m["prefix"]: (m["moved"], m["dropped"]) for m in report["models"]} == {
        "usr": (1, 1),
        "co": (0, 0),
    }
    assert runner.invoke(flask_cli, ["check"]).exit_code == OK
    done = redisca_cmd("migrate", "models:registry", url=redis_url)  # again: nothing left
    assert done.returncode == OK, done.stderr
    assert "User (usr): moved 0 entities to the hash-tagged layout" in done.stdout


def test_flask_registry_and_connection_sources(r: redis.Redis, redis_url: str) -> None:
    seed(r, 5)
    # the registry object itself in the config, the connection from REDISCA (no extension)
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    app = make_app(redis_url, REDISCA_REGISTRY=registry)
    app.config["REDISCA"] = {"host": host, "port": int(port)}
    assert app.test_cli_runner().invoke(flask_cli, ["check"]).exit_code == OK
    # --registry and --url win over the config
    bare = Flask("bare")
    runner = bare.test_cli_runner()
    done = runner.invoke(flask_cli, ["check", "--registry", "models:registry", "--url", redis_url])
    assert done.exit_code == OK, done.output
    done = runner.invoke(flask_cli, ["check", "--url", redis_url])
    assert done.exit_code == USAGE and "REDISCA_REGISTRY" in done.output
    done = runner.invoke(flask_cli, ["check", "--registry", "models:registry"])
    assert done.exit_code == USAGE and "REDISCA_URL" in done.output
    done = runner.invoke(flask_cli, ["reindex", "--registry", "models", "--field", "age"])
    assert done.exit_code == USAGE and "--field needs --model" in done.output


def test_the_flask_command_itself(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    seed(r, 10)
    r.zadd("{co}#all", {"ghost": 0})
    (tmp_path / "clitestapp.py").write_text(
        "from flask import Flask\n"
        "from redisca.flask import FlaskRedisca\n"
        "app = Flask(__name__)\n"
        f"app.config['REDISCA_URL'] = {redis_url!r}\n"
        f"app.config['REDISCA_CLUSTER'] = {CLUSTER!r}\n"
        "app.config['REDISCA_REGISTRY'] = 'models:registry'\n"
        "FlaskRedisca(app)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    command = [sys.executable, "-m", "flask", "--app", "clitestapp", "redisca"]
    done = run_cmd([*command, "check", "--json"], env)
    assert done.returncode == PROBLEMS, done.stderr
    assert json.loads(done.stdout)["problems"][0]["kind"] == "stale_id"
    done = run_cmd([*command, "reindex"], env)
    assert done.returncode == OK, done.stderr
    done = run_cmd([*command, "check"], env)
    assert done.returncode == OK and "ok: no problem found" in done.stdout
