"""The layers of the package, checked on its source: no import cycles (imports inside
functions included), commands and the CLI imported by nobody else, losses and the distributed
helpers usable without the engine."""

import ast
from pathlib import Path

import fewlabels

ROOT = Path(fewlabels.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in ROOT.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The fewlabels modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.startswith("fewlabels") and name in modules:
                found.add(name)
    # "from fewlabels.x import y" names x itself only when y is not a module of x
    return {name for name in found
            if not any(other.startswith(name + ".") for other in found)
            or not (ROOT.parent / Path(*name.split("."))).is_dir()}


def _graph() -> dict[str, set[str]]:
    from fewlabels.commands import COMMANDS

    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    graph["fewlabels.commands"] |= set(COMMANDS.values())  # imported by name, at run time
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            # a package's __init__ importing its own submodules is how packages work
            if module.startswith(target + ".") and target + ".__init__" not in graph:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_nothing_imports_the_cli_and_only_commands_import_commands():
    for module, targets in _graph().items():
        if module == "fewlabels.__main__":  # `python -m fewlabels`: the CLI's other door
            assert targets <= {"fewlabels.cli"}, targets
            continue
        assert "fewlabels.cli" not in targets, f"{module} imports the CLI"
        if module == "fewlabels.cli" or module.startswith("fewlabels.commands"):
            continue
        bad = [t for t in targets if t.startswith("fewlabels.commands")]
        assert not bad, f"{module} imports {bad}"


def test_losses_and_distributed_helpers_need_no_engine():
    for module, targets in _graph().items():
        if module.startswith("fewlabels.losses") or module == "fewlabels.distributed":
            bad = [t for t in targets if t.split(".")[1] in
                   ("engine", "methods", "commands", "cli", "evaluate", "runs")]
            assert not bad, f"{module} imports {bad}"
    assert _graph()["fewlabels.distributed"] == set()
