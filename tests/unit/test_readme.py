"""README.rst is valid reStructuredText: a malformed table or list would hide what it documents."""

from pathlib import Path

import docutils.core

README = Path(__file__).resolve().parents[2] / "README.rst"


def test_readme_renders_without_warnings() -> None:
    messages: list[str] = []

    class Collect:
        def write(self, text: str) -> None:
            messages.append(text)

    docutils.core.publish_doctree(README.read_text(encoding="utf-8"), source_path=str(README),
                                  settings_overrides={"report_level": 2, "halt_level": 5,
                                                      "warning_stream": Collect()})
    assert messages == []
