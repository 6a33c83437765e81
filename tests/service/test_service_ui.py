"""The history browser at /ui, in a real browser: Debian's chromium driven by Playwright
against ``revstore serve --auth required``. The test saves a screenshot under
``tests/output/`` (or ``$REVSTORE_TEST_OUTPUT``).

Without a chromium to drive, the browser test is skipped loudly (failed when
REVSTORE_TEST_REQUIRE names ``browser`` or ``all``); ``make browser`` installs it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from service_helpers import TestClient
from test_service_server import serve

from revstore import Store
from testdbs import _required

OUTPUT = Path(os.environ.get("REVSTORE_TEST_OUTPUT") or Path(__file__).parents[1] / "output")


def chromium_path() -> str | None:
    for name in (os.environ.get("REVSTORE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    return None


def skip_or_fail(reason: str) -> None:
    if _required("browser"):
        pytest.fail(f"REVSTORE_TEST_REQUIRE: {reason}", pytrace=False)
    pytest.skip(f"SKIPPING THE BROWSER TEST: {reason} (run `make browser`)")


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        skip_or_fail("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe)
        except Error as exc:
            skip_or_fail(f"chromium at {exe} does not start: {exc}")
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------- without a browser


class _Urls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_ui_is_served_from_the_package_with_no_outside_assets(sqlite_client: TestClient) -> None:
    page = sqlite_client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert sqlite_client.get("/ui", follow_redirects=False).status_code in (301, 307)
    parser = _Urls()
    parser.feed(page.text)
    assert sorted(parser.urls) == ["ui.css", "ui.js"]  # same origin: works offline
    assert sqlite_client.get("/ui/ui.js").headers["content-type"].startswith("text/javascript")
    assert sqlite_client.get("/ui/ui.css").headers["content-type"].startswith("text/css")
    assert sqlite_client.get("/ui/nothing.js").status_code == 404
    # Shown data goes through textContent only (record content is untrusted).
    script = sqlite_client.get("/ui/ui.js").text
    assert "innerHTML" not in script.replace("never innerHTML", "")


# ---------------------------------------------------------------- in chromium


def test_history_browser_in_chromium(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    db = f"sqlite:///{tmp_path / 'ui.db'}"
    ns = f"ui-{uuid.uuid4().hex[:8]}"
    with Store(db) as store:
        store.put(
            "doc-a", {"title": "one", "tags": ["x"]}, author="ann", summary="first", namespace=ns
        )
        store.put(
            "doc-a", {"title": "two", "tags": ["x"]}, author="bob", summary="retitle", namespace=ns
        )
        store.put(
            "doc-a",
            {"title": "three", "tags": ["x", "y"]},
            author="ann",
            summary="tag",
            namespace=ns,
        )
        for rid in ("doc-b", "doc-c", "other-x"):
            store.put(rid, {"id": rid}, namespace=ns)
        store.append(
            "chat", [{"text": "hello"}, {"text": "<b>not bold</b>"}, {"n": 3}], namespace=ns
        )
        token = store.api_keys.create(ns, "write", name="ui-tester").token

    with serve(db, tmp_path, "--auth", "required") as (base, _log):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.goto(f"{base}/ui/?namespace={ns}&limit=2")

        # No key yet: the 401 asks for one.
        expect(page.locator("#token-box")).to_be_visible()
        expect(page.locator("#message")).to_contain_text("API key is needed")
        page.fill("#token", token)
        page.click("text=Use key")
        ids = page.locator("#record-table tbody tr td:first-child")
        expect(ids).to_have_text(["doc-a", "doc-b"])
        assert page.evaluate("sessionStorage.getItem('revstore.token')") == token

        # Paging, then prefix search.
        page.click("#records-next")
        expect(ids).to_have_text(["doc-c", "other-x"])
        expect(page.locator("#records-next")).to_be_disabled()
        page.click("#records-prev")
        expect(ids).to_have_text(["doc-a", "doc-b"])
        page.fill("#prefix", "oth")
        page.click("#search-form button")
        expect(ids).to_have_text(["other-x"])
        page.fill("#prefix", "doc-")
        page.click("#search-form button")
        expect(ids).to_have_text(["doc-a", "doc-b"])

        # A record's timeline, paged like the rest (2 per page here).
        page.click("text=doc-a")
        rows = page.locator("#timeline tbody tr")
        more = page.locator("#versions-more")

        def every_version(count: int) -> None:
            """Page through the timeline: 2 versions a page, then no More button."""
            shown = min(2, count)
            expect(rows).to_have_count(shown)
            while shown < count:
                more.click()
                shown = min(shown + 2, count)
                expect(rows).to_have_count(shown)
            expect(more).to_be_hidden()

        every_version(3)
        expect(page.locator("#record-head")).to_contain_text("revision 3")
        authors = page.locator("#timeline tbody tr td:nth-child(5)")
        expect(authors).to_have_text(["ann", "bob", "ann"])
        summaries = page.locator("#timeline tbody tr td:nth-child(6)")
        expect(summaries).to_have_text(["first", "retitle", "tag"])

        # The diff between versions 1 and 3, inline.
        page.check('#timeline tr[data-version="1"] input[name="from"]')
        page.check('#timeline tr[data-version="3"] input[name="to"]')
        page.click("#diff-button")
        expect(page.locator("#diff-title")).to_contain_text("Version 1 → 3")
        lines = page.locator("#diff-lines li")
        expect(lines.filter(has_text='- /title: "one"')).to_have_count(1)
        expect(lines.filter(has_text='+ /title: "three"')).to_have_count(1)
        expect(lines.filter(has_text='"y"')).to_have_count(1)

        # The namespace's streams are listed; one opens with its items (markup in a
        # body stays text); a stream can also be opened by its id.
        expect(page.locator('#stream-table tr[data-id="chat"]')).to_contain_text("3")
        page.click('#stream-table tr[data-id="chat"] a')
        expect(page.locator("#items tbody tr")).to_have_count(2)
        page.fill("#stream-id", "chat")
        page.click("#stream-form button")
        expect(page.locator("#items tbody tr")).to_have_count(2)
        page.click("#items-more")
        expect(page.locator("#items tbody tr")).to_have_count(3)
        expect(page.locator("#items-more")).to_be_hidden()
        expect(page.locator("#items tbody tr").nth(1)).to_contain_text("<b>not bold</b>")
        expect(page.locator("#stream-info")).to_contain_text("3 item(s)")
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shot = OUTPUT / "ui-history.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # Someone writes after the page loaded revision 3: restoring is refused (412)
        # and explained, and nothing is overwritten.
        with Store(db) as store:
            store.put("doc-a", {"title": "four"}, author="carol", namespace=ns)
        page.click('#timeline tr[data-version="1"] button')
        message = page.locator("#message")
        expect(message).to_contain_text("You saw revision 3; it is now at revision 4")
        with Store(db) as store:
            assert store.get("doc-a", namespace=ns).content == {"title": "four"}
        page.screenshot(path=str(OUTPUT / "ui-restore-412.png"), full_page=True)

        # After a reload the restore goes through, authored by the key's name.
        page.click("#record-reload")
        expect(page.locator("#record-head")).to_contain_text("revision 4")
        every_version(4)
        page.click('#timeline tr[data-version="1"] button')
        expect(message).to_contain_text("Restored version 1 as version 5")
        expect(page.locator("#record-head")).to_contain_text("revision 5")
        every_version(5)
        with Store(db) as store:
            head = store.get("doc-a", namespace=ns)
            assert head.content == {"title": "one", "tags": ["x"]} and head.version == 5
            assert store.get_version("doc-a", 5, namespace=ns).author == "ui-tester"

        # The key is kept for the browser session: a reload needs no new entry...
        page.reload()
        expect(ids).to_have_text(["doc-a", "doc-b"])
        expect(page.locator("#token-box")).to_be_hidden()
        # ...and a new session (another context) asks again.
        other = browser.new_context().new_page()
        other.goto(f"{base}/ui/?namespace={ns}")
        expect(other.locator("#token-box")).to_be_visible()
        # A key of another namespace is told so.
        other.fill("#token", token)
        other.click("text=Use key")
        other.fill("#namespace", f"{ns}-elsewhere")
        other.click("#ns-form button")
        expect(other.locator("#message")).to_contain_text("Not allowed")
        context.close()
