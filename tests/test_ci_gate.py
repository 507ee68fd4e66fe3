"""The CI gate, end to end through the real command line: ``gradmon run --fail-on``, ``gradmon check`` over
several runs (unfinished runs fail), JUnit XML read back by an XML parser, GitHub workflow annotations,
``-q`` and ``--version``."""

from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from xml.etree import ElementTree as ET

import pytest

from gradmon.findings import HealthReport
from tests.test_cli_reports import SCEN, gradmon_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A sick run, a healthy one, and a copy of the healthy one whose training was interrupted."""
    root = tmp_path_factory.mktemp("gate")
    sick = gradmon_cli("run", str(SCEN / "vanishing.toml"), "--logdir", str(root / "sick"), "--set",
                       "train.epochs=3", "--set", "monitor.curvature_every=0", "-q", "--fail-on", "warning")
    healthy = gradmon_cli("run", str(SCEN / "healthy.toml"), "--logdir", str(root / "healthy"), "--set",
                          "train.epochs=2", "--set", "monitor.curvature_every=0", "-q", "--fail-on", "warning")
    shutil.copytree(root / "healthy", root / "interrupted")
    data = json.loads((root / "interrupted" / "report.json").read_text())
    data["ended"] = "interrupted"
    (root / "interrupted" / "report.json").write_text(json.dumps(data))
    return root, sick, healthy


def test_run_fail_on_gates_the_exit_code(runs, tmp_path):
    root, sick, healthy = runs
    report = HealthReport.load(root / "sick")
    assert report.worst("warning")
    assert sick.returncode == 1 and "--fail-on warning: FAIL" in sick.stdout
    assert HealthReport.load(root / "healthy").status == "healthy" and healthy.returncode == 0, healthy.stdout
    # without --fail-on, a run that trained exits 0 whatever it found (the contract's default)
    again = gradmon_cli("run", str(SCEN / "vanishing.toml"), "--logdir", str(tmp_path / "r"), "--set",
                        "train.epochs=1", "--set", "monitor.curvature_every=0", "-q")
    assert again.returncode == 0


def test_check_several_runs_and_unfinished_ones(runs):
    root, _, _ = runs
    ok = gradmon_cli("check", str(root / "healthy"))
    assert ok.returncode == 0
    interrupted = gradmon_cli("check", str(root / "interrupted"))
    assert interrupted.returncode == 1 and "did not finish" in interrupted.stdout  # no finding, still a FAIL
    both = gradmon_cli("check", str(root / "healthy"), str(root / "sick"), "--fail-on", "warning")
    assert both.returncode == 1
    assert f"== {root / 'healthy'}" in both.stdout and f"== {root / 'sick'}" in both.stdout
    quiet = gradmon_cli("check", str(root / "healthy"), str(root / "sick"), "-q", "--fail-on", "warning")
    lines = quiet.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{root / 'healthy'}: status: healthy")
    assert lines[1].endswith("FAIL") and quiet.returncode == 1
    as_json = json.loads(gradmon_cli("check", str(root / "sick"), str(root / "interrupted"), "--format",
                                     "json").stdout)
    assert [r["run"] for r in as_json] == [str(root / "sick"), str(root / "interrupted")]
    assert as_json[1]["finished"] is False and as_json[1]["failed"] is True
    missing = gradmon_cli("check", str(root / "healthy"), str(root / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope" in missing.stderr


def test_junit_xml_is_valid_and_counts_what_fails(runs):
    root, _, _ = runs
    proc = gradmon_cli("check", str(root / "sick"), str(root / "healthy"), str(root / "interrupted"),
                       "--format", "junit", "--fail-on", "warning")
    assert proc.returncode == 1
    tree = ET.fromstring(proc.stdout.encode("utf-8"))  # a real XML parser: well-formed, one root
    assert tree.tag == "testsuites"
    suites = tree.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(root / n) for n in ("sick", "healthy", "interrupted")]
    total = 0
    for suite, name in zip(suites, ("sick", "healthy", "interrupted")):
        report = HealthReport.load(root / name)
        cases = suite.findall("testcase")
        assert len(cases) == len(report.findings) + 1 == int(suite.get("tests"))
        failing = len(report.worst("warning")) + (name == "interrupted")
        assert len(suite.findall("testcase/failure")) == failing == int(suite.get("failures"))
        assert all(c.get("classname") and c.get("name") for c in cases)
        total += failing
        for f in report.worst("warning"):
            case = next(c for c in cases if c.get("classname") == f"gradmon.{f.code}")
            assert f.message in case.find("failure").get("message")
            if f.suggestions and f.suggestions[0].patch:
                assert "--set " in case.find("failure").text
    assert int(tree.get("failures")) == total and int(tree.get("errors")) == 0


def test_github_annotations(runs):
    root, _, _ = runs
    proc = gradmon_cli("check", str(root / "sick"), str(root / "interrupted"), "--format", "github")
    report = HealthReport.load(root / "sick")
    commands = [ln for ln in proc.stdout.splitlines() if ln.startswith("::")]
    pattern = re.compile(r"^::(error|warning|notice) title=([^:\n]*)::(.*)$")
    assert all(pattern.match(c) for c in commands), commands
    by_title = {pattern.match(c).group(2): pattern.match(c) for c in commands}
    for f in report.findings:
        match = next(m for t, m in by_title.items() if f.code in t)
        assert match.group(1) == {"error": "error", "warning": "warning", "info": "notice"}[f.severity]
        message = match.group(3).replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
        assert message.splitlines()[0] == f.message
    assert any("did not finish" in t for t in by_title)  # the interrupted run is an error annotation
    assert proc.returncode == 1


def test_version():
    proc = gradmon_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"gradmon {version('gradmon')}"
