"""The Flask extension: configuration, one session per request, autosave, helpers.

Every test runs a real Flask app (test client) against the real test server; the
app's client is made from ``REDISCA_URL`` plus ``REDISCA`` options in the mode of
the ``r`` fixture (bytes+RESP3, str+RESP2).
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import flask
import pytest
import redis
from flask import Flask, after_this_request, jsonify
from helpers import assert_indexes_consistent, dump_keyspace, unique_owner
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import BadRequest

import redisca
from redisca import Email, Integer, Registry, Session, String, UniqueViolation
from redisca.embedded import pick_free_port
from redisca.flask import (
    CommitConflict,
    ConfigurationError,
    FlaskRedisca,
    Pagination,
    UncommittedChangesWarning,
    paginate,
)

registry = Registry()


@registry.mapped(prefix="fl.usr")
@attrs.define
class Member:
    email: str = Email(index=True, unique=True)
    age: int = Integer(minval=0, maxval=200, index=True, default=30)
    name: str = String(index=True, default="")
    id: str | None = None


@registry.mapped(prefix="fl.doc", versioned=True)
@attrs.define
class Doc:
    title: str = String(default="")
    id: str | None = None


class Boom(Exception):
    pass


def client_options(r: redis.Redis) -> dict[str, Any]:
    kwargs = r.connection_pool.connection_kwargs
    return {"decode_responses": kwargs["decode_responses"], "protocol": kwargs.get("protocol")}


@pytest.fixture
def make_app(r: redis.Redis, redis_url: str) -> Iterator[Callable[..., tuple[Flask, FlaskRedisca]]]:
    """A Flask app with a FlaskRedisca on the test server, in ``r``'s mode."""
    made: list[FlaskRedisca] = []

    def make(*, autosave: bool = True, testing: bool = True) -> tuple[Flask, FlaskRedisca]:
        app = Flask(__name__)
        app.config.update(TESTING=testing, REDISCA_URL=redis_url, REDISCA=client_options(r))
        ext = FlaskRedisca(app, autosave=autosave)
        made.append(ext)
        return app, ext

    yield make


def add_member_routes(app: Flask, ext: FlaskRedisca) -> None:
    @app.post("/members")
    def create() -> Any:
        member = Member(email=flask.request.form["email"], age=int(flask.request.form["age"]))
        ext.session.add(member)
        return jsonify(id=member.id), 201


# -- import and configuration ------------------------------------------------------


def test_import_redisca_does_not_import_flask() -> None:
    code = (
        "import sys, redisca\n"
        "assert 'flask' not in sys.modules and 'redisca.flask' not in sys.modules\n"
        "from redisca import FlaskRedisca\n"
        "import redisca.flask\n"
        "assert FlaskRedisca is redisca.flask.FlaskRedisca and 'flask' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_flask_modules_import_flask() -> None:
    """Modules named for Flask (redisca.flask, redisca.flaskcli) may; no other one does
    (``__main__`` is left out: importing it runs the command line)."""
    code = (
        "import sys, pkgutil, importlib, redisca\n"
        "for m in pkgutil.walk_packages(redisca.__path__, 'redisca.'):\n"
        "    if 'flask' not in m.name and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "        assert 'flask' not in sys.modules, f'{m.name} imported flask'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_of_the_package_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        redisca.NoSuchThing  # noqa: B018


def test_no_connection_configured_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"REDISCA_URL.*REDISCA"):
        FlaskRedisca(Flask(__name__))
    assert issubclass(ConfigurationError, redisca.RediscaError)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"REDISCA": "redis://localhost"}, "must be a dict"),
        ({"REDISCA": {"no_such_option": 1}}, "cannot make a Redis client"),
        ({"REDISCA_URL": "http://localhost"}, "cannot make a Redis client"),
    ],
)
def test_bad_connection_config(config: dict[str, Any], match: str) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(ConfigurationError, match=match):
        FlaskRedisca(app)
    assert "redisca" not in app.extensions


def test_forgotten_init_app_is_a_clear_error(redis_url: str) -> None:
    ext = FlaskRedisca()
    app = Flask(__name__)
    with app.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        ext.session  # noqa: B018
    other = Flask(__name__)
    other.config["REDISCA_URL"] = redis_url
    FlaskRedisca(other)
    with other.app_context(), pytest.raises(ConfigurationError, match="another FlaskRedisca"):
        ext.session  # noqa: B018


