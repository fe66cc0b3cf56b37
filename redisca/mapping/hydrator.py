"""A filler per mapped class: one generated function that sets every field from a hash.

Loading is the loop every ``get_many`` and every query runs once per entity.
A generic loop over the fields pays, per field, a tuple unpacking, a branch on
``None``, a branch on references and a dict store for the snapshot; the function
built here for one class does only the lookups, the decoder calls and the slot
stores, and builds the snapshot as one dict display. The same idea as attrs'
generated ``__init__`` and cattrs' generated structuring functions.

The generated source holds only local names (``h0``, ``d0``, …); every field
name, hash field, decoder and setter reaches it as a value in its namespace, so
no name a user chose is ever pasted into code.

A decoder that fails raises from the filler as it is: the caller reruns the
generic loop, which names the key and the field in its :class:`DecodeError`.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mapper import MappedField, Mapper

#: ``filler(obj, raw, lookup, stub)``: sets every mapped attribute of ``obj`` from ``raw``
#: (a hash as a dict) and returns the snapshot (each field's stored bytes, ``None`` when
#: absent). A reference's id becomes the instance ``lookup((mapper, id))`` finds (the
#: identity map's ``get``: an object with ``.obj``), else ``stub(mapper, id)``.
Filler = Callable[
    [Any, dict[bytes, bytes], Callable[[Any], Any], Callable[[Any, str], Any]],
    "dict[MappedField, Any]",
]

_counter = 0


def build_filler(mapper: Mapper) -> tuple[Filler, bool]:
    """Generate the filler of a mapper whose attributes are instrumented.

    Built on first load, when the classes references point to are usually mapped:
    their mappers are then constants of the code, and the second value is true. One
    still unmapped is resolved on each call, as the generic loop does, and the
    second value is false: build again later.
    """
    global _counter
    namespace: dict[str, Any] = {}
    lines = ["def fill(obj, raw, lookup, stub):", "    get = raw.get"]
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
    source = "\n".join(lines) + "\n"
    _counter += 1
    filename = f"<redisca filler {mapper.class_.__qualname__} #{_counter}>"
    # Registered with linecache so tracebacks and profilers can show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # fixed text and names, see above
    return namespace["fill"], complete


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
        "        found = lookup((t, v))",
        f"        s{i}(obj, stub(t, v) if found is None else found.obj)",
    ]


__all__ = ["Filler", "build_filler"]
