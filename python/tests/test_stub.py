"""The type stub ``softvi/_softvi.pyi`` declares exactly what the extension module defines.

The stub is read with ``ast`` (it ships inside the package, so it is found next to the
installed ``softvi``); the extension is inspected at run time. Compared: the module's public
names, each function's parameters (names, and positional or keyword-only, from PyO3's
``__text_signature__``), and each class's public members.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import softvi
import softvi._softvi as ext

STUB = Path(softvi.__file__).with_name("_softvi.pyi")


def stub_tree() -> ast.Module:
    assert STUB.is_file(), f"the stub {STUB} is missing from the installed package"
    return ast.parse(STUB.read_text())


def public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def parameters(fn: ast.FunctionDef) -> list[tuple[str, str]]:
    a = fn.args
    return [(p.arg, "positional") for p in a.posonlyargs + a.args] + [
        (p.arg, "keyword") for p in a.kwonlyargs
    ]


def test_the_stub_names_exactly_the_extension_s_public_names():
    tree = stub_tree()
    declared = public(
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
    )
    defined = public(dir(ext))
    assert declared == defined, (
        f"in the extension, not the stub: {sorted(defined - declared)}; "
        f"in the stub, not the extension: {sorted(declared - defined)}"
    )


def test_each_function_s_parameters_match():
    checked = 0
    for node in stub_tree().body:
        if not isinstance(node, ast.FunctionDef):
            continue
        signature = inspect.signature(getattr(ext, node.name))
        actual = [
            (p.name, "keyword" if p.kind is p.KEYWORD_ONLY else "positional")
            for p in signature.parameters.values()
        ]
        assert parameters(node) == actual, f"{node.name}: stub {parameters(node)}, ext {actual}"
        checked += 1
    assert checked >= 15, f"only {checked} functions compared: is the stub parsed right?"


def test_each_class_s_members_match():
    for node in stub_tree().body:
        if not isinstance(node, ast.ClassDef):
            continue
        declared = public(item.name for item in node.body if isinstance(item, ast.FunctionDef))
        cls = getattr(ext, node.name)
        # Members the class defines itself (DeviceError inherits RuntimeError's).
        defined = public(name for name in vars(cls) if name not in vars(RuntimeError))
        assert declared == defined, f"{node.name}: stub {sorted(declared)}, ext {sorted(defined)}"