def test_init_app_twice_is_refused(redis_url: str) -> None:
    app = Flask(__name__)
    app.config["REDISCA_URL"] = redis_url
    ext = FlaskRedisca(app)
    with pytest.raises(ConfigurationError, match="already registered"):
        ext.init_app(app)


def test_redisca_kwargs_alone_make_the_client(r: redis.Redis, redis_server: Any) -> None:
    app = Flask(__name__)
    app.config["REDISCA"] = {"host": "127.0.0.1", "port": redis_server.port, **client_options(r)}
    ext = FlaskRedisca(app, autosave=True)
    with app.app_context():
        assert ext.client.connection_pool.connection_kwargs["port"] == redis_server.port
        ext.session.add(Member(email="kw@example.com"))
        ext.session.commit()
    assert unique_owner(r, "fl.usr", "email", "kw@example.com") is not None


def test_one_client_per_app_for_many_apps(make_app: Any) -> None:
    app1, ext1 = make_app()
    app2 = Flask(__name__)
    app2.config.update(app1.config)
    ext1.init_app(app2)
    with app1.app_context():
        c1 = ext1.client
        assert ext1.client is c1
    with app2.app_context():
        assert ext1.client is not c1


def test_the_apps_client_is_closed_when_the_app_goes_away(r: redis.Redis, redis_url: str) -> None:
    name = f"flask-app-{redisca.hexid()}"

    def connected() -> bool:
        return any(c.get("name") == name for c in r.client_list())

    app = Flask(__name__)
    app.config.update(REDISCA_URL=redis_url, REDISCA={"client_name": name})
    ext = FlaskRedisca(app, autosave=True)
    with app.app_context():
        ext.client.ping()
    assert connected()
    del app
    gc.collect()
    for _ in range(500):  # the server notices the closed socket soon, not at once
        if not connected():
            break
        time.sleep(0.01)
    assert not connected()


# -- the scoped session ------------------------------------------------------------


def test_same_session_within_a_request_new_one_in_the_next(make_app: Any) -> None:
    app, ext = make_app(autosave=False)
    seen: list[tuple[Session, Session]] = []

    def helper() -> Session:
        return ext.session

    @app.get("/")
    def view() -> str:
        seen.append((ext.session, helper()))
        ext.session.add(Member(email=f"{len(seen)}@example.com"))
        return "ok"

    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200
    (a1, a2), (b1, b2) = seen
    assert a1 is a2 and b1 is b2 and a1 is not b1
    assert isinstance(a1, Session)
    assert list(a1) == [] and list(b1) == []  # closed at teardown


def test_requests_inside_an_outer_app_context_get_their_own_sessions(make_app: Any) -> None:
    app, ext = make_app()
    seen: list[Session] = []

    @app.get("/")
    def view() -> str:
        seen.append(ext.session)
        return "ok"

    with app.app_context():
        outer = ext.session
        client = app.test_client()
        client.get("/")
        client.get("/")
        assert ext.session is outer
    assert len({id(s) for s in [outer, *seen]}) == 3


def test_app_context_session_is_closed_when_the_context_ends(make_app: Any) -> None:
    app, ext = make_app(autosave=False)
    with app.app_context():
        session = ext.session
        assert ext.session is session
        member = Member(email="ctx@example.com")
        session.add(member)
    assert list(session) == []
    assert redisca.inspect(member).status == "transient"
    with app.app_context():
        assert ext.session is not session


def test_outside_an_app_context_flask_says_so(make_app: Any) -> None:
    _, ext = make_app()
    with pytest.raises(RuntimeError, match="application context"):
        ext.session  # noqa: B018


def test_teardown_removes_the_session_even_when_the_view_raised(
    make_app: Any, r: redis.Redis
) -> None:
    app, ext = make_app()
    seen: list[Session] = []

    @app.get("/boom")
    def boom() -> str:
        seen.append(ext.session)
        ext.session.add(Member(email="boom@example.com"))
        raise Boom

    @app.get("/ok")
    def ok() -> str:
        seen.append(ext.session)
        return "ok"

    client = app.test_client()
    with pytest.raises(Boom):  # TESTING propagates the exception
        client.get("/boom")
    assert list(seen[0]) == []
    client.get("/ok")
    assert seen[1] is not seen[0]
    assert r.dbsize() == 0


# -- autosave ----------------------------------------------------------------------


