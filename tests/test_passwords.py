"""Passwords: a salted scrypt hash that never stores the text, and redisca 1.x's MD5Pass
(deprecated) for data written by 1.x. Hashes use a small scrypt cost (n=2**10) for speed.
"""

import hashlib
import warnings

import attrs
import pytest
from helpers import as_str

import redisca
from redisca import MD5Pass, Password, PasswordHash, Registry, Session, ValidationError

registry = Registry()


@registry.mapped(prefix="acc")
@attrs.define
class Account:
    login: str
    password: str = Password(n=2**10)
    pin: str | None = Password(field="pn", minlen=4, n=2**10, default=None)
    id: str | None = None


def legacy_model():
    """A model with redisca 1.x's MD5Pass; defining it warns."""
    with pytest.warns(DeprecationWarning, match="MD5Pass") as record:

        @Registry().mapped(prefix="old")
        @attrs.define
        class Legacy:
            password: str | None = MD5Pass(default=None)
            id: str | None = None

    assert record[0].filename == __file__  # points at the model, not at redisca
    return Legacy


def all_values(r):
    """Every hash value and string in the database, as text."""
    values = []
    for key in r.scan_iter():
        if as_str(r.type(key)) == "hash":
            values += [as_str(v) for v in r.hvals(key)]
        elif as_str(r.type(key)) == "string":
            values.append(as_str(r.get(key)))
    return values


def test_password_is_hashed_on_construction_and_assignment():
    account = Account("ann", password="s3cret!")
    assert isinstance(account.password, PasswordHash) and isinstance(account.password, str)
    assert account.password != "s3cret!" and "s3cret!" not in account.password
    assert account.password.startswith("scrypt$1024$8$1$")
    assert account.password.verify("s3cret!")
    for wrong in ("s3cret", "S3CRET!", "", "s3cret!!"):
        assert not account.password.verify(wrong)
    old = account.password
    account.password = "other"
    assert account.password != old and account.password.verify("other")
    assert not account.password.verify("s3cret!")
    assert "s3cret!" not in repr(account)


def test_same_password_gets_different_salted_hashes():
    a, b = Account("a", password="same"), Account("b", password="same")
    assert a.password != b.password
    assert a.password.split("$")[4] != b.password.split("$")[4]  # the salts differ
    assert a.password.verify("same") and b.password.verify("same")


def test_default_cost_and_explicit_hashes():
    strong = PasswordHash.create("x")  # the default cost, n=2**14
    assert strong.startswith("scrypt$16384$") and strong.verify("x") and not strong.verify("y")


def test_assigning_a_password_hash_keeps_it():
    source = Account("a", password="kept")
    copy = Account("b", password=source.password)
    assert copy.password == source.password  # not hashed a second time
    copy.password = PasswordHash(source.password)
    assert copy.password == source.password and copy.password.verify("kept")


@pytest.mark.parametrize(
    "stored", ["", "garbage", "scrypt$x$8$1$AA==$AA==", "bcrypt$1$2$3$4$5", "scrypt$1024$8$1"]
)
def test_verify_of_a_malformed_hash_is_false(stored):
    assert PasswordHash(stored).verify("anything") is False


def test_password_rules_raise_validation_error():
    with pytest.raises(ValidationError, match=r"Account\.pin.*4") as info:
        Account("a", password="x", pin="123")
    assert info.value.field == "pin"
    account = Account("a", password="x", pin="1234")
    assert account.pin.verify("1234")
    for bad in (123, None, b"bytes"):
        with pytest.raises(ValidationError, match=r"Account\.password") as info:
            account.password = bad
        assert info.value.field == "password"
    with pytest.raises(ValidationError, match=r"Account\.password"):
        account.password = "lone \udc80 surrogate"
    assert account.password.verify("x")


def test_redis_holds_only_the_hash(r):
    ann = Account("ann", password="plain-text-pw", pin="9876", id="a1")
    bob = Account("bob", password="plain-text-pw", id="b1")
    with Session(r) as session:
        session.add_all([ann, bob])
        session.commit()
    stored = as_str(r.hget("{acc}:a1", "password"))
    assert stored == ann.password and stored.startswith("scrypt$1024$")
    assert stored != as_str(r.hget("{acc}:b1", "password"))
    assert as_str(r.hget("{acc}:a1", "pn")) == ann.pin and not r.hexists("{acc}:b1", "pn")
    values = all_values(r)
    assert not any("plain-text-pw" in v or "9876" in v for v in values)


def test_loaded_hash_verifies_and_is_not_rehashed(r):
    with Session(r) as session:
        session.add(Account("ann", password="pw", id="a1"))
        session.commit()
    with Session(r) as session:
        loaded = session.get(Account, "a1")
        assert isinstance(loaded.password, PasswordHash)
        assert loaded.password.verify("pw") and not loaded.password.verify("pw2")
        assert not session.is_modified(loaded)
        other = Account("copy", password=loaded.password, id="c1")  # move a hash over
        session.add(other)
        loaded.password = "new"
        session.commit()
    assert as_str(r.hget("{acc}:c1", "password")) == other.password
    with Session(r) as session:
        assert session.get(Account, "c1").password.verify("pw")
        fresh = session.get(Account, "a1").password
        assert fresh.verify("new") and not fresh.verify("pw")


def test_md5pass_warns_and_reads_redisca_1_digests(r):
    Legacy = legacy_model()
    digest = hashlib.md5(b"hunter2").hexdigest()
    r.hset("{old}:u1", "password", digest)  # as redisca 1.x wrote it
    with Session(r) as session:
        loaded = session.get(Legacy, "u1")
        assert loaded.password == digest
        assert loaded.password.verify("hunter2") and not loaded.password.verify("hunter3")
        loaded.password = "changed"  # 1.x semantics: stored as an MD5 hex digest
        session.commit()
    assert as_str(r.hget("{old}:u1", "password")) == hashlib.md5(b"changed").hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        created = Legacy(password="abc")  # using the field does not warn again
    assert created.password == hashlib.md5(b"abc").hexdigest()
    assert created.password.verify("abc")
    kept = Legacy(password=created.password)
    assert kept.password == created.password


def test_password_is_exported():
    assert redisca.Password is Password and redisca.PasswordHash is PasswordHash
