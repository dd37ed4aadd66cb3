"""The design document is the project's own, and what cites it finds what it cites."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"


def project_text_files() -> list[Path]:
    """The project's own text: sources, tests, docs, device files (no venv, no caches)."""
    dirs = ["streamer", "tests", "bench", "docs", "firmware", "systemd", "scripts"]
    files = [f for d in dirs for f in (ROOT / d).rglob("*") if f.is_file()]
    files += [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml")]
    return [
        f
        for f in files
        if f.suffix in (".py", ".md", ".toml", ".sh", ".txt", ".service", "")
        and "__pycache__" not in f.parts
        and "node_modules" not in f.parts  # third-party (tests/interop)
    ]


def test_no_file_sends_readers_outside_the_repository() -> None:
    """A user has this repository only: every ``../`` path must stay inside it."""
    outside = [
        (str(f.relative_to(ROOT)), ref)
        for f in project_text_files()
        for ref in re.findall(r"(?:\.\./)+[\w.-][\w./-]*", f.read_text(errors="replace"))
        if not (f.parent / ref).resolve().is_relative_to(ROOT)
    ]
    assert outside == []


def test_every_cited_section_of_the_design_exists() -> None:
    headings = set(re.findall(r"^#+ (.+)$", DESIGN.read_text(), re.M))
    cited = [
        (str(f.relative_to(ROOT)), section)
        for f in project_text_files()
        for section in re.findall(r'docs/design\.md\s+"([^"]+)"', f.read_text(errors="replace"))
    ]
    assert cited, "the modules that follow the design cite its sections"
    assert [c for c in cited if c[1] not in headings] == []
