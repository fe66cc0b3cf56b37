"""Two functions generated per mapped class: the filler and the encoder.

Loading runs once per entity of every ``get_many`` and query, encoding once per
inserted entity. A generic loop over the fields pays, per field, a tuple
unpacking or a chain of attribute lookups, branches on ``None`` and on
references, and a dict store; the functions built here for one class do only
the reads, the codec calls and the stores, and build their dict as one display.
The same idea as attrs' generated ``__init__`` and cattrs' generated
structuring functions.

- The *filler* sets every field of a new instance from its hash and returns
  the snapshot.
- The *encoder* returns every field's stored bytes (``None`` where unset or
  ``None``): the values of an insert.

The generated source holds only fixed words and numbered local names (``h0``,
``d0``, …); every field, hash field, codec function and slot accessor reaches it
as a value in its namespace, so no name a user chose is ever pasted into code.

A codec function that fails raises from the generated code as it is: the caller
reruns the generic loop, whose error names the key or class and the field.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mapper import MappedField, Mapper

#: ``filler(obj, raw, tables, stub)``: sets every mapped attribute of ``obj`` from ``raw``
#: (a hash as a dict) and returns the snapshot (each field's stored bytes, ``None`` when
#: absent). A reference's id becomes the instance the identity map holds for it
#: (``tables[mapper][id]``, an object with ``.obj``), else ``stub(mapper, id)``.
Filler = Callable[
    [Any, dict[bytes, bytes], "dict[Mapper, dict[str, Any]]", Callable[[Any, str], Any]],
    "dict[MappedField, Any]",
]

#: ``encoder(obj)``: every field's stored bytes, ``None`` where unset or ``None``.
Encoder = Callable[[Any], "dict[MappedField, bytes | None]"]

_counter = 0


def build_filler(mapper: Mapper) -> tuple[Filler, bool]:
    """Generate the filler of a mapper whose attributes are instrumented.

    Built on first load, when the classes references point to are usually mapped:
    their mappers are then constants of the code, and the second value is true. One
    still unmapped is resolved on each call, as the generic loop does, and the
    second value is false: build again later.
    """
    namespace: dict[str, Any] = {}
    lines = ["def fill(obj, raw, tables, stub):", "    get = raw.get"]
    complete = True
    snapshot = []
    for i, field in enumerate(mapper.fields):
        namespace.update(
            {
                f"f{i}": field,
                f"h{i}": field.hash_field,
                f"s{i}": field.attribute.store,
                f"d{i}": field.decoder,
            }
        )
        lines.append(f"    e{i} = get(h{i})")
        snapshot.append(f"f{i}: e{i}")
        if field.is_reference:
            resolved = _resolve(i, field, namespace)
            complete = complete and resolved
            lines += _reference_lines(i, resolved)
        else:
            lines.append(f"    s{i}(obj, None if e{i} is None else d{i}(e{i}))")
    lines.append(f"    return {{{', '.join(snapshot)}}}")
    return _compile("fill", lines, namespace, mapper), complete


def build_encoder(mapper: Mapper) -> tuple[Encoder, bool]:
    """Generate the encoder of a mapper whose attributes are instrumented.

    As :func:`build_filler`, the second value says whether every reference's target
    was mapped (its id is then read directly); if not, build again later.
    """
    namespace: dict[str, Any] = {}
    lines = ["def encode(obj):"]
    values = []
    complete = True
    for i, field in enumerate(mapper.fields):
        # A reference's id comes from MappedField.encode, which also refuses a target
        # without one; other fields call their codec's encoder directly.
        encode = field.encode if field.is_reference else field.encoder
        namespace.update({f"f{i}": field, f"a{i}": field.attribute.fetch, f"c{i}": encode})
        lines += [
            "    try:",
            f"        v = a{i}(obj)",
            "    except AttributeError:",
            f"        r{i} = None",
            "    else:",
        ]
        if field.is_reference and _resolve(i, field, namespace):
            lines += _reference_id_lines(i, namespace)
        else:
            complete = complete and not field.is_reference
            lines.append(f"        r{i} = None if v is None else c{i}(v)")
        values.append(f"f{i}: r{i}")
    lines.append(f"    return {{{', '.join(values)}}}")
    return _compile("encode", lines, namespace, mapper), complete


def _reference_id_lines(i: int, namespace: dict[str, Any]) -> list[str]:
    """A reference's stored id read from the target's id attribute (a tenth of an insert's
    encoding went to MappedField.encode's calls). A target without an id (unset, ``None``,
    not text) fails there: then MappedField.encode raises the error naming the field."""
    namespace[f"i{i}"] = namespace[f"m{i}"].id_attribute.fetch
    return [
        "        if v is None:",
        f"            r{i} = None",
        "        else:",
        "            try:",
        f"                r{i} = i{i}(v).encode()",
        "            except AttributeError:",
        f"                r{i} = c{i}(v)",
    ]


def _compile(name: str, lines: list[str], namespace: dict[str, Any], mapper: Mapper) -> Any:
    global _counter
    source = "\n".join(lines) + "\n"
    _counter += 1
    filename = f"<redisca {name} {mapper.class_.__qualname__} #{_counter}>"
    # Registered with linecache so tracebacks and profilers can show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # fixed text and names, see above
    return namespace[name]


def _resolve(i: int, field: MappedField, namespace: dict[str, Any]) -> bool:
    try:
        namespace[f"m{i}"] = field.target_mapper()
    except Exception:  # not mapped yet: resolved per call (and reported there)
        namespace[f"t{i}"] = field.target_mapper
        return False
    return True


def _reference_lines(i: int, resolved: bool) -> list[str]:
    return [
        f"    if e{i} is None:",
        f"        s{i}(obj, None)",
        "    else:",
        f"        t = {f'm{i}' if resolved else f't{i}()'}",
        f"        v = d{i}(e{i})",
        "        table = tables.get(t)",
        "        found = None if table is None else table.get(v)",
        f"        s{i}(obj, stub(t, v) if found is None else found.obj)",
    ]


__all__ = ["Encoder", "Filler", "build_encoder", "build_filler"]
