"""The modules of jglow import one another without a cycle, counting imports inside functions."""

import ast
import pathlib

import jglow

PACKAGE_ROOT = pathlib.Path(jglow.__file__).parent


def _module_paths():
    """`{dotted module name: path}` of every module of jglow (a package by its `__init__`)."""
    paths = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return paths


def _imported(tree, modules) -> set:
    """The jglow modules `tree` imports anywhere (`from jglow import checks` is `jglow.checks`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules else node.module)
    return names & set(modules)


def import_graph():
    modules = _module_paths()
    return {name: _imported(ast.parse(path.read_text()), modules) for name, path in modules.items()}


def first_cycle(graph):
    """A list of modules `[a, b, ..., a]` each importing the next, or None."""
    done, path = set(), []

    def visit(name):
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert first_cycle(graph) == ["a", "b", "c", "a"]
    assert first_cycle({"a": {"b"}, "b": set()}) is None


def test_jglow_has_no_import_cycle():
    graph = import_graph()
    assert {"jglow.checks", "jglow.model", "jglow.ensemble"} <= set(graph)
    assert "jglow.model_params" in graph["jglow.checks"]
    assert first_cycle(graph) is None, " -> ".join(first_cycle(graph))
