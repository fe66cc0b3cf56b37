"""End to end: the example app (examples/flaskapp) on a real threaded HTTP server.

Several client threads sign users up (some with taken emails, some racing to create
the same company), page through age ranges, update and delete, over HTTP. Checked:
every 2xx write is in Redis as soon as its response arrives (autosave commits before
the response), every 409 wrote nothing, no request ever sees another request's pending
objects, and the indexes match the data at the end.
"""

from __future__ import annotations

import http.cookiejar
import importlib.util
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import assert_indexes_consistent
from werkzeug.serving import WSGIRequestHandler, make_server

import redisca
from redisca import Session
from redisca.embedded import EmbeddedServer

APP_PATH = Path(__file__).resolve().parents[1] / "examples" / "flaskapp" / "app.py"
THREADS = 8
ROUNDS = 40  # requests per thread, besides one HTML sign-up each
COMPANIES = ["Co 0", "Co 1", "Co 2"]
PATCHED_AGE = 99


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flaskapp_example", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


def add_probe(app: Any, example: ModuleType) -> None:
    """A view that adds users, waits a little, and reports what else its session holds."""

    @app.get("/_probe")
    def probe() -> Any:
        from flask import request

        tag = request.args["tag"]
        mine = [example.User(email=f"{tag}.{i}@probe.example", name="p", age=20) for i in range(3)]
        session = example.db.session
        session.add_all(mine)
        time.sleep(0.002)  # other requests add theirs meanwhile
        keys = {redisca.inspect(u).key for u in mine}
        held = {redisca.inspect(o).key for o in session} | {
            redisca.inspect(o).key for o in session.new
        }
        return {"foreign": sorted(held - keys), "ids": [u.id for u in mine]}


@pytest.fixture
def served(example: ModuleType, redis_server: EmbeddedServer) -> Iterator[str]:
    with redis_server.client() as client:
        client.flushall()
    app = example.create_app({"REDISCA_URL": redis_server.url})
    add_probe(app, example)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def call(
    base: str,
    method: str,
    path: str,
    data: dict[str, Any] | None = None,
    *,
    opener: urllib.request.OpenerDirector | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, Any]:
    body, headers = None, {}
    if data is not None:
        body, headers = json.dumps(data).encode(), {"Content-Type": "application/json"}
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    req = urllib.request.Request(base + path, data=body, headers=headers, method=method)
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=30) as response:
            status, raw = response.status, response.read()
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    text = raw.decode()
    return status, (json.loads(text) if "json" in kind and text else text)


class Worker:
    """One client thread's requests and what it expects to find in Redis."""

    def __init__(self, n: int, base: str, example: ModuleType, server: EmbeddedServer) -> None:
        self.n, self.base, self.example = n, base, example
        self.redis = server.client()
        self.created: dict[str, str] = {}  # id -> email, of users alive after our requests
        self.deleted: set[str] = set()
        self.requests = 0
        self.conflicts = 0

    def call(self, method: str, path: str, data: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.requests += 1
        return call(self.base, method, path, data)

    def stored(self, ident: str) -> dict[str, Any] | None:
        """The user as Redis holds it now (None: no such user)."""
        with Session(self.redis) as session:
            user = session.get(self.example.User, ident)
            if user is None:
                return None
            company = user.company.name if user.company else None
            return {"email": user.email, "age": user.age, "company": company}

    def run(self) -> None:
        try:
            self.html_signup()
            for i in range(ROUNDS):
                [self.create, self.duplicate, self.browse, self.probe, self.change][i % 5](i)
        finally:
            self.redis.close()

    def html_signup(self) -> None:
        jar = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        status, page = call(self.base, "GET", "/signup", opener=jar)
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert status == 200 and token, page
        email = f"html{self.n}@e2e.example"
        form = {"csrf": token.group(1), "email": email, "name": "H", "age": "30"}
        status, profile = call(self.base, "POST", "/signup", opener=jar, form=form)
        self.requests += 2
        assert status == 200 and email in profile, (status, profile)  # followed the 303
        with Session(self.redis) as session:
            user = session.query(self.example.User).filter_by(email=email).one()
            self.created[user.id] = email

    def create(self, i: int) -> None:
        email = f"t{self.n}.{i}@e2e.example"
        data = {"email": email, "name": f"T{self.n}", "age": 13 + (self.n * 11 + i) % 100}
        data["company"] = COMPANIES[i % 3]
        for _ in range(5):  # a racing sign-up may create the same company first: retry
            status, body = self.call("POST", "/api/users", data)
            if status != 409:
                break
            assert body["field"] == "name", body
            self.conflicts += 1
        assert status == 201, (status, body)
        user = self.stored(body["id"])  # committed before the response was sent
        assert user == {"email": email, "age": data["age"], "company": data["company"]}
        self.created[body["id"]] = email

    def duplicate(self, i: int) -> None:
        email = next(iter(self.created.values()))
        status, body = self.call(
            "POST", "/api/users", {"email": email.upper(), "name": "D", "age": 50}
        )
        assert (status, body["field"]) == (409, "email"), (status, body)
        self.conflicts += 1

    def browse(self, i: int) -> None:
        low = 13 + i % 50
        status, body = self.call("GET", f"/api/users?min_age={low}&max_age={low + 30}&per_page=7")
        assert status == 200, body
        # Ids come from the index, then the hashes are read: a user another thread set
        # to 99 in between shows its new age (queries are not snapshots).
        ages = [u["age"] for u in body["items"] if u["age"] != PATCHED_AGE]
        assert ages == sorted(ages) and all(low <= a <= low + 30 for a in ages), body
        assert len(ages) <= 7 and body["total"] >= len(ages)

    def probe(self, i: int) -> None:
        status, body = self.call("GET", f"/_probe?tag=p{self.n}.{i}")
        assert status == 200 and body["foreign"] == [], body
        for ident in body["ids"]:
            assert self.stored(ident) is not None
            self.created[ident] = f"p{self.n}.{i}"

    def change(self, i: int) -> None:
        ident = next(k for k, v in self.created.items() if v.startswith("t"))
        if i % 10 == 4:
            status, body = self.call("PATCH", f"/api/users/{ident}", {"age": PATCHED_AGE})
            assert status == 200 and body["age"] == PATCHED_AGE, body
            assert self.stored(ident)["age"] == PATCHED_AGE  # type: ignore[index]
        else:
            status, _ = self.call("DELETE", f"/api/users/{ident}")
            assert status == 204
            assert self.stored(ident) is None
            del self.created[ident]
            self.deleted.add(ident)


def test_concurrent_clients_of_the_example_app(
    served: str, example: ModuleType, redis_server: EmbeddedServer
) -> None:
    workers = [Worker(n, served, example, redis_server) for n in range(THREADS)]
    errors: list[BaseException] = []

    def run(worker: Worker) -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]

    created = {k: v for w in workers for k, v in w.created.items()}
    deleted = {k for w in workers for k in w.deleted}
    assert sum(w.requests for w in workers) >= THREADS * (ROUNDS + 2)
    assert sum(w.conflicts for w in workers) >= THREADS * ROUNDS // 5
    with redis_server.client() as client, Session(client) as session:
        users = session.query(example.User).all()
        assert {u.id for u in users} == set(created)  # no 409 wrote anything
        for user in users:
            assert user.email.startswith(created[user.id])
        assert session.get_many(example.User, sorted(deleted)) == [None] * len(deleted)
        companies = session.query(example.Company).all()
        assert sorted(c.name for c in companies) == COMPANIES  # created once each
        for cls in (example.User, example.Company):
            assert_indexes_consistent(client, redisca.inspect(cls))
