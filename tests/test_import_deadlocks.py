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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def imports(path, module_level):
    """[(dotted module, line)] a file imports: at module level (with what an `if`/`try` there
    imports), or inside functions."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    top = set()
    for node in tree.body:
        top.update(id(n) for n in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef,
                                                                           ast.AsyncFunctionDef)))
    out = []
    for node in ast.walk(tree):
        if (id(node) in top) != module_level:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return out


def test_our_modules_import_each_other_without_a_cycle():
    modules = our_modules()
    graph = {}
    for name, path in modules.items():
        needs = {dotted for dotted, _ in imports(path, module_level=True) if dotted in modules}
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


def test_no_lazy_import_of_a_submodule_its_package_imports_itself():
    """`from transitions.core import X` in a function is the deadlock; `from transitions import X`
    waits for the package and is safe. Checked for every installed third-party package we
    import lazily (Ray is checked where it is installed: make test-ray)."""
    ours = our_modules()
    offenders, checked = [], 0
    for path in ours.values():
        for dotted, line in imports(path, module_level=False):
            package, _, sub = dotted.partition(".")
            if not sub or package in PACKAGES:
                continue
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
                continue
            checked += 1
            parts = dotted.split(".")
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                parent_spec = importlib.util.find_spec(parent)
                if parent_spec is None or not (parent_spec.origin or "").endswith("__init__.py"):
                    break
                child = parts[depth]
                source = open(parent_spec.origin, encoding="utf-8").read()
                tree = ast.parse(source)
                for node in ast.walk(tree):
                    relative = isinstance(node, ast.ImportFrom) and node.level == 1 and (
                        node.module == child or (node.module is None and child in {a.name for a in node.names}))
                    absolute = isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                        name == f"{parent}.{child}" or name.startswith(f"{parent}.{child}.")
                        for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                     else [node.module or ""]))
                    if relative or absolute:
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{line} imports {dotted}, "
                                         f"which {parent}/__init__ imports itself")
                        break
    assert checked > 0
    assert offenders == []
