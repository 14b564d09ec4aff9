"""The runtime packages stand without devtools: `shared` and `services` never import it,
except `anting run` and `anting kafka`, inside their command functions, so the image (which
copies shared/ and services/ alone) imports and runs every other command."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = ("shared", "services")
# (file, function) where a devtools import is allowed: the commands that run dev tools
ALLOWED = {("services/cli.py", "run"), ("services/cli.py", "kafka")}


def _imports_devtools(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "devtools" or a.name.startswith("devtools.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        return node.level == 0 and (module == "devtools" or module.startswith("devtools."))
    return False


def _devtools_imports(tree: ast.Module) -> Iterator[tuple[int, str | None]]:
    """(line, the module-level function it is in, or None) of each import of devtools or a
    module under it; an import in a class body or a method counts as None."""
    for statement in tree.body:
        function = statement.name if isinstance(statement, ast.FunctionDef) else None
        for node in ast.walk(statement):
            if _imports_devtools(node):
                yield node.lineno, function


def test_runtime_packages_import_devtools_only_inside_the_dev_commands() -> None:
    """No module of shared/ or services/ imports devtools at module level (nor in a class
    body, nor in any other function): only services/cli.py's run and kafka do."""
    found: list[tuple[str, int, str | None]] = []
    for package in RUNTIME:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            found += [(rel, line, fn) for line, fn in _devtools_imports(tree)]
    assert found, "the walk found no import at all: it no longer sees the dev commands"
    assert [(rel, line, fn) for rel, line, fn in found if (rel, fn) not in ALLOWED] == []


def _without_devtools(*argv: str) -> subprocess.CompletedProcess[str]:
    """``anting ARGV`` in a Python where devtools cannot be imported (as in the image), after
    importing the services' entry modules."""
    code = (
        "import sys\n"
        "sys.modules['devtools'] = None  # any import of it raises ModuleNotFoundError\n"
        "import services.cli, services.ingest.main, services.enrich.main, services.notify.main\n"
        f"sys.argv = ['anting', *{list(argv)!r}]\n"
        "services.cli.main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})


def test_the_cli_and_the_services_import_without_devtools() -> None:
    """The services' entry modules import and `anting --help` lists every command."""
    result = _without_devtools("--help")
    assert result.returncode == 0, result.stdout + result.stderr
    for command in ("serve", "topics", "run", "kafka"):
        assert f" {command} " in result.stdout, result.stdout


def test_the_dev_commands_without_devtools_say_so() -> None:
    """`anting kafka` where devtools is missing: one line saying why, exit 2, no traceback."""
    result = _without_devtools("kafka", "--fetch-only")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "`anting kafka` is a development tool" in result.stderr, result.stderr


def test_every_runtime_module_says_what_it_exports() -> None:
    """Each module of shared/, services/ and devtools/ (packages' __init__ aside) has an
    ``__all__``, and every name in it is defined there: the public surface is written down."""
    missing, unknown = [], []
    for root in (*RUNTIME, "devtools"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            tree = ast.parse(path.read_text())
            exported = None
            defined: set[str] = set()
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    defined.add(node.name)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        for name in (t.elts if isinstance(t, ast.Tuple) else [t]):
                            if isinstance(name, ast.Name):
                                defined.add(name.id)
                        if isinstance(t, ast.Name) and t.id == "__all__" and node.value is not None:
                            exported = ast.literal_eval(node.value)
                elif isinstance(node, ast.Import | ast.ImportFrom):
                    defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            rel = str(path.relative_to(REPO))
            if exported is None:
                missing.append(rel)
            else:
                unknown += [f"{rel}: {name}" for name in exported if name not in defined]
    assert not missing, f"modules without __all__: {missing}"
    assert not unknown, f"names in __all__ not defined in the module: {unknown}"


def test_seams_are_typed() -> None:
    """Parameters annotated ``Any`` in shared/ and services/ are few, and each is a
    pass-through of another library's signature whose definition line says why (``# Any:``)."""
    bare = []
    count = 0
    for root in RUNTIME:
        for path in sorted((REPO / root).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
                anys = [p.arg for p in params if p.annotation is not None and ast.unparse(p.annotation) == "Any"]
                if not anys:
                    continue
                count += len(anys)
                head = "\n".join(lines[node.lineno - 1:(node.body[0].lineno - 1)])
                if "# Any:" not in head:
                    bare.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}({', '.join(anys)})")
    assert count < 15, f"{count} parameters annotated Any"
    assert not bare, f"parameters annotated Any without a reason (# Any: ...): {bare}"
