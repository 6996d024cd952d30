"""Reading a rendered report the way a reader gets it: a headless Chromium that cannot reach the network, and a
parser that splits the page into its sections (heading, figures, text) so tests can check each one.
"""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

from services import need

CHROMIUM = "chromium"


class _Sections(HTMLParser):
    """Per <section id>: its <h2> text, how many <img> it holds, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.h2: dict[str, str] = {}
        self.imgs: dict[str, int] = {}
        self.text: dict[str, str] = {}
        self.scripts = 0
        self._cur: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "section":
            self._cur = a["id"]
            self.order.append(self._cur)
            self.h2[self._cur], self.imgs[self._cur], self.text[self._cur] = "", 0, ""
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img" and self._cur:
            assert a.get("src", "").startswith("data:image/"), a.get("src", "")[:40]
            self.imgs[self._cur] += 1
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._cur = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._cur:
            self.text[self._cur] += data
            if self._in_h2:
                self.h2[self._cur] += data


def _parse(html: str) -> _Sections:
    p = _Sections()
    p.feed(html)
    return p


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    need("chromium")
    # Offline by construction: every host name resolves to nothing, so any fetch would fail visibly.
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)
