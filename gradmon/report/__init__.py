"""Presentation of health reports: HTML, Markdown, and the text/JSON of ``gradmon check``."""

from gradmon.report.html import render_html
from gradmon.report.markdown import render_markdown
from gradmon.report.text import exit_code, patch_to_cli, render_check

__all__ = ["exit_code", "patch_to_cli", "render_check", "render_html", "render_markdown"]
