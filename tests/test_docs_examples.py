"""Every code example in README.rst and docs/*.rst runs, against the suite's own server.

Documentation examples rot silently unless something runs them, so every page is a
test. The conventions below are for everyone who writes a page (new pages under
``docs/`` are picked up by the glob, nothing to register):

- ``.. code-block:: python`` (also ``code``/``sourcecode``; ``python3``, ``py``) is
  **executed**. Other languages (``text``, ``console``, ``shell``, ``ini``, ...) are not.
- A Python block that must not run (redisca 1.x code on the migration page, a
  fragment) says so with the option ``:class: no-run``.
- A bare ``::`` literal block is refused: its language would be a guess, and a Python
  example in one would silently never run. Write ``.. code-block:: <language>``.
- A page runs on a flushed server; its Python blocks run in order in one namespace (a
  module named after the page), so later blocks use what earlier ones defined. Begin
  a page with the block that defines its classes.
- Examples get their server the way applications do: ``$REDIS_URL`` points at the
  suite's server and ``redisca.conf.db`` is unset, so ``Session()`` (no client) and
  ``Redis.from_url(os.environ["REDIS_URL"])`` reach it. A client for the default
  ``localhost:6379`` (``Redis()``) fails the test instead of touching whatever
  server the machine runs there.
- A failure names the page and the block's first line, and its traceback points at
  the failing line of the ``.rst`` file itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import textwrap
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

import redisca
from redisca.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
PYTHON = {"python", "python3", "py"}
NO_RUN = "no-run"
LOCALHOSTS = {"localhost", "127.0.0.1", "::1"}

# Directives may follow list markers: "* - .. code-block:: python" in a list-table cell.
_MARKERS = r"(?P<indent>[ *+-]*)"
_CODE = re.compile(_MARKERS + r"\.\.\s+(?:code-block|code|sourcecode)::\s*(?P<lang>\S*)\s*$")
_DIRECTIVE = re.compile(_MARKERS + r"\.\.\s+[\w:-]+::")
_EXPLICIT = re.compile(_MARKERS + r"\.\.(\s|$)")
_OPTION = re.compile(r"^\s*:(?P<name>[\w-]+):\s*(?P<value>.*)$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the block's first content line
    lang: str  # "" for a bare "::" literal block
    source: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.lang in PYTHON and NO_RUN not in self.options.get("class", "").split()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _body(lines: list[str], start: int, indent: int) -> int:
    """Index after the indented body that starts at ``start`` (blank lines included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    return end


def _content(lines: list[str], start: int, end: int) -> tuple[int, str]:
    while start < end and not lines[start].strip():
        start += 1
    return start + 1, textwrap.dedent("\n".join(lines[start:end])).strip("\n") + "\n"


def parse(path: Path, root: Path = ROOT) -> list[Block]:
    """The code and literal blocks of one reStructuredText page, in order."""
    page = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        code = _CODE.match(line)
        if code:
            indent = len(code["indent"])
            options: dict[str, str] = {}
            j = i + 1
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > indent:
                option = _OPTION.match(lines[j])
                if option is None:
                    break  # content right after the directive line
                options[option["name"]] = option["value"].strip()
                j += 1
            end = _body(lines, j, indent)
            first, source = _content(lines, j, end)
            blocks.append(Block(page, first, code["lang"].lower(), source, options))
            i = end
        elif (explicit := _EXPLICIT.match(line)) and not _DIRECTIVE.match(line):
            # A comment or a target: skip its body.
            i = _body(lines, i + 1, len(explicit["indent"]))
        elif line.rstrip().endswith("::") and not _DIRECTIVE.match(line):
            # A paragraph ending in "::" followed by an indented block: a literal block.
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j > i + 1 and j < len(lines) and _indent(lines[j]) > _indent(line):
                end = _body(lines, j, _indent(line))
                first, source = _content(lines, j, end)
                blocks.append(Block(page, first, "", source))
                i = end
            else:
                i += 1
        else:
            i += 1
    return blocks


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.fixture
def docs_environment(
    redis_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A flushed server behind ``$REDIS_URL``, no ``conf.db``, and no default localhost."""
    client = redis_server.client()
    client.flushall()
    client.close()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setattr(redisca.conf, "db", None)
    original = redis.ConnectionPool.__init__

    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        kind = kwargs.get("connection_class", args[0] if args else redis.Connection)
        unix = isinstance(kind, type) and issubclass(kind, redis.UnixDomainSocketConnection)
        host = kwargs.get("host", "localhost")
        port = int(kwargs.get("port", 6379))
        if not unix and host in LOCALHOSTS and port == 6379:
            raise AssertionError(
                "a docs example made a client for the default localhost:6379; examples "
                'must use Session() or Redis.from_url(os.environ["REDIS_URL"])'
            )
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.ConnectionPool, "__init__", guarded)
    yield


def run_page(path: Path, blocks: list[Block]) -> None:
    """Run a page's Python blocks in order in one fresh module."""
    page = blocks[0].page if blocks else path.name
    name = "docs_example_" + re.sub(r"\W", "_", page)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        for block in blocks:
            if not block.runs:
                continue
            # Padding puts the code at its own line numbers: tracebacks show the .rst line.
            code = compile("\n" * (block.line - 1) + block.source, str(path), "exec")
            failure = None
            try:
                exec(code, module.__dict__)
            except Exception as exc:
                # Python's own traceback from the example down, one line per frame (pytest's
                # would print the whole page above the failing line).
                trace = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
                failure = f"the example at {page}:{block.line} failed:\n" + "".join(trace)
            if failure is not None:
                pytest.fail(failure, pytrace=False)
    finally:
        del sys.modules[name]


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_blocks_say_their_language(path: Path) -> None:
    bare = [f"{b.page}:{b.line}" for b in parse(path) if not b.lang]
    assert not bare, (
        "bare '::' literal blocks (write '.. code-block:: python' to run it, or "
        f"'.. code-block:: text' / 'console' / 'shell' if it is not Python): {bare}"
    )


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
@pytest.mark.usefixtures("docs_environment")
def test_examples_run(path: Path) -> None:
    run_page(path, parse(path))


# -- the API reference ------------------------------------------------------------------

#: Modules whose ``__all__`` the API reference must cover (each once it exists).
PUBLIC_MODULES = [
    name
    for name in (
        "redisca",
        "redisca.conf",
        "redisca.embedded",
        "redisca.flask",
        "redisca.maintenance",
    )
    if importlib.util.find_spec(name) is not None
]
_AUTO = re.compile(r"^\.\. (?P<kind>auto\w+|py:\w+)::\s+(?P<name>[\w.]+)")


def documented(api: Path) -> set[str]:
    """Qualified names that docs/api.rst documents with a directive of their own, or in an
    automodule's explicit ``:members:`` list. (A bare ``:members:`` does not count: autodoc
    silently leaves out data a package imports from its submodules.)"""
    names: set[str] = set()
    lines = api.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        auto = _AUTO.match(line)
        if auto is None:
            continue
        names.add(auto["name"])
        if auto["kind"] != "automodule":
            continue
        options = " ".join(lines[i + 1 : _body(lines, i + 1, 0)])
        listed = re.search(r":members:([^:]*)", options)
        if listed is not None:
            members = [m for m in re.split(r"[\s,]+", listed[1]) if m]
            names.update(f"{auto['name']}.{m}" for m in members)
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_api_reference_covers_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} must say what is public (__all__)"
    missing = sorted(
        f"{module_name}.{name}"
        for name in module.__all__
        if f"{module_name}.{name}" not in documented(ROOT / "docs" / "api.rst")
    )
    assert not missing, f"docs/api.rst does not document: {missing}"


# -- the collector itself ----------------------------------------------------------------


def _parse_text(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "page.rst"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return parse(path, tmp_path)


def test_collector_finds_every_kind_of_block(tmp_path: Path) -> None:
    blocks = _parse_text(
        tmp_path,
        """\
        Title
        =====

        .. code-block:: python

            x = 1

        - a list item with code:

          .. code-block:: python
             :class: no-run

             y = undefined

        .. code-block:: console

            $ pip install redisca

        .. list-table::

           * - .. code:: python

                  z = x + 1
             - text

        .. a comment::

            not a block::

                nor this

        A paragraph with a literal block::

            print("bare")

        Inline ``code::`` is no block, and the end.
        """,
    )
    kinds = [(b.line, b.lang, b.runs, b.source) for b in blocks]
    assert kinds == [
        (6, "python", True, "x = 1\n"),
        (13, "python", False, "y = undefined\n"),
        (17, "console", False, "$ pip install redisca\n"),
        (23, "python", True, "z = x + 1\n"),
        (34, "", False, 'print("bare")\n'),
    ]


def test_failures_name_page_and_line(tmp_path: Path) -> None:
    path = tmp_path / "page.rst"
    path.write_text(
        ".. code-block:: python\n\n    a = 1\n\n.. code-block:: python\n\n    assert a == 2\n",
        encoding="utf-8",
    )
    with pytest.raises(pytest.fail.Exception) as info:
        run_page(path, parse(path, tmp_path))
    message = str(info.value)
    assert "the example at page.rst:7 failed" in message
    assert f'File "{path}", line 7' in message and "assert a == 2" in message


def test_default_localhost_is_refused(docs_environment: None) -> None:
    with pytest.raises(AssertionError, match="localhost:6379"):
        redis.Redis()
    with pytest.raises(AssertionError, match="localhost:6379"):
        redis.Redis.from_url("redis://localhost")
