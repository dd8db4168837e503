"""Imports that threads may run at the same time never wait on each other in a cycle.

Python's import locks are per module. Two threads deadlock (broken by _DeadlockError, which
the CLI reports as an internal error, exit 70) when each holds one module's lock and waits for
the other's. Our modules import lazily, often from worker threads while the main thread imports
too, so the import graph must give no such cycle:

- a lazy `from pkg.sub import x` takes `pkg.sub`'s lock and then waits for `pkg`; if another
  thread is running `pkg/__init__`, which imports `.sub`, that is a cycle (CI's Ray kill campaign:
  `transitions.core`, fixed in engine/tasks.py, forced in tests/test_tasks.py);
- two of our modules importing each other at module level is the same cycle.
"""
import ast
import importlib.util
import os

from tests.conftest import ROOT
PACKAGES = ("engine", "states")


def our_modules():
    """{dotted name: path} of every module of the engine and the states."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _parse(path):
    return ast.parse(open(path, encoding="utf-8").read())


def _module_scope(tree):
    """The nodes that run when the module is imported (with what an `if`/`try` there holds)."""
    return [node for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for node in ast.walk(top)]


def _imports(nodes, names=False):
    """[(dotted module, line)] the NODES import (absolute only); with NAMES, also `pkg.name`
    for each `from pkg import name` (which may be a submodule)."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if names:
                found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_our_modules_import_each_other_without_a_cycle():
    modules = our_modules()
    graph = {}
    for name, path in modules.items():
        needs = {dotted for dotted, _ in _imports(_module_scope(_parse(path)), names=True) if dotted in modules}
        if "." in name:
            needs.add(name.rsplit(".", 1)[0])  # a module's package is imported first
        graph[name] = needs
    assert len(graph) > 50
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def scoped_imports(path):
    """[(dotted module, line, top packages the same scope imported on an earlier line)] of every
    import: the module's own (which run when a thread imports it lazily) and each function's
    (a function nested in another is looked at on its own too)."""
    tree = _parse(path)
    scopes = [_module_scope(tree)] + [list(ast.walk(func)) for func in ast.walk(tree)
                                      if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))]
    out = []
    for nodes in scopes:
        found = _imports(nodes)
        for dotted, line in found:
            earlier = {d for d, other in found if other < line and "." not in d}
            out.append((dotted, line, earlier))
    return out


def _imports_child(init_path, parent, child):
    """True when the package file INIT_PATH (of PARENT) imports its submodule CHILD itself:
    `from .child import`, `from . import child`, `import parent.child`, `from parent.child
    import` or `from parent import child`."""
    for node in ast.walk(_parse(init_path)):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if node.level == 1 and (node.module == child or (node.module is None and child in names)):
                return True
            if node.level == 0 and node.module and (
                    node.module == f"{parent}.{child}" or node.module.startswith(f"{parent}.{child}.")
                    or (node.module == parent and child in names)):
                return True
        elif isinstance(node, ast.Import) and any(
                alias.name == f"{parent}.{child}" or alias.name.startswith(f"{parent}.{child}.")
                for alias in node.names):
            return True
    return False


def test_no_lazy_import_of_a_submodule_its_package_imports_itself():
    """`from transitions.core import X` in a function is the deadlock; `from transitions import X`
    waits for the package and is safe, and so is a submodule imported after the same function
    imported its top package (which is then whole). A module's own imports are checked the same
    way: they run in whichever thread imports that module lazily. Checked for every installed third-party
    package we import lazily (Ray where it is installed: make test-ray's environment)."""
    offenders, checked = set(), 0
    for path in our_modules().values():
        for dotted, line, earlier in scoped_imports(path):
            parts = dotted.split(".")
            if len(parts) < 2 or parts[0] in PACKAGES or parts[0] in earlier:
                continue
            spec = importlib.util.find_spec(parts[0])
            if spec is None or not (spec.origin or "").endswith("__init__.py"):
                continue
            checked += 1
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                parent_spec = importlib.util.find_spec(parent)
                if parent_spec is None or not (parent_spec.origin or "").endswith("__init__.py"):
                    break
                if _imports_child(parent_spec.origin, parent, parts[depth]):
                    offenders.add(f"{os.path.relpath(path, ROOT)}:{line} imports {dotted}, "
                                  f"which {parent}/__init__ imports itself")
                    break
    assert checked > 0
    assert sorted(offenders) == []
