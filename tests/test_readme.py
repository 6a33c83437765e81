"""The README's examples run as written (on a fresh SQLite file)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python examples"
    monkeypatch.chdir(tmp_path)
    # A real module: SQLAlchemy resolves the annotations of the README's models through it.
    module = types.ModuleType("readme_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile("\n".join(blocks), str(README), "exec"), module.__dict__)
    assert (tmp_path / "revstore.db").exists()
