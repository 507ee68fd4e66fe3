"""The reference parts of ``docs/CONTRACT.md``, generated from the code: spec keys and defaults, the command
line (every command and option, from the real argument parser), report and finding fields, finding and
suggestion codes, HPARAMS metrics.  The prose around them is written by hand; each generated block sits
between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``.

Regenerate the blocks in place with::

    python -m tests.contract_doc

``tests/test_contract_doc.py`` fails when a block differs from what the code gives.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "CONTRACT.md"
REGENERATE = "python -m tests.contract_doc"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def _value(v) -> str:
    return "(absent: automatic)" if v is None else f"`{json.dumps(v)}`"


def spec_keys() -> str:
    from core.spec import CHECKS, DEFAULTS

    rows = ["| key | default |", "| --- | --- |"]
    for section, checks in CHECKS.items():
        for key in checks:
            default = DEFAULTS[key] if not section else DEFAULTS[section].get(key)
            rows.append(f"| `{f'{section}.{key}' if section else key}` | {_value(default)} |")
    return "\n".join(rows) + "\n"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices:
            name += " " + "\\|".join(str(c) for c in action.choices)
        default = "" if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings \
            else f" (default `{action.default}`)"
        rows.append(f"| {name} | {(action.help or '').replace('|', '/')}{default} |")
    return rows


def cli() -> str:
    from gradmon.cli import build_parser

    parser = build_parser()
    out = ["| `gradmon` | option |", "| --- | --- |", *_options(parser), ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"#### `gradmon {name}`", "", p.description or next(
            (c.help for c in sub._choices_actions if c.dest == name), ""), "",
                "| argument | meaning |", "| --- | --- |", *_options(p), ""]
    return "\n".join(out)


def report_fields() -> str:
    from gradmon.findings import Finding, HealthReport, Suggestion

    report = HealthReport(spec={}, steps=0, findings=[Finding("dead_units", "warning", "dense0", 0, 1, "m", {},
                                                              [Suggestion("leaky_relu", "t", {})])],
                          extra={"x": 1})
    d = report.to_dict()
    return ("- report: " + ", ".join(f"`{k}`" for k in d) + "\n"
            "- finding: " + ", ".join(f"`{k}`" for k in d["findings"][0]) + "\n"
            "- suggestion: " + ", ".join(f"`{k}`" for k in d["findings"][0]["suggestions"][0]) + "\n")


def codes() -> str:
    from gradmon.findings import FINDING_CODES, SUGGESTION_CODES

    rows = ["| finding code | meaning |", "| --- | --- |"]
    rows += [f"| `{c}` | {m} |" for c, m in FINDING_CODES.items()]
    rows += ["", "Suggestion codes: " + ", ".join(f"`{c}`" for c in SUGGESTION_CODES) + "."]
    return "\n".join(rows) + "\n"


def hparams_metrics() -> str:
    from gradmon.sinks.dashboard import METRIC_MEANING

    return "\n".join(f"- `{k}`: {v}" for k, v in METRIC_MEANING.items()) + "\n"


def check_formats() -> str:
    from gradmon.report.check import FINISHED, FORMATS

    return (f"Formats: {', '.join(f'`{f}`' for f in FORMATS)}.  A run passes only when it ended "
            f"{' or '.join(f'`{e}`' for e in FINISHED)}(`: ...`).\n")


BLOCKS = {"spec-keys": spec_keys, "cli": cli, "report-fields": report_fields, "codes": codes,
          "hparams-metrics": hparams_metrics, "check-formats": check_formats}


def render(text: str) -> str:
    """``text`` with every generated block replaced by what the code gives now."""
    def replace(m: re.Match) -> str:
        return m.group(1) + BLOCKS[m.group("name")]() + m.group(4)
    return BLOCK.sub(replace, text)


def main() -> None:
    DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
