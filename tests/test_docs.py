"""The README and docs/ stand on their own: every link stays inside the repository and resolves, and
every score key the registry knows is documented in docs/scores.md."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and [text](target "title"); images too. Reference-style definitions: [name]: target
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces made hyphens."""
    anchors = set()
    for line in FENCE.sub("", text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            title = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def resolve(document: Path, target: str) -> tuple[Path, str]:
    """(the file a relative link points at, its #anchor or '')."""
    path, _, anchor = target.partition("#")
    return (document if not path else (document.parent / unquote(path)).resolve()), anchor


def test_the_link_checker_sees_links_and_anchors():
    text = ("# A title: with `code`\n[a](docs/x.md) ![b](img.png \"t\") `[not](a link)`\n"
            "```\n[nor](this)\n```\n[r]: ../outside.md\n")
    assert links(text) == ["docs/x.md", "img.png", "../outside.md"]
    assert heading_anchors(text) == {"a-title-with-code"}


def test_there_are_docs():
    names = {p.name for p in DOCUMENTS}
    assert {"README.md", "scores.md", "prediction.md", "architecture.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(document):
    text = document.read_text(encoding="utf-8")
    problems = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            if not target.lower().startswith(("http://", "https://", "mailto:")):
                problems.append(f"{target}: a {target.split(':')[0]}: link cannot resolve in a clone")
            continue  # a web page about a project we use, not a file of ours
        if target.startswith("/"):
            problems.append(f"{target}: absolute paths leave the repository; use a relative link")
            continue
        path, anchor = resolve(document, target)
        if REPO not in path.parents and path != REPO:
            problems.append(f"{target}: points outside the repository ({path})")
        elif not path.exists():
            problems.append(f"{target}: {path.relative_to(REPO)} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not problems, f"{document.relative_to(REPO)}:\n" + "\n".join(problems)


def test_every_registered_score_key_is_documented_in_scores_md():
    from iimm.engine import SCORES, TRANSFER_SCORES

    documented = set(re.findall(r"`([a-z0-9_]+)`", (REPO / "docs" / "scores.md").read_text(encoding="utf-8")))
    keys = [*SCORES, *TRANSFER_SCORES]
    assert len(keys) > 20, keys  # the registry was read
    missing = [k for k in keys if k not in documented]
    assert not missing, f"docs/scores.md does not document {', '.join(missing)} (as `key`)"
