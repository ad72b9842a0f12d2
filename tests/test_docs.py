"""The documentation: the configuration reference is the generated one, and the markdown
files refer only to files of this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config_reference import configuration_reference

ROOT = Path(__file__).resolve().parents[1]
# Markdown files whose links are checked: the README and every page under docs/.
LINKED = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# ... and those that must not name files outside the repository.
SELF_CONTAINED = [*LINKED, ROOT / "CHANGELOG.md"]
OUTSIDE = ("DESIGN.md", "REFERENCES.md", "STYLE.md", "../shared")
# [text](target), not an image's alt text nor a reference-style link
LINK = re.compile(r"(?<!\\)\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_configuration_reference_is_generated_from_the_config() -> None:
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == configuration_reference(), (
        "docs/configuration.md differs from the typed config: regenerate with make docs-config"
    )


@pytest.mark.parametrize("path", SELF_CONTAINED, ids=_name)
def test_no_markdown_file_names_a_file_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    found = [name for name in OUTSIDE if name in text]
    assert not found, f"{_name(path)} refers to {found}, which are not in this repository"


def _relative_links(text: str) -> list[str]:
    text = FENCE.sub("", text)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto, ... and anchors within the page
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("path", LINKED, ids=_name)
def test_every_relative_link_points_to_a_file_in_the_repository(path: Path) -> None:
    broken = []
    for target in _relative_links(path.read_text()):
        resolved = (path.parent / target).resolve()
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(target)
    assert not broken, f"{_name(path)} links to files that do not exist: {broken}"


def test_the_link_checker_finds_links() -> None:
    text = "see [a](docs/a.md#x), [b](https://x.org), [c](#here) and\n```\n[d](e.md)\n```\n"
    assert _relative_links(text) == ["docs/a.md"]
