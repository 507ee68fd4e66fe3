"""docs/CONTRACT.md cannot drift: its reference blocks are what the code gives now, and it keeps every name
of the original contract (shared/CONTRACT.md, when it is beside the repository) that the code still has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.contract_doc import BLOCK, BLOCKS, DOC, REGENERATE, render

ROOT = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (ROOT.parent / "shared" / "CONTRACT.md", ROOT.parent.parent / "shared" / "CONTRACT.md")
               if p.exists()), None)


def test_generated_blocks_are_current():
    text = DOC.read_text(encoding="utf-8")
    assert {m.group("name") for m in BLOCK.finditer(text)} == set(BLOCKS)  # every block is in the document
    assert text == render(text), f"docs/CONTRACT.md is out of date; regenerate it with: {REGENERATE}"


def test_every_spec_key_flag_and_code_is_in_the_document():
    from core.spec import CHECKS
    from gradmon.cli import build_parser
    from gradmon.findings import FINDING_CODES, SUGGESTION_CODES

    text = DOC.read_text(encoding="utf-8")
    for section, checks in CHECKS.items():
        for key in checks:
            assert f"`{section + '.' if section else ''}{key}`" in text, key
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            for flag in a.option_strings:
                assert flag in ("-h", "--help") or f"`{flag}`" in text, flag
    for code in [*FINDING_CODES, *SUGGESTION_CODES]:
        assert f"`{code}`" in text, code


@pytest.mark.skipif(SHARED is None, reason="shared/CONTRACT.md is not beside this checkout")
def test_the_original_contract_is_kept():
    """Every finding and suggestion code, spec key, command and flag the original contract names is still
    in the code and in the project's copy."""
    from core.spec import CHECKS
    from gradmon.cli import build_parser
    from gradmon.findings import FINDING_CODES, SUGGESTION_CODES

    original = SHARED.read_text(encoding="utf-8")
    ours = DOC.read_text(encoding="utf-8")
    finding_section = original[original.index("## Finding codes"):original.index("## Suggestion codes")]
    for code in re.findall(r"`([a-z_]+)`", finding_section):
        assert code in FINDING_CODES and f"`{code}`" in ours, code
    for code in re.findall(r"`([a-z_]+)`", original[original.index("## Suggestion codes"):]):
        assert code in SUGGESTION_CODES and f"`{code}`" in ours, code
    spec_block = original[original.index("## The run spec"):original.index("## CLI")]
    section = ""
    for line in spec_block.splitlines():
        head = re.match(r"\s*\[(\w+)\]", line)
        key = re.match(r"\s*(\w+)\s*=", line)
        if head:
            section = head.group(1)
        elif key and not line.strip().startswith("#"):
            assert key.group(1) in CHECKS[section], f"{section}.{key.group(1)}"
            assert f"`{section + '.' if section else ''}{key.group(1)}`" in ours
    sub = build_parser()._subparsers._group_actions[0].choices
    cli_table = original[original.index("## CLI"):original.index("## report.json")]
    for command, rest in re.findall(r"\| `gradmon (\w+)([^`]*)`", cli_table):
        assert command in sub, command
        flags = {f for a in sub[command]._actions for f in a.option_strings}
        for flag in re.findall(r"(--[\w-]+|-o)\b", rest):
            assert flag in flags, f"gradmon {command} {flag}"
