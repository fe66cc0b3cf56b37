"""RESP, the wire format: a batch of commands packed for one write.

The executor packs its commands here instead of calling redis-py's
``Connection.pack_commands``, which spends about 2 µs of Python per command
on work a batch of redisca's commands never needs (a generator per command,
splitting names that hold spaces, cutting buffers of large values apart). A
commit of 10,000 users sends 50,000 commands, so that came to 11 µs a user,
a third of what the commit cost the client. hiredis's ``pack_command`` packs
one command in C when hiredis is installed; the loop below does it otherwise.
Both give the bytes redis-py would send, which a test checks.

Arguments are bytes, ``str`` or ``int`` (an application's own commands are
converted when queued, by :func:`encode_command`). Text goes out as UTF-8
whatever the client's ``encoding``: ids are UTF-8 in every key that names them,
so an id stored in an index must be too, or it would read back as another id.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ValidationError

_hiredis_pack: Callable[[Any], bytes] | None
try:  # hiredis is optional, and before 2.0 it had no packer
    _hiredis_pack = getattr(importlib.import_module("hiredis"), "pack_command", None)
except ImportError:
    _hiredis_pack = None


#: Commands per chunk of the packed write. Packed into one ``bytes``, the pieces
#: waiting to be joined took 3.3 (hiredis) to 9.9 (Python) times the memory of the
#: write itself (100,000 commands, 8.8 MiB); in chunks, packing peaks at 1.02 to 1.09
#: times it. redis-py's packer, too, cuts its output into chunks, which
#: ``send_packed_command`` sends one after the other.
CHUNK = 1000


def _encode(arg: Any) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    raise TypeError(f"a command argument must be bytes, str or int, not {type(arg).__name__}")


#: Commands an application's own command may not be (``add_command`` refuses them when
#: queued). The commit owns the transaction (``MULTI``/``EXEC``/``WATCH``...: an ``EXEC``
#: of yours ends it early, so the commit misreads what Redis did), and the connection goes
#: back to a pool that every session shares: a ``SELECT``, ``AUTH``, ``HELLO``, ``RESET``
#: or ``CLIENT`` setting would follow the next commit of any session, and a subscription
#: or ``MONITOR`` turns the connection into something else. ``SWAPDB`` swaps databases
#: under every client.
REFUSED_COMMANDS = frozenset(
    b"""MULTI EXEC DISCARD WATCH UNWATCH SELECT SWAPDB AUTH HELLO RESET CLIENT QUIT
    MONITOR SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE
    READONLY READWRITE ASKING SYNC PSYNC REPLCONF""".split()
)


def encode_command(args: Sequence[Any]) -> tuple[bytes, ...]:
    """A command of the application's own (``Session.add_command``), checked when queued.

    It takes what redis-py's commands take: bytes, text, ints and floats (as
    ``repr`` writes them), and a name of two words (``"OBJECT ENCODING"``) split in
    two. Anything else is refused here, before it can fail a commit half sent, and
    so are the commands of :data:`REFUSED_COMMANDS`.
    """
    if not args:
        raise ValidationError("add_command() needs at least a command name")
    name = args[0]
    words: list[Any] = list(name.split()) if isinstance(name, (str, bytes)) else [name]
    if not words:
        raise ValidationError(f"add_command() needs a command name, not {name!r}")
    out: list[bytes] = []
    for position, arg in enumerate([*words, *args[1:]]):
        if isinstance(arg, float):
            out.append(repr(arg).encode())
            continue
        try:
            out.append(_encode(arg))
        except TypeError:
            raise ValidationError(
                f"add_command() argument {position + 1} is {type(arg).__name__} {arg!r:.60}; "
                "a command takes bytes, str, int or float",
                value=arg,
            ) from None
    if out[0].upper() in REFUSED_COMMANDS:
        raise ValidationError(
            f"add_command() cannot run {out[0].decode(errors='replace').upper()}: the commit "
            "owns the transaction and the pooled connection (see Session.add_command)",
            value=name,
        )
    return tuple(out)


def pack_python(commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """The commands as RESP arrays of bulk strings, packed in Python."""
    out: list[bytes] = []
    for start in range(0, len(commands), CHUNK):
        pieces: list[bytes] = []
        push = pieces.append
        for command in commands[start : start + CHUNK]:
            push(b"*%d\r\n" % len(command))
            for arg in command:
                if arg.__class__ is not bytes:
                    arg = _encode(arg)
                push(b"$%d\r\n%b\r\n" % (len(arg), arg))
        out.append(b"".join(pieces))
    return out


def pack(commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """The commands packed for one write: by hiredis when it can, else in Python."""
    if _hiredis_pack is not None:
        try:
            if len(commands) == 1:  # a query, a lookup: no chunking to set up
                return [_hiredis_pack(commands[0])]
            return [
                b"".join([_hiredis_pack(command) for command in commands[start : start + CHUNK]])
                for start in range(0, len(commands), CHUNK)
            ]
        except TypeError:  # a list, a memoryview, a bool: let the Python packer judge
            pass
    return pack_python(commands)


__all__ = ["CHUNK", "REFUSED_COMMANDS", "encode_command", "pack", "pack_python"]
