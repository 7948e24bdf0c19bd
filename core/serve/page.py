"""The search page served at ``/``: one self-contained HTML file (inline CSS and vanilla JS, no
build step, nothing fetched but this server's own API), shipped as package data beside this
module in ``static/search.html``."""

from __future__ import annotations

from functools import cache
from importlib import resources

PAGE = "search.html"


@cache
def page_html() -> str:
    """The search page's HTML (read once; the file is package data and does not change)."""
    return resources.files("manet.serve").joinpath("static").joinpath(PAGE).read_text(encoding="utf-8")
