"""python/kvtier/_native.pyi against the built `kvtier._native`, so the stub cannot drift from
the Rust (connectors/python/src/*.rs): mypy's stubtest compares every name, signature,
default and property; an AST walk of the stub checks the names again without stubtest's
heuristics (the exceptions `create_exception!` makes say they come from `_native`, which
stubtest takes for an import), the exceptions' bases (stubtest does not), and that every item
keeps a one-line docstring. Nothing here skips: without mypy (the `test` extra) it fails."""

import ast
import ctypes
import os
import pathlib
import subprocess
import sys

import kvtier
import kvtier._native as native

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "kvtier"
STUB = PACKAGE / "_native.pyi"

# What every module has: not part of the native module's API.
MODULE_DUNDERS = {"__builtins__", "__cached__", "__doc__", "__file__", "__loader__", "__name__", "__package__"}
MODULE_DUNDERS |= {"__path__", "__spec__"}
# What every class has (or gets from its metaclass): not part of a class's API.
CLASS_DUNDERS = {"__dict__", "__doc__", "__module__", "__qualname__", "__text_signature__", "__weakref__"}


def has_buffer_slot(cls: type) -> bool:
    """Whether `cls` implements the buffer protocol (its `bf_getbuffer` slot): Python shows it as
    `__buffer__` from 3.12 on only, while the stub declares it on every version (PEP 688)."""
    get_slot = ctypes.pythonapi.PyType_GetSlot
    get_slot.restype = ctypes.c_void_p
    get_slot.argtypes = [ctypes.py_object, ctypes.c_int]
    return get_slot(cls, 1) is not None  # 1: Py_bf_getbuffer


def buffer_classes() -> list[str]:
    """The native classes that implement the buffer protocol."""
    return sorted(
        n for n in native.__all__ if isinstance(getattr(native, n), type) and has_buffer_slot(getattr(native, n))
    )


def stub_module() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def applies(test: ast.expr) -> bool:
    """Whether an `if` of the stub (a `sys.version_info` or `sys.platform` check) holds here."""
    return bool(eval(compile(ast.Expression(test), str(STUB), "eval"), {"sys": sys}))


def definitions(body: list[ast.stmt]):
    """The statements of a stub body that define names, `if` blocks resolved for this Python."""
    for node in body:
        if isinstance(node, ast.If):
            yield from definitions(node.body if applies(node.test) else node.orelse)
        else:
            yield node


def names(body: list[ast.stmt]) -> set[str]:
    found = set()
    for node in definitions(body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
        elif isinstance(node, ast.Assign):
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return found


def stub_classes() -> dict[str, ast.ClassDef]:
    return {n.name: n for n in definitions(stub_module().body) if isinstance(n, ast.ClassDef)}


def public(name: str) -> bool:
    """A name of the API: not `_private`; dunders are (`__version__`, `__len__`, ...)."""
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def test_stubtest_finds_no_difference(tmp_path):
    """mypy's stubtest: the stub's names, signatures (pyo3 gives each a __text_signature__),
    defaults, properties and @final match the module, in both directions."""
    import mypy.stubtest  # noqa: F401 - a missing mypy fails here: `pip install kvtier[test]`

    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    # Before 3.12 the buffer protocol has no `__buffer__` at runtime: checked below instead.
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("".join(f"kvtier._native.{n}.__buffer__\n" for n in buffer_classes()))
    allow = ["--allowlist", str(allowlist)] if sys.version_info < (3, 12) else []
    # The stub of this checkout (MYPYPATH comes first), against the module pip installed.
    env = {**os.environ, "MYPYPATH": str(PACKAGE.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "kvtier._native", "--mypy-config-file", str(config), *allow],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"stubtest found differences:\n{out.stdout}\n{out.stderr}"


def test_the_stub_names_exactly_what_the_module_exports():
    runtime = {n for n in dir(native) if public(n)} - MODULE_DUNDERS
    stub = {n for n in names(stub_module().body) if public(n)}
    assert sorted(runtime - stub) == [], "in kvtier._native, missing from _native.pyi"
    assert sorted(stub - runtime) == [], "in _native.pyi, not in kvtier._native"
    (stub_all,) = [n.value for n in stub_module().body if isinstance(n, ast.Assign) and names([n]) == {"__all__"}]
    assert ast.literal_eval(stub_all) == native.__all__


def test_each_class_has_the_stubs_members_and_no_others():
    for name, node in stub_classes().items():
        if not public(name):
            continue  # a stub-only type (_ObjectInfo: the dict the object calls return)
        cls = getattr(native, name)
        runtime = {n for n in vars(cls) if public(n)} - CLASS_DUNDERS
        if has_buffer_slot(cls):
            runtime.add("__buffer__")  # there from 3.12 on
        stub = {n for n in names(node.body) if public(n)}
        assert sorted(runtime - stub) == [], f"{name}: in kvtier._native, missing from _native.pyi"
        assert sorted(stub - runtime) == [], f"{name}: in _native.pyi, not in kvtier._native"


def test_the_exceptions_have_the_stubs_bases():
    classes = stub_classes()
    exceptions = {
        n for n in dir(native) if isinstance(getattr(native, n), type) and issubclass(getattr(native, n), BaseException)
    }
    assert exceptions, "kvtier._native exports no exception"
    for name in exceptions:
        runtime = [b.__name__ for b in getattr(native, name).__bases__]
        stub = [ast.unparse(b) for b in classes[name].bases]
        assert stub == runtime, name
    # And what the package re-exports is the native module's own.
    assert [n for n in kvtier.__all__ if hasattr(native, n) and getattr(kvtier, n) is not getattr(native, n)] == []


def test_every_stub_item_has_a_one_line_docstring():
    missing = []

    def walk(body, where):
        for node in definitions(body):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if not doc or "\n" in doc:
                    missing.append(f"{where}{node.name}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{where}{node.name}.")

    walk(stub_module().body, "")
    assert missing == [], "no docstring, or one of several lines"


def test_the_installed_package_ships_this_stub_and_py_typed():
    """PEP 561: the wheel carries py.typed and the stub (maturin takes them from python/)."""
    installed = pathlib.Path(kvtier.__file__).parent
    assert (installed / "py.typed").is_file()
    assert (installed / "_native.pyi").read_text() == STUB.read_text(), "reinstall the package: its stub is stale"
