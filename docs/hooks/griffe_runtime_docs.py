"""griffe extension for the API reference: the stubs (``_core.pyi``) give the
extension's signatures and types, and the compiled extension its docstrings
(written in Rust) where a stub has none; Sphinx roles (``:class:`X```) are
shown as code."""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):`~?([^`]+)`")


def _runtime(path: str) -> Any:
    """The live object at a dotted path, or None (the extension not built)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


class RuntimeDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **_: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        # classes and functions only: an attribute's value (a str) would give its type's docstring
        stub = str(obj.filepath).endswith(".pyi") and (obj.is_class or obj.is_function)
        if obj.docstring is None and stub:
            doc = getattr(_runtime(obj.path), "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                obj.docstring = griffe.Docstring(doc, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)
