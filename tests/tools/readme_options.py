"""README.rst's option tables, rendered from massboot/config.py's option tables.

Each table in README.rst follows a comment line ``.. options: NAME`` (NAME is a section of
:data:`massboot.config.TABLES`, or ``subnet:NAME``). The table is the rendering of that section's
:class:`massboot.config.Section`: its options in order, their defaults and their doc lines, so
the README cannot drift from the code. tests/unit/test_config.py checks it; after changing a
table in the code, rewrite the README's tables from the repository root with::

    python tests/tools/readme_options.py
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from massboot import config as cfg  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.rst"
WIDTH = 100          # the README's line width
MARKER = re.compile(r"^\.\. options: (\S+)$")


def section_table(name: str) -> cfg.Section:
    table = cfg.table_for(name)
    if table is None:
        raise KeyError(f"no option table for [{name}]")
    return table


def _wrap(text: str, width: int) -> list[str]:
    """Wrap *text*, never inside a ``literal``."""
    protected = re.sub(r"``.*?``", lambda m: m.group(0).replace(" ", "\0"), text)
    lines = textwrap.wrap(protected, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def render(table: cfg.Section) -> list[str]:
    """The reStructuredText simple table of *table*: option, default, meaning."""
    rows = [(o.name, o.shown_default, o.doc) for o in table.options]
    w1 = max(len("option"), *(len(r[0]) for r in rows))
    w2 = max(len("default"), *(len(r[1]) for r in rows))
    w3 = WIDTH - w1 - w2 - 4
    border = f"{'=' * w1}  {'=' * w2}  {'=' * w3}"
    lines = [border, f"{'option':<{w1}}  {'default':<{w2}}  meaning", border]
    for name, default, doc in rows:
        first, *more = _wrap(doc, w3)
        lines.append(f"{name:<{w1}}  {default:<{w2}}  {first}")
        lines.extend(" " * (w1 + w2 + 4) + line for line in more)
    lines.append(border)
    return lines


def tables(text: str) -> dict[str, tuple[int, int]]:
    """Where each marked table stands in *text*: name → (first line, line after it)."""
    lines = text.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        start = number + 1
        while start < len(lines) and not lines[start].startswith("="):
            start += 1
        borders, end = 0, start
        while end < len(lines) and borders < 3:
            borders += lines[end].startswith("=")
            end += 1
        found[m.group(1)] = (start, end)
    return found


def rewrite(text: str) -> str:
    """*text* with every marked table replaced by its rendering."""
    lines = text.splitlines()
    for name, (start, end) in sorted(tables(text).items(), key=lambda item: -item[1][0]):
        lines[start:end] = render(section_table(name))
    return "\n".join(lines) + "\n"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    new = rewrite(text)
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"rewrote the option tables of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
