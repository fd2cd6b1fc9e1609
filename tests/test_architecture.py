"""Architecture checks: the import graph of commformer/ and envs/ has no cycle, the layers import one way, modules stay
small, and nothing cites a file that is not in the repository.

The import graph is read from the source (ast), not from sys.modules, so an import inside a function counts as much
as one at module level: a cycle hidden by a lazy import is still a cycle. Edges are the modules an import names
(`import a.b` -> a.b; `from a import b` -> a.b when a/b.py or a/b/ exists, else a; relative imports resolved against
the importing module's package). A package's __init__ that runs implicitly when one of its submodules is imported is
not an edge; an import that names the package itself (`import envs`, `from envs import make_env`) is.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("commformer", "envs")
MAX_LINES = 400
# path (relative to the repository root) -> why it may stay over MAX_LINES
LONG_MODULES: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    """module name -> file of every .py file under PACKAGES."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


MODULES = project_files()


def _project_module(name: str) -> str | None:
    """The longest prefix of dotted `name` that is a project module (None when it is outside the project)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path) -> set[str]:
    """The project modules that `module` (its file: `path`) imports anywhere (module level, functions, classes)."""
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """The project modules that the source of `module` imports anywhere in it."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _project_module(target)
            if resolved is not None and resolved != module:
                out.add(resolved)
    return out


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m, p) for m, p in MODULES.items()}


GRAPH = import_graph()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> ... -> a) per strongly connected component that has one (Tarjan); when the component
    holds more modules than that cycle, a last item names the others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth: at most the number of modules (~60)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    out = []
    for component in components:
        members = set(component)
        start = component[0]
        # shortest way back to start inside the component (BFS), so the message shows one concrete cycle
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = previous.get(v)
        cycle = path + [start]
        rest = sorted(members - set(path))
        out.append(cycle + ([f"(same knot: {', '.join(rest)})"] if rest else []))
    return out


def test_the_walk_sees_every_kind_of_import():
    source = """
import numpy, envs.core
from commformer import config
from . import csv_sink
from ..method import graph as g
from .logger import Logger


def later():
    from commformer.training.resume import plan_resume
    import envs.registry as registry


class K:
    def m(self):
        from envs import make_env
"""
    assert imports_in(source, "commformer.training.progress") == {
        "envs.core", "commformer.config", "commformer.training.csv_sink", "commformer.method.graph",
        "commformer.training.logger", "commformer.training.resume", "envs.registry", "envs"}
    assert imports_in("from . import core\nfrom .core import Step\n", "envs", is_package=True) == {"envs.core"}


def test_cycles_are_reported_with_their_path():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles (imports inside functions included):\n" + "\n".join(
        " -> ".join(c) for c in found)


# importer prefix -> project module prefixes it must not import
FORBIDDEN = {
    "envs": ("commformer",),
    "commformer.method": ("commformer.training", "commformer.analysis", "commformer.config", "commformer.compose",
                          "commformer.cli"),
    "commformer.training": ("commformer.analysis",),
    # a baseline is a policy: it sees the seam and the config, never the loop that runs it
    "commformer.baselines": ("commformer.training", "commformer.analysis", "commformer.compose", "commformer.cli",
                             "commformer.method", "commformer.fast"),
}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_one_way(layer):
    bad = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _under(m, layer)
                 for t in targets if any(_under(t, f) for f in FORBIDDEN[layer]))
    assert not bad, f"{layer} must not import {', '.join(FORBIDDEN[layer])}:\n" + "\n".join(bad)


def test_modules_are_small():
    long = {}
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in LONG_MODULES:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them, or add them to LONG_MODULES with a reason): {long}"


def test_long_module_allowlist_is_current():
    for rel, reason in LONG_MODULES.items():
        assert reason.strip(), f"{rel}: give a reason"
        path = ROOT / rel
        assert path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES, (
            f"{rel} is no longer over {MAX_LINES} lines (or gone): drop it from LONG_MODULES")


# The retired notes (built from parts so this file does not cite them itself).
RETIRED = tuple(name + ".md" for name in ("REFERENCE", "DESIGN"))
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".cfg", ".toml", ".txt", ".ini", ".sh", ".json", ".rst", ".csv"}
SKIP_DIRS = {".git", ".venv", "venv", "runs", "outputs", "multirun", "__pycache__", ".pytest_cache", "node_modules"}


def repository_text_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            out.append(path)
    return sorted(out)


def repository_lines():
    """(place "path:line", line text) of every line of the repository's text files."""
    for path in repository_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            yield f"{path.relative_to(ROOT).as_posix()}:{lineno}", line


def test_nothing_cites_the_retired_notes():
    hits = [place for place, line in repository_lines() if any(name in line for name in RETIRED)]
    assert not hits, f"{len(hits)} lines cite {' / '.join(RETIRED)}:\n" + "\n".join(hits[:50])


CITATION = re.compile(r"(docs/[\w/.-]+\.md)(?:,\s*\"([^\"]+)\")?")


def test_every_docs_citation_names_an_existing_page_and_section():
    """'docs/<page>.md' in code, tests, configs and docs names a file of the repository, and 'docs/<page>.md,
    "<Heading>"' one of that page's headings."""
    bad = []
    for place, line in repository_lines():
        for page, section in CITATION.findall(line):
            target = ROOT / page
            if not target.is_file():
                bad.append(f"{place}: {page} does not exist")
            elif section:
                headings = {h.strip() for h in re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)}
                if section not in headings:
                    bad.append(f"{place}: {page} has no heading {section!r}")
    assert not bad, "\n".join(bad[:50])


def test_readme_layout_agrees_with_the_tree():
    """Every path the README names exists, and its layout block names every package and top-level module of
    commformer/ and every top-level folder of the repository's fixed layout."""
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"`((?:commformer|envs|conf|scripts|docs|tests)/[\w/.-]*)`", readme):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    section = readme.split("## Layout and reading order", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    for entry in sorted((ROOT / "commformer").iterdir()):
        if entry.name.startswith("__") or entry.name.endswith(".egg-info"):
            continue
        name = entry.name + "/" if entry.is_dir() else entry.name
        assert name in block, f"the README's layout does not mention commformer/{name}"
    for top in ("commformer/", "envs/", "conf/", "scripts/", "docs/", "tests/"):
        assert top in block, top