def test_autosave_commits_before_the_response(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()
    add_member_routes(app, ext)
    response = app.test_client().post("/members", data={"email": "ann@example.com", "age": "33"})
    assert response.status_code == 201
    ident = response.get_json()["id"]
    assert unique_owner(r, "fl.usr", "email", "ann@example.com") == ident
    with Session(r) as session:
        assert session.get(Member, ident).age == 33  # type: ignore[union-attr]
    assert_indexes_consistent(r, redisca.inspect(Member))


def test_without_autosave_nothing_is_committed_and_nothing_warned(
    make_app: Any, r: redis.Redis
) -> None:
    app, ext = make_app(autosave=False)
    add_member_routes(app, ext)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response = app.test_client().post("/members", data={"email": "a@example.com", "age": "1"})
    assert response.status_code == 201
    assert r.dbsize() == 0


def test_a_view_that_raised_writes_nothing(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()

    @app.errorhandler(Boom)
    def handled(e: Boom) -> tuple[str, int]:
        return "handled, yet the view raised", 200

    @app.get("/<how>")
    def view(how: str) -> Any:
        ext.session.add(Member(email=f"{how}@example.com"))
        if how == "abort":
            flask.abort(400)
        if how == "handled":
            raise Boom
        if how == "http":
            raise BadRequest("no")
        if how == "bad-return":
            return None  # Flask raises TypeError in make_response
        raise KeyError(how)

    client = app.test_client()
    assert client.get("/abort").status_code == 400
    assert client.get("/handled").status_code == 200
    assert client.get("/http").status_code == 400
    with pytest.raises(KeyError):
        client.get("/unhandled")
    with pytest.raises(TypeError):
        client.get("/bad-return")
    app.testing = False
    assert client.get("/unhandled").status_code == 500
    assert client.get("/bad-return").status_code == 500
    assert r.dbsize() == 0


def test_a_raising_before_request_writes_nothing(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()

    @app.before_request
    def guard() -> None:
        ext.session.add(Member(email="guard@example.com"))
        flask.abort(403)

    @app.get("/")
    def view() -> str:
        return "never"

    assert app.test_client().get("/").status_code == 403
    assert r.dbsize() == 0


def test_an_error_handlers_changes_are_dropped_too(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()

    @app.errorhandler(404)
    def not_found(e: Exception) -> tuple[str, int]:
        ext.session.add(Member(email="log@example.com"))  # dropped: the request raised
        return "nope", 404

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert app.test_client().get("/missing").status_code == 404
    assert r.dbsize() == 0


def test_a_failing_after_request_before_the_commit_writes_nothing(
    make_app: Any, r: redis.Redis
) -> None:
    app, ext = make_app(testing=False)
    add_member_routes(app, ext)

    @app.after_request  # registered after init_app: runs before the commit
    def broken(response: flask.Response) -> flask.Response:
        raise Boom

    response = app.test_client().post("/members", data={"email": "x@example.com", "age": "1"})
    assert response.status_code == 500
    assert r.dbsize() == 0


def test_duplicate_email_under_autosave_is_a_409_and_writes_nothing(
    make_app: Any, r: redis.Redis
) -> None:
    app, ext = make_app()
    add_member_routes(app, ext)
    client = app.test_client()
    first = client.post("/members", data={"email": "ann@example.com", "age": "33"})
    assert first.status_code == 201
    before = dump_keyspace(r)
    second = client.post("/members", data={"email": "ANN@example.com", "age": "40"})
    assert second.status_code == 409
    text = second.get_data(as_text=True)
    assert "email" in text and first.get_json()["id"] not in text  # no owner id leaked
    assert dump_keyspace(r) == before


def test_the_apps_handler_for_the_commit_error_wins(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()
    add_member_routes(app, ext)

    @app.errorhandler(UniqueViolation)
    def taken(e: UniqueViolation) -> Any:
        return jsonify(error="taken", field=e.field), 422

    client = app.test_client()
    client.post("/members", data={"email": "ann@example.com", "age": "33"})
    before = dump_keyspace(r)
    response = client.post("/members", data={"email": "ann@example.com", "age": "33"})
    assert response.status_code == 422
    assert response.get_json() == {"error": "taken", "field": "email"}
    assert dump_keyspace(r) == before


def test_the_apps_409_handler_gets_the_commit_error(make_app: Any) -> None:
    app, ext = make_app()
    add_member_routes(app, ext)
    received: list[Any] = []

    @app.errorhandler(409)
    def conflict(e: CommitConflict) -> tuple[str, int]:
        received.append(e)
        return "custom 409", 409

    client = app.test_client()
    client.post("/members", data={"email": "ann@example.com", "age": "33"})
    response = client.post("/members", data={"email": "ann@example.com", "age": "33"})
    assert (response.status_code, response.get_data(as_text=True)) == (409, "custom 409")
    assert isinstance(received[0], CommitConflict)
    assert isinstance(received[0].original_exception, UniqueViolation)


def test_a_concurrent_change_is_a_409(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()
    with Session(r) as setup:
        doc = Doc(title="v1")
        setup.add(doc)
        setup.commit()
        ident = doc.id

    @app.post("/docs/<ident>")
    def edit(ident: str) -> str:
        mine = ext.get_or_404(Doc, ident)
        with Session(r) as other:  # someone else saves first
            theirs = other.get(Doc, ident)
            assert theirs is not None
            theirs.title = "theirs"
            other.commit()
        mine.title = "mine"
        return "ok"

    response = app.test_client().post(f"/docs/{ident}")
    assert response.status_code == 409
    assert "changed" in response.get_data(as_text=True)
    with Session(r) as check:
        assert check.get(Doc, ident).title == "theirs"  # type: ignore[union-attr]


def down_app(*, testing: bool, handler: bool = False) -> tuple[Flask, list[BaseException]]:
    """An autosave app whose server is down: every commit fails (not a conflict)."""
    app = Flask(__name__)
    app.config["TESTING"] = testing
    app.config["REDISCA"] = {
        "host": "127.0.0.1",
        "port": pick_free_port(),  # nobody listens there
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": 1,
    }
    ext = FlaskRedisca(app, autosave=True)
    signalled: list[BaseException] = []

    def on_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
        signalled.append(exception)

    flask.got_request_exception.connect(on_exception, app, weak=False)

    @app.get("/")
    def view() -> str:
        ext.session.add(Member(email="down@example.com"))
        return "ok"

    if handler:

        @app.errorhandler(redisca.OperationalError)
        def unavailable(e: Exception) -> tuple[str, int]:
            return "try later", 503

    return app, signalled


def test_other_commit_errors_take_flasks_500_path() -> None:
    app, signalled = down_app(testing=False)
    assert app.test_client().get("/").status_code == 500
    assert [type(e) for e in signalled] == [redisca.OperationalError]
    app, _ = down_app(testing=True)  # Flask propagates unhandled errors in tests
    with pytest.raises(redisca.OperationalError):
        app.test_client().get("/")
    app, signalled = down_app(testing=False, handler=True)
    assert app.test_client().get("/").status_code == 503
    assert signalled == []


def test_an_error_after_the_commit_cannot_undo_it(r: redis.Redis, redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(REDISCA_URL=redis_url, REDISCA=client_options(r))

    @app.after_request  # registered before init_app: runs after the commit
    def broken(response: flask.Response) -> flask.Response:
        raise Boom

    ext = FlaskRedisca(app, autosave=True)
    add_member_routes(app, ext)
    response = app.test_client().post("/members", data={"email": "a@example.com", "age": "1"})
    assert response.status_code == 500
    assert unique_owner(r, "fl.usr", "email", "a@example.com") is not None


def test_changes_in_after_this_request_are_saved(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()

    @app.get("/")
    def view() -> str:
        member = Member(email="late@example.com", age=1)
        ext.session.add(member)

        @after_this_request
        def bump(response: flask.Response) -> flask.Response:
            member.age = 2  # runs before the app's after_request functions
            return response

        return "ok"

    assert app.test_client().get("/").status_code == 200
    with Session(r) as check:
        assert check.query(Member).one().age == 2


def test_changes_after_the_commit_are_dropped_with_a_warning(make_app: Any, r: redis.Redis) -> None:
    app, ext = make_app()

    @app.teardown_request
    def too_late(exc: BaseException | None) -> None:
        member = ext.session.query(Member).one()
        member.age = 99

    @app.get("/")
    def view() -> str:
        ext.session.add(Member(email="late@example.com", age=1))
        return "ok"

    with pytest.warns(UncommittedChangesWarning, match=r"after the autosave commit.*changed \{fl"):
        assert app.test_client().get("/").status_code == 200
    with Session(r) as check:
        assert check.query(Member).one().age == 1


def test_autosave_does_not_commit_outside_requests_and_says_so(
    make_app: Any, r: redis.Redis
) -> None:
    app, ext = make_app()
    with pytest.warns(UncommittedChangesWarning, match="outside any request"), app.app_context():
        ext.session.add(Member(email="cli@example.com"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Boom), app.app_context():  # an exception explains the drop
            ext.session.add(Member(email="cli@example.com"))
            raise Boom
        with app.app_context():  # committed: nothing to warn about
            ext.session.add(Member(email="cli@example.com"))
            ext.session.commit()
    assert unique_owner(r, "fl.usr", "email", "cli@example.com") is not None


# -- 404 helpers -------------------------------------------------------------------


@pytest.fixture
def members(r: redis.Redis) -> list[Member]:
    """45 members aged 0..44 (names: "even"/"odd")."""
    with Session(r) as session:
        made = [
            Member(email=f"m{i}@example.com", age=i, name="even" if i % 2 == 0 else "odd")
            for i in range(45)
        ]
        session.add_all(made)
        session.commit()
    return made


def test_404_helpers(make_app: Any, members: list[Member]) -> None:
    app, ext = make_app()

    @app.get("/get/<ident>")
    def get(ident: str) -> str:
        return ext.get_or_404(Member, ident).email

    @app.get("/first/<int:age>")
    def first(age: int) -> str:
        return ext.first_or_404(ext.session.query(Member).filter(Member.age >= age)).email

    @app.get("/one/<name>")
    def one(name: str) -> str:
        query = ext.session.query(Member).filter_by(name=name)
        if "age" in flask.request.args:
            query = query.filter(Member.age == int(flask.request.args["age"]))
        return ext.one_or_404(query, description="no such member").email

    client = app.test_client()
    assert client.get(f"/get/{members[3].id}").get_data(as_text=True) == "m3@example.com"
    assert client.get("/get/nobody").status_code == 404
    assert client.get("/first/44").get_data(as_text=True) == "m44@example.com"
    assert client.get("/first/45").status_code == 404
    assert client.get("/one/odd?age=7").get_data(as_text=True) == "m7@example.com"
    assert client.get("/one/odd?age=8").status_code == 404
    too_many = client.get("/one/odd")
    assert too_many.status_code == 404 and "no such member" in too_many.get_data(as_text=True)


# -- pagination ----------------------------------------------------------------------


def test_paginate_reads_page_and_per_page_from_the_request(
    make_app: Any, members: list[Member]
) -> None:
    app, ext = make_app()

    @app.get("/")
    def listing() -> Any:
        page = ext.paginate(ext.session.query(Member).order_by(Member.age))
        return jsonify(
            ages=[m.age for m in page.items],
            total=page.total,
            page=page.page,
            per_page=page.per_page,
            pages=page.pages,
            has_prev=page.has_prev,
            has_next=page.has_next,
            prev_num=page.prev_num,
            next_num=page.next_num,
            first=page.first,
            last=page.last,
        )

    client = app.test_client()
    first = client.get("/").get_json()
    assert first["ages"] == list(range(20))
    assert (first["total"], first["page"], first["per_page"], first["pages"]) == (45, 1, 20, 3)
    assert (first["has_prev"], first["has_next"], first["prev_num"], first["next_num"]) == (
        False,
        True,
        None,
        2,
    )
    assert (first["first"], first["last"]) == (1, 20)
    last = client.get("/?page=3").get_json()
    assert last["ages"] == list(range(40, 45))
    assert (last["has_next"], last["next_num"], last["prev_num"]) == (False, None, 2)
    assert (last["first"], last["last"]) == (41, 45)
    small = client.get("/?page=2&per_page=7").get_json()
    assert small["ages"] == list(range(7, 14)) and small["pages"] == 7
    capped = client.get("/?per_page=500").get_json()
    assert capped["per_page"] == 100 and capped["ages"] == list(range(45))
    for bad in ["page=0", "page=-1", "page=4", "page=x", "per_page=0", "per_page=-5", "per_page=y"]:
        assert client.get(f"/?{bad}").status_code == 404, bad


def test_paginate_without_error_out_falls_back(r: redis.Redis, members: list[Member]) -> None:
    app = Flask(__name__)
    with Session(r) as session:
        query = session.query(Member).order_by(Member.age.desc())
        with app.test_request_context("/?page=0&per_page=zz"):
            page = paginate(query, error_out=False)
        assert (page.page, page.per_page, page.items[0].age) == (1, 20, 44)
        beyond = paginate(query, page=9, per_page=10, error_out=False)
        assert beyond.items == [] and beyond.total == 45 and beyond.pages == 5
        assert not beyond.has_next and beyond.prev_num == 8
        assert paginate(query, per_page=-1, error_out=False).per_page == 20
        whole = paginate(query, per_page=1000, max_per_page=None)  # no request: page 1
        assert [m.age for m in whole] == list(range(44, -1, -1))
        assert repr(whole) == "<Pagination page=1/1 per_page=1000 total=45>"


def test_paginate_keeps_the_filter_and_replaces_offset_and_limit(
    r: redis.Redis, members: list[Member]
) -> None:
    with Session(r) as session:
        query = session.query(Member).filter_by(name="odd").order_by(Member.age)
        page = paginate(query.offset(3).limit(2), page=2, per_page=5)
        assert page.total == 22 and [m.age for m in page.items] == [11, 13, 15, 17, 19]
        assert [m.age for m in page.next().items] == [21, 23, 25, 27, 29]
        assert [m.age for m in page.prev().items] == [1, 3, 5, 7, 9]
        assert page.pages == 5 and page.next().next().next().items[-1].age == 43
        assert paginate(query.filter(Member.age > 100)).pages == 0


def test_paginate_an_or_query(r: redis.Redis, members: list[Member]) -> None:
    """An OR (several AND-branches, one script call each for the count and the page)."""
    with Session(r) as session:
        query = session.query(Member).filter(
            ((Member.name == "odd") & (Member.age < 10)) | Member.age.in_([40, 42, 44])
        )
        page = paginate(query.order_by(Member.age.desc()), page=2, per_page=3)
        assert page.total == 8 and page.pages == 3
        assert [m.age for m in page.items] == [9, 7, 5]
        assert [m.age for m in page.next().items] == [3, 1]


def test_paginate_by_keyset_follows_next_after(
    make_app: Any, r: redis.Redis, members: list[Member]
) -> None:
    """``?after=<id>`` pages start after that member in the query's order; each page says
    the next one's cursor, and the pages are the numbered pages."""
    app, ext = make_app()

    @app.get("/")
    def listing() -> Any:
        query = ext.session.query(Member).filter_by(name="even").order_by(Member.age.desc())
        page = ext.paginate(query, per_page=5)
        return jsonify(ages=[m.age for m in page.items], after=page.next_after, more=page.has_next)

    client = app.test_client()
    seen, url = [], "/"
    while True:
        body = client.get(url).get_json()
        seen += body["ages"]
        if body["after"] is None:
            assert not body["more"]
            break
        assert body["more"]
        url = f"/?after={body['after']}"
    assert seen == list(range(44, -1, -2))
    assert client.get("/?after=nobody").status_code == 404
    with Session(r) as session:
        query = session.query(Member).order_by(Member.age)
        page = paginate(query, per_page=10, after=members[9])
        assert [m.age for m in page.items] == list(range(10, 20))
        assert [m.age for m in page.next().items] == list(range(20, 30))
        fallback = paginate(query, per_page=3, after="nobody", error_out=False)
        assert [m.age for m in fallback.items] == [0, 1, 2] and fallback.after is None


def test_an_empty_first_page_is_no_error(r: redis.Redis) -> None:
    with Session(r) as session:
        page = paginate(session.query(Member))
        assert (page.items, page.total, page.pages, page.first, page.last) == ([], 0, 0, 0, 0)
        assert list(page.iter_pages()) == []


def pages(total: int, page: int, per_page: int = 10) -> Pagination[Any]:
    return Pagination(
        None,  # type: ignore[arg-type]
        page=page,
        per_page=per_page,
        max_per_page=None,
        total=total,
        items=[],
    )


@pytest.mark.parametrize(
    ("total", "page", "expected"),
    [
        (10, 1, [1]),
        (100, 5, list(range(1, 11))),
        (200, 1, [1, 2, 3, 4, 5, None, 19, 20]),
        (200, 10, [1, 2, None, 8, 9, 10, 11, 12, 13, 14, None, 19, 20]),
        (200, 20, [1, 2, None, 18, 19, 20]),
    ],
)
def test_iter_pages(total: int, page: int, expected: list[int | None]) -> None:
    assert list(pages(total, page).iter_pages()) == expected
