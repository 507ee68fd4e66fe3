"""Presentation of health reports: HTML, Markdown, and the text/JSON of ``gradmon check``.

Importing this package registers the Markdown and HTML renderers with :data:`gradmon.findings.RENDERERS`,
so ``HealthReport.save("report.html")`` works (``import gradmon`` imports it).
"""

from gradmon.findings import FRAGMENTS, RENDERERS
from gradmon.report.check import exit_code, render_check
from gradmon.report.html import render_html, render_html_fragment
from gradmon.report.markdown import render_markdown
from gradmon.report.text import patch_to_cli

RENDERERS.update({".md": render_markdown, ".markdown": render_markdown, ".html": render_html, ".htm": render_html})
FRAGMENTS["html"] = render_html_fragment

__all__ = ["exit_code", "patch_to_cli", "render_check", "render_html", "render_markdown"]
