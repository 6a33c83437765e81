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


def test_readme_fastapi_route_answers_409_with_the_current_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's AsyncStore route, driven over HTTP."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette asks for httpx2; httpx works the same
        from fastapi.testclient import TestClient

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    route = next(b for b in blocks if "FastAPI(lifespan=lifespan)" in b)
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("readme_route")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(route, str(README), "exec"), module.__dict__)
    with TestClient(module.app) as client:
        first = client.put("/prompts/greet", params={"text": "hi"})
        assert first.status_code == 200 and first.json() == {"revision": 1, "version": 1}
        second = client.put("/prompts/greet", params={"text": "hello", "revision": 1})
        assert second.json() == {"revision": 2, "version": 2}
        stale = client.put("/prompts/greet", params={"text": "hey", "revision": 1})
        assert stale.status_code == 409
        assert stale.json() == {"detail": {"current_revision": 2}}
