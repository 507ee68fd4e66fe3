"""The house's import rules, read from the source (every ``import``, at module level or inside a function):
no cycles; core never imports gradmon; gradmon sees core only through the hook protocol and a few named
helpers; data flows one way inside gradmon (vocabulary → data → quantities → detectors → jury/recorder and
presenters → monitor → adapters and runners → command line), presenters never import measurement or
judging code, detectors never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: gradmon's modules by layer: a module may import modules of its own layer or lower ones, never higher
LAYERS: list[tuple[str, ...]] = [
    ("gradmon.vocabulary", "gradmon.schedules", "gradmon.thresholds", "gradmon.quantities.xp", "gradmon.signals"),
    ("gradmon.findings", "gradmon.diagnosis", "gradmon.history", "gradmon.layout"),
    ("gradmon.quantities",),
    ("gradmon.detectors", "gradmon.advice", "gradmon.causes"),
    ("gradmon.jury", "gradmon.recorder", "gradmon.report", "gradmon.sinks", "gradmon.outputs"),
    ("gradmon.monitor",),
    ("gradmon.adapters", "gradmon.run", "gradmon.scenarios", "gradmon.integrations", "gradmon.measure"),
    ("gradmon.doctor", "gradmon.search"),
    ("gradmon.cli", "gradmon.torch", "gradmon.lightning", "gradmon.huggingface", "gradmon.__main__", "gradmon"),
]
#: what of core gradmon may use: the hook protocol everywhere, and named public helpers
CORE_FOR_ALL = ("core.callbacks", "core.files", "core.npz", "core.progress", "core.terminal")
CORE_FOR_RUNNERS = {"core.objective": ("gradmon.measure",), "core.losses": ("gradmon.measure",),
                    "core.spec": ("gradmon.run", "gradmon.doctor", "gradmon.search", "gradmon.cli"),
                    "core.build": ("gradmon.run",), "core.checkpoint": ("gradmon.run",),
                    "core.tune": ("gradmon.findings", "gradmon.doctor", "gradmon.cli")}
PRESENTERS = ("gradmon.report", "gradmon.sinks")
MEASURING_OR_JUDGING = ("gradmon.quantities", "gradmon.recorder", "gradmon.jury", "gradmon.detectors",
                        "gradmon.advice", "gradmon.causes", "gradmon.monitor")


def modules() -> dict[str, Path]:
    out = {}
    for package in ("core", "gradmon"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import submodule`` counts as the submodule)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(module)
    return {m for m in found if m in known and m != name}


GRAPH = {name: imports_of(name, path, modules()) for name, path in modules().items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer(name: str) -> int:
    best = None
    for i, members in enumerate(LAYERS):
        for prefix in members:
            if within(name, prefix) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{name} has no layer in tests/test_imports.py: add it to LAYERS"
    return best[0]


def test_the_parser_sees_function_level_and_relative_imports():
    assert "gradmon.report.markdown" in GRAPH["gradmon.sinks.tensorboard"]
    assert "gradmon.adapters.distributed" in GRAPH["gradmon.adapters.torch"]  # imported inside a function
    assert "core.checks" in GRAPH["core.layers"]  # `from core import checks` is the submodule


def test_no_import_cycles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_core_never_imports_gradmon():
    bad = [(a, b) for a, deps in GRAPH.items() if within(a, "core") for b in deps if within(b, "gradmon")]
    assert not bad, bad


def test_gradmon_uses_core_only_through_the_hook_protocol_and_named_helpers():
    bad = []
    for a, deps in GRAPH.items():
        if not within(a, "gradmon"):
            continue
        for b in deps:
            if not within(b, "core") or b in CORE_FOR_ALL:
                continue
            if not any(within(a, user) for user in CORE_FOR_RUNNERS.get(b, ())):
                bad.append((a, b))
    assert not bad, f"gradmon modules importing core beyond the hook protocol and named helpers: {bad}"


def test_imports_run_one_way_through_the_layers():
    bad = [(a, b) for a, deps in GRAPH.items() if within(a, "gradmon") for b in deps
           if within(b, "gradmon") and layer(b) > layer(a)]
    assert not bad, f"imports against the flow (module -> a higher layer): {bad}"


def test_presenters_never_import_measuring_or_judging_code():
    bad = [(a, b) for a, deps in GRAPH.items() if any(within(a, p) for p in PRESENTERS) for b in deps
           if any(within(b, m) for m in MEASURING_OR_JUDGING)]
    assert not bad, bad


def test_detectors_never_import_each_other():
    bad = [(a, b) for a, deps in GRAPH.items()
           if within(a, "gradmon.detectors") and a not in ("gradmon.detectors", "gradmon.detectors.base")
           for b in deps if within(b, "gradmon.detectors") and b != "gradmon.detectors.base"]
    assert not bad, bad


def test_the_data_layer_never_imports_its_presenters():
    assert not [b for b in GRAPH["gradmon.findings"] if within(b, "gradmon.report")]
