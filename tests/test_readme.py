"""The README is true: every claim in its claims table is quoted from the text and backed by a test or a
benchmark that exists, every ``gradmon`` command it shows parses with the real command line, the install
lines give the CPU build, and the benchmark table names the script that produces each row."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BODY, CLAIMS = README.split("## Claims and what checks them", 1)


def claims() -> list[tuple[str, list[str]]]:
    rows = []
    for line in CLAIMS.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("claim (quoted from above)", "---"):
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_claim_is_quoted_from_the_readme_and_backed_by_something_that_exists():
    rows = claims()
    assert len(rows) >= 25
    plain = re.sub(r"\s+", " ", BODY)
    for claim, backers in rows:
        text = claim.replace("\\|", "|")
        assert re.sub(r"\s+", " ", text) in plain, f"claim not in the README text: {claim!r}"
        assert backers, claim
        for backer in backers:
            path, _, name = backer.partition("::")
            assert (ROOT / path).exists(), backer
            if name:
                assert name in _defined(ROOT / path), f"{backer} does not exist"
            else:
                assert path.startswith("benchmarks/"), backer


def test_every_test_file_claim_is_collected_by_pytest():
    """A backing test is a real test: its file is a test module pytest collects (``tests/test_*.py``)."""
    for _, backers in claims():
        for backer in backers:
            if "::" in backer:
                path = backer.split("::")[0]
                assert re.fullmatch(r"tests/test_\w+\.py", path) and backer.split("::")[1].startswith("test_")


def test_benchmark_rows_name_their_script_and_date():
    table = BODY[BODY.index("| benchmark | produced by | measured | result |"):]
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")]
    assert len(rows) >= 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        script = re.fullmatch(r"`python (benchmarks/\w+\.py)`", cells[1])
        assert script and (ROOT / script.group(1)).exists(), row
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[2]), row


def commands() -> list[str]:
    """Every ``gradmon ...`` line of the README's command blocks and inline code."""
    found = re.findall(r"^\s{4}(gradmon [^#\n]*)", BODY, re.M) + re.findall(r"`(gradmon [^`]+)`", BODY)
    return [c.strip() for c in found]


def test_every_gradmon_command_in_the_readme_parses():
    from gradmon.cli import build_parser

    parser = build_parser()
    cmds = commands()
    assert len(cmds) >= 8
    for cmd in cmds:
        argv = [("gradmon/scenarios/healthy.toml" if a == "SPEC" else a)
                for a in shlex.split(cmd.split(">")[0])[1:]]
        if argv == ["--version"]:
            continue
        if argv and argv[0] == "demo" and len(argv) == 2 and argv[1] not in ("--no-fix",):
            argv = argv[:2]
        parser.parse_args(argv)  # raises on an unknown command or flag


def test_install_lines():
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in BODY
    assert re.search(r"`pip install torch`", BODY)  # the GPU route, plainly
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q torch==2.13.0" in ci  # CI keeps the local CPU wheel
    # "the extras never replace a torch that is already installed": every torch requirement of every extra
    # is a lower bound the installed CPU build satisfies (no pin, no upper bound)
    import torch

    installed = torch.__version__.split("+")[0]
    reqs = [Requirement(r) for r in requires("gradmon") or []]
    extras = {"torch", "lightning", "transformers"}
    torch_reqs = [r for r in reqs if r.name == "torch"]
    assert {e for r in torch_reqs for e in extras if r.marker and r.marker.evaluate({"extra": e})} == extras
    for r in torch_reqs:
        assert all(s.operator == ">=" for s in r.specifier) and r.specifier.contains(installed), r
    core = [r for r in reqs if r.marker is None]
    assert not any(r.name in ("torch", "lightning", "transformers") for r in core)  # the core install stays light


def test_demo_fixes_are_the_ones_the_readme_names():
    from gradmon.scenarios import FIXES, SCENARIOS

    assert set(FIXES) == {"vanishing", "exploding", "dead-relu", "saturation"}
    alone = set(SCENARIOS) - set(FIXES)
    assert alone == {"sharpness", "healthy"}
    assert "`sharpness` and `healthy`\nrun alone" in BODY or "`sharpness` and `healthy` run alone" in BODY


@pytest.mark.parametrize("args", [["--version"], ["check", "--help"], ["tune", "--help"]])
def test_readme_cli_entry_points_run(args):
    from tests.test_cli_reports import gradmon_cli

    proc = gradmon_cli(*args)
    assert proc.returncode == 0 and proc.stdout
