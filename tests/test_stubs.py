"""The hand-written stubs in _core.pyi must match the extension."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import llmedge
from llmedge import _core

PYI = Path(llmedge.__file__).with_name("_core.pyi")


def _stub_tree() -> ast.Module:
    return ast.parse(PYI.read_text())


def _public(names):
    return {n for n in names if not n.startswith("_") or n == "__version__"}


def test_stub_declares_exactly_the_extension_names():
    stub = set()
    for node in _stub_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stub.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id != "__all__":
                stub.add(node.target.id)
    runtime = _public(n for n in dir(_core) if not inspect.ismodule(getattr(_core, n)))
    assert _public(stub) == runtime


def test_stub_classes_declare_exactly_the_runtime_members():
    for node in _stub_tree().body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(_core, node.name)
        stub = {
            n.name
            for n in node.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (not n.name.startswith("_") or n.name in _DUNDERS)
        }
        runtime = {
            n
            for n in vars(cls)
            if (not n.startswith("_") or n in _DUNDERS) and n not in ("__new__",)
        }
        stub.discard("__new__")
        assert stub == runtime, node.name


_DUNDERS = {
    "__len__",
    "__contains__",
    "__iter__",
    "__enter__",
    "__exit__",
    "__aenter__",
    "__aexit__",
    "__call__",
    "__getitem__",
    "__eq__",
    "__hash__",
    "__bool__",
}
