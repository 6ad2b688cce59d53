"""Prompt templates: the built-in sets, template files, and the ensemble a run uses (no torch: the CLI's help lists the sets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ...errors import InputError

TEMPLATE_DIR = Path(__file__).with_name("templates")
DEFAULT_TEMPLATE = "a photo of a {}."
PLACEHOLDER = "{}"


def list_template_sets() -> list[str]:
    """Names of the built-in template sets (e.g. default, eurosat, gtsrb, mnist, dtd, resisc45)."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


def load_template_set(name: str) -> list[str]:
    path = TEMPLATE_DIR / f"{name.lower()}.json"
    if not path.is_file():
        raise InputError(f"unknown template set {name!r}; built-in sets: {', '.join(list_template_sets())}")
    return _check_templates(json.loads(path.read_text(encoding="utf-8")), str(path))


def load_template_file(path: str | os.PathLike) -> list[str]:
    """Templates from a JSON list, or a text file with one template per line (# comments, blank lines ignored)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"templates file not found: {p}; pass --templates a JSON list or a text file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read templates file {p}: {exc}") from exc
    if text.lstrip().startswith("["):
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p} is not a valid JSON list of templates: {exc}") from exc
    else:
        templates = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return _check_templates(templates, str(p))


def resolve_templates(templates: Sequence[str] | None = None, template_file: str | os.PathLike | None = None,
                      template_set: str | None = None) -> list[str]:
    """The prompt ensemble: explicit templates, then a file's, then a built-in set's (duplicates dropped).

    With none of them, the single template "a photo of a {}.".
    """
    out: list[str] = []
    if templates:
        out += _check_templates(list(templates), "--template")
    if template_file:
        out += load_template_file(template_file)
    if template_set:
        out += load_template_set(template_set)
    return list(dict.fromkeys(out)) or [DEFAULT_TEMPLATE]


def fill_template(template: str, classname: str) -> str:
    """Put a class name into a template's `{}` (other braces are left alone)."""
    return template.replace(PLACEHOLDER, classname)


def _check_templates(templates, where: str) -> list[str]:
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise InputError(f"{where}: templates must be a list of strings such as \"a photo of a {{}}.\"")
    for t in templates:
        if t.count(PLACEHOLDER) != 1:
            raise InputError(f"{where}: template {t!r} must contain exactly one {{}} where the class name goes")
    if not templates:
        raise InputError(f"{where}: no templates found; give at least one such as \"a photo of a {{}}.\"")
    return templates
