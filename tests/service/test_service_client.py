"""A client generated from the running service's /openapi.json by a standard generator
(openapi-python-client), used for every operation against ``revstore serve``.

The generator runs with ``--fail-on-warning``: a part of the document it cannot read
(a content type, a header, a schema) fails here, and is fixed in the document.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from test_service_server import serve

from revstore import Store

pytest.importorskip("openapi_python_client")


def snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


class Api:
    """Calls the generated functions by operation id and notes which were called."""

    def __init__(
        self, package: ModuleType, spec: dict[str, Any], base: str, token: str | None = None
    ) -> None:
        self.package = package
        self.models = importlib.import_module(f"{package.__name__}.models")
        self.types = importlib.import_module(f"{package.__name__}.types")
        self.client_mod = importlib.import_module(f"{package.__name__}.client")
        self.base = base
        self.token = token
        # Undocumented statuses raise: every status seen here must be in the document.
        options: dict[str, Any] = {
            "base_url": base,
            "raise_on_unexpected_status": True,
            "timeout": httpx.Timeout(30.0),
        }
        self.client = (
            self.client_mod.AuthenticatedClient(token=token, **options)
            if token
            else self.client_mod.Client(**options)
        )
        self.tags = {
            op["operationId"]: op["tags"][0]
            for item in spec["paths"].values()
            for op in item.values()
        }
        self.called: set[str] = set()

    def __call__(self, operation_id: str, *, client: Any = None, **kwargs: Any) -> Any:
        module = importlib.import_module(
            f"{self.package.__name__}.api.{self.tags[operation_id]}.{snake(operation_id)}"
        )
        self.called.add(operation_id)
        fn: Callable[..., Any] = module.sync_detailed
        return fn(client=client or self.client, **kwargs)


@pytest.fixture(params=["off", "required"])
def api(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Api]:
    """Against ``revstore serve`` with auth off, and with auth required (the client
    then authenticates with a ``*`` admin key, as generated from ``bearerAuth``)."""
    db = f"sqlite:///{tmp_path / 'client.db'}"
    token = None
    if request.param == "required":
        with Store(db) as store:
            token = store.api_keys.create("*", "admin", name="generated").token
    with serve(db, tmp_path, "--auth", request.param) as (base, _log):
        spec = httpx.get(f"{base}/openapi.json").json()
        spec_file = tmp_path / "openapi.json"
        spec_file.write_text(json.dumps(spec))
        config = tmp_path / "generator.json"
        config.write_text(json.dumps({"post_hooks": []}))  # no formatter run: faster
        name = f"revstore_client_{uuid.uuid4().hex[:8]}"
        gen = subprocess.run(
            [
                *(sys.executable, "-m", "openapi_python_client", "generate"),
                *("--path", str(spec_file), "--output-path", str(tmp_path / name)),
                *("--meta", "none", "--config", str(config), "--fail-on-warning"),
            ],
            capture_output=True,
            text=True,
        )
        assert gen.returncode == 0, gen.stdout + gen.stderr
        sys.path.insert(0, str(tmp_path))
        try:
            api = Api(importlib.import_module(name), spec, base, token)
            with api.client:
                yield api
        finally:
            sys.path.remove(str(tmp_path))
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]


def test_generated_client_drives_every_operation(api: Api) -> None:
    md = api.models
    unset = api.types.UNSET
    problem = md.Problem
    ns = f"gen-{uuid.uuid4().hex[:8]}"

    # operations
    assert api("getHealth").parsed.status == "ok"
    assert api("getReadiness").parsed.status == "ready"
    metrics = api("getMetrics")
    assert metrics.status_code == 200 and "revstore_http_requests_total" in metrics.parsed

    # records: create, conditional update, conflicts
    r = api(
        "putRecord",
        id="doc",
        namespace=ns,
        body=md.PutRecord(content={"a": 1}, author="gen", summary="first"),
        if_none_match="*",
        idempotency_key=f"k-{uuid.uuid4().hex}",
    )
    assert r.status_code == 201 and isinstance(r.parsed, md.WriteOut), r.content
    assert (r.parsed.revision, r.parsed.version, r.parsed.content) == (1, 1, {"a": 1})
    assert r.headers["etag"] == '"1"'
    r = api(
        "putRecord", id="doc", namespace=ns, body=md.PutRecord(content={"a": 2}), if_match='"1"'
    )
    assert r.status_code == 200 and r.parsed.revision == 2 and not r.parsed.unchanged
    stale = api("putRecord", id="doc", namespace=ns, body=md.PutRecord(content=0), if_match='"1"')
    assert stale.status_code == 412 and isinstance(stale.parsed, problem)
    assert stale.parsed.type_ == "urn:revstore:problem:precondition-failed"
    assert stale.parsed.current_revision == 2
    conflict = api(
        "putRecord", id="doc", namespace=ns, body=md.PutRecord(content=0, expected_revision=1)
    )
    assert conflict.status_code == 409 and isinstance(conflict.parsed, problem)
    assert conflict.parsed.current.revision == 2
    assert conflict.parsed.current.content == {"a": 2}

    r = api("patchRecord", id="doc", namespace=ns, body={"b": [1, 2]}, summary="patched")
    assert r.status_code == 200 and r.parsed.content == {"a": 2, "b": [1, 2]}
    assert r.parsed.version == 3

    got = api("getRecord", id="doc", namespace=ns)
    assert got.status_code == 200 and isinstance(got.parsed, md.RecordOut)
    assert got.parsed.content == {"a": 2, "b": [1, 2]} and got.headers["etag"] == '"3"'
    assert api("getRecord", id="doc", namespace=ns, if_none_match='"3"').status_code == 304

    page = api("listRecords", namespace=ns, prefix="d", limit=10)
    assert [rec.id for rec in page.parsed.records] == ["doc"]
    assert page.parsed.next_after is None

    history = api("getHistory", id="doc", namespace=ns, after=0, limit=2)
    assert [v.version for v in history.parsed.versions] == [1, 2]
    assert history.parsed.next_after == 2
    assert history.parsed.versions[0].author == "gen"
    v1 = api("getVersion", id="doc", n=1, namespace=ns)
    assert v1.parsed.content == {"a": 1} and v1.parsed.summary == "first"

    diff = api("diffVersions", id="doc", from_=1, to=3, namespace=ns)
    assert diff.parsed.from_version == 1 and diff.parsed.to_version == 3
    ops = sorted((p["op"], p["path"]) for p in (op.to_dict() for op in diff.parsed.patch))
    assert ops == [("add", "/b"), ("replace", "/a")]

    r = api(
        "restoreVersion",
        id="doc",
        namespace=ns,
        body=md.RestoreRecord(version=1, summary="undo"),
        if_match='"3"',
    )
    assert r.status_code == 200 and r.parsed.content == {"a": 1} and r.parsed.version == 4

    assert api("deleteRecord", id="doc", namespace=ns, if_match='"4"').status_code == 204
    gone = api("getRecord", id="doc", namespace=ns)
    assert gone.status_code == 404 and isinstance(gone.parsed, problem)
    assert gone.parsed.type_ == "urn:revstore:problem:not-found"
    bad = api("getVersion", id="doc", n=1, namespace="")
    assert bad.status_code == 422 and isinstance(bad.parsed, problem)
    assert bad.parsed.errors is not unset and bad.parsed.errors

    # streams: append, re-send, read, info
    batch = md.AppendItems(items=[{"x": 1}, "two", 3], item_ids=["i1", "i2", "i3"])
    r = api("appendItems", id="log", namespace=ns, body=batch)
    assert r.status_code == 201 and (r.parsed.first_sequence, r.parsed.last_sequence) == (1, 3)
    again = api("appendItems", id="log", namespace=ns, body=batch)
    assert again.status_code == 200 and again.parsed.duplicate
    behind = api(
        "appendItems", id="log", namespace=ns, body=md.AppendItems(items=[4], expected_sequence=0)
    )
    assert behind.status_code == 409 and behind.parsed.current_sequence == 3
    items = api("readItems", id="log", namespace=ns, after=1, limit=10)
    assert [(i.sequence, i.body) for i in items.parsed.items] == [(2, "two"), (3, 3)]
    assert [i.item_id for i in items.parsed.items] == ["i2", "i3"]
    info = api("getStream", id="log", namespace=ns)
    assert (info.parsed.last_sequence, info.parsed.item_count) == (3, 3)
    listed = api("listStreams", namespace=ns, prefix="l", limit=10)
    assert [(s.id, s.item_count) for s in listed.parsed.streams] == [("log", 3)]
    assert listed.parsed.next_after is None

    # retention: a policy, applied at once; a removed version is a documented 410
    assert api("getRetention", namespace=ns).parsed.keep_last is None
    policy = api("setRetention", namespace=ns, body=md.SetRetention(keep_last=2))
    assert policy.status_code == 200 and policy.parsed.keep_last == 2
    applied = api("applyRetention", namespace=ns)
    assert applied.status_code == 200 and applied.parsed.namespaces == 1
    api("putRecord", id="kept", namespace=ns, body=md.PutRecord(content=1))
    for n in range(2, 5):
        api("putRecord", id="kept", namespace=ns, body=md.PutRecord(content=n))
    assert api("applyRetention", namespace=ns).parsed.versions_removed >= 2
    compacted = api("getVersion", id="kept", n=1, namespace=ns)
    assert compacted.status_code == 410 and isinstance(compacted.parsed, problem)
    assert compacted.parsed.type_ == "urn:revstore:problem:version-compacted"
    assert compacted.parsed.oldest_version == 3

    if api.token:
        # The key's name is the author of a write that names none.
        api("putRecord", id="mine", namespace=ns, body=md.PutRecord(content=1))
        mine = api("getHistory", id="mine", namespace=ns)
        assert mine.parsed.versions[0].author == "generated"
        # Without the key: a documented 401 problem.
        with api.client_mod.Client(base_url=api.base, raise_on_unexpected_status=True) as bare:
            refused = api("getRecord", id="mine", namespace=ns, client=bare)
        assert refused.status_code == 401 and isinstance(refused.parsed, problem)
        assert refused.parsed.type_ == "urn:revstore:problem:unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")

    # Every operation the document declares went through the generated client.
    assert api.called == set(api.tags)
