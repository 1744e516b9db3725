"""End to end in a real browser: Playwright drives Debian's Chromium against the app served by uvicorn
on a free local port. A screenshot of each step is saved under ``test-artifacts/web/``.

These tests FAIL (they do not skip) when Chromium or Playwright is missing: ``make test`` installs both.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, FilePayload, Page, expect, sync_playwright

from radlens.cli.serve_cmd import bind_socket
from radlens.data.schema import CHEXPERT_LABELS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
QUERY = "large right pleural effusion"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live_url(app: Any) -> Iterator[str]:
    """The app served by uvicorn in a thread on a free port of 127.0.0.1."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, live_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 820}, base_url=live_url)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.goto("/")
    expect(opened.locator("#status-text")).to_contain_text("studies in the index")
    yield opened
    context.close()
    assert not problems, f"JavaScript errors: {problems}"


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _expect_images_loaded(page: Page, selector: str) -> None:
    """Every image matching ``selector`` finished loading and decoded to real pixels.

    (``expect`` polls without ``eval``, which the page's Content-Security-Policy forbids.)
    """
    images = page.locator(selector)
    for index in range(images.count()):
        expect(images.nth(index)).to_have_js_property("complete", True)
        assert images.nth(index).evaluate("image => image.naturalWidth") > 0


def _focused_index(page: Page) -> int:
    return int(page.evaluate("Number(document.activeElement.dataset.index ?? -1)"))


def test_search_open_explain_then_search_by_image(page: Page, retriever: Any) -> None:
    _shot(page, "01-start")
    expect(page.locator("footer")).to_have_text("Research use only — not for diagnosis.")

    page.fill("#query", QUERY)
    page.press("#query", "Control+Enter")
    cards = page.locator(".card")
    expect(cards).to_have_count(12)
    expected = retriever.search_text(QUERY, k=12)
    expect(cards.first.locator(".score")).to_have_text(f"{expected[0].score:.3f}")
    expect(cards.nth(3).locator(".impression")).to_have_text(expected[3].impression)
    _expect_images_loaded(page, ".card img")
    _shot(page, "02-text-results")

    # Keyboard: arrows walk the grid, Home goes back, Enter opens, Esc closes.
    cards.first.focus()
    page.keyboard.press("ArrowRight")
    assert _focused_index(page) == 1
    columns = int(page.evaluate("getComputedStyle(results).gridTemplateColumns.split(' ').length"))
    page.keyboard.press("ArrowDown")
    assert _focused_index(page) == 1 + columns
    page.keyboard.press("Home")
    assert _focused_index(page) == 0
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_contain_text(expected[0].study_id)
    expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    marks = page.locator("#query-words mark")
    expect(marks).to_have_count(len(QUERY.split()))
    assert marks.all_inner_texts() == QUERY.split()
    expect(page.locator("#findings")).to_have_text(retriever.study(expected[0].study_id)["findings"])
    _shot(page, "03-detail-explained")

    page.select_option("#x-method", "integrated_gradients")
    expect(page.locator("#x-status-text")).to_contain_text("Integrated gradients: similarity")
    expect(page.locator("#legend")).to_contain_text("red raises")  # a signed map gets the signed legend
    page.locator("#x-opacity").fill("30")
    assert page.evaluate("getComputedStyle(overlay).opacity") == "0.3"
    _shot(page, "04-detail-integrated-gradients")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert _focused_index(page) == 0  # focus goes back to the result that was open

    upload = retriever.image_path(retriever.index.rows[0]["image_id"])
    page.set_input_files("#file", str(upload))
    expect(page.locator("#results-title")).to_have_text("Reports matching your image")
    expected_reports = retriever.search_image(upload, k=12)
    expect(cards.first.locator(".impression")).to_have_text(expected_reports[0].impression)
    expect(page.locator("#query-image-box")).to_be_visible()
    _shot(page, "05-image-results")

    cards.first.click()
    expect(page.locator("#x-source")).to_have_value("report")
    assert page.locator('#x-source option[value="query"]').is_disabled()  # no text query to explain
    expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    expect(page.locator("#findings mark").first).to_be_visible()
    _shot(page, "06-report-explained")


def test_errors_are_shown_in_plain_words(page: Page, retriever: Any, tmp_path: Path) -> None:
    page.click("#search-button")  # nothing typed
    expect(page.locator("#error")).to_contain_text("Type a few words")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is a text file, not an X-ray")
    page.set_input_files("#file", str(not_an_image))
    expect(page.locator("#error")).to_contain_text("not a usable image")
    _shot(page, "07-upload-error")

    absent = next(
        name for name in CHEXPERT_LABELS if all(r["labels"][name] != 1 for r in retriever.index.rows)
    )
    page.select_option("#f-label", absent)
    page.fill("#query", QUERY)
    page.click("#search-button")
    expect(page.locator("#status-text")).to_contain_text("No study matches these filters")
    expect(page.locator(".card")).to_have_count(0)
    expect(page.locator("#error")).to_be_hidden()
    _shot(page, "08-no-results")


def test_word_highlights_stay_on_their_words_after_an_emoji(page: Page) -> None:
    """The API's word offsets count code points; the page must not slice UTF-16 units with them (an
    emoji is two units, so every later highlight would start one unit early: " lef" for "left")."""
    query = "🙂 left pleural effusion"
    page.fill("#query", query)
    page.click("#search-button")
    page.locator(".card").first.click()
    expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    marks = page.locator("#query-words mark")
    expect(marks.last).to_have_text("effusion")
    shaded = marks.all_inner_texts()
    assert [word for word in shaded if word != "🙂"] == ["left", "pleural", "effusion"], shaded
    expect(page.locator("#query-words")).to_have_text(query)  # nothing lost or doubled between the marks


def _posts(page: Page, path: str) -> list[str]:
    """Every POST the page sends to ``path`` from now on (appended as they leave)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "POST" and r.url.endswith(path) else None)
    return sent


def _hold_searches(page: Page) -> list[Any]:
    """Text searches wait in the returned list until the test lets each one through."""
    held: list[Any] = []
    page.route("**/api/search", lambda route: held.append(route))
    return held


def test_ctrl_enter_during_a_running_search_does_not_send_it_again(page: Page) -> None:
    held = _hold_searches(page)
    sent = _posts(page, "/api/search")
    page.fill("#query", QUERY)
    page.click("#search-button")
    expect(page.locator("#spinner")).to_be_visible()
    expect(page.locator("#search-button")).to_be_disabled()
    page.press("#query", "Control+Enter")
    page.press("#query", "Control+Enter")
    page.wait_for_timeout(300)
    assert len(sent) == 1, sent  # the same search, still running: sent once
    held.pop(0).continue_()
    expect(page.locator(".card")).to_have_count(12)
    expect(page.locator("#search-button")).to_be_enabled()
    page.press("#query", "Control+Enter")  # once answered, the same search may be run again
    expect(page.locator("#spinner")).to_be_visible()
    assert len(sent) == 2, sent
    held.pop(0).continue_()
    expect(page.locator("#spinner")).to_be_hidden()


def test_a_filter_changed_during_the_first_search_applies(page: Page) -> None:
    """The filters shown must be the filters of the results shown: a change while the first search runs
    sends it again, and the older answer neither lands nor unlocks the button of the newer search."""
    held = _hold_searches(page)
    sent = _posts(page, "/api/search")
    page.fill("#query", QUERY)
    page.click("#search-button")
    expect(page.locator("#spinner")).to_be_visible()
    page.select_option("#f-k", "6")
    page.wait_for_timeout(300)
    assert len(sent) == 2, sent
    held.pop(0).continue_()  # the superseded answer (12 results) arrives first
    page.wait_for_timeout(300)
    expect(page.locator(".card")).to_have_count(0)
    expect(page.locator("#search-button")).to_be_disabled()
    expect(page.locator("#status-text")).to_have_text("Searching X-rays…")
    held.pop(0).continue_()
    expect(page.locator(".card")).to_have_count(6)
    expect(page.locator("#search-button")).to_be_enabled()
    expect(page.locator("#spinner")).to_be_hidden()


def test_busy_server_says_when_to_retry(page: Page) -> None:
    busy = '{"detail": "the server is busy (search queue full); try again in 1 s", "hint": "wait and retry"}'
    page.route(
        "**/api/search",
        lambda route: route.fulfill(status=503, headers={"Retry-After": "1"}, body=busy),
    )
    page.fill("#query", QUERY)
    page.click("#search-button")
    expect(page.locator("#error")).to_have_text("The server is busy right now. Please try again in 1 second.")
    expect(page.locator("#spinner")).to_be_hidden()
    expect(page.locator("#search-button")).to_be_enabled()


def test_an_answer_that_is_not_json_is_one_plain_line(page: Page) -> None:
    """E.g. a proxy's HTML page with status 200: a plain sentence, never a JavaScript parser message,
    and the spinner stops (the upload's promise used to hang)."""
    html = "<html><body>Sign in to the proxy</body></html>"
    unreadable = "The server sent an answer radlens cannot read. Please try again."
    page.route("**/api/search", lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    page.fill("#query", QUERY)
    page.click("#search-button")
    expect(page.locator("#error")).to_have_text(unreadable)
    expect(page.locator("#spinner")).to_be_hidden()

    page.route(
        "**/api/search/image",
        lambda route: route.fulfill(status=200, content_type="text/html", body=html),
    )
    film: FilePayload = {"name": "film.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n"}
    page.set_input_files("#file", files=[film])
    expect(page.locator("#error")).to_have_text(unreadable)
    expect(page.locator("#spinner")).to_be_hidden()


def test_keyboard_focus_on_the_file_input_is_visible(page: Page) -> None:
    """The file input itself is invisible (opacity 0): when Tab lands on it the drop zone must show the
    focus ring, or a keyboard user loses track of where focus is."""
    page.focus("#drop")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    expect(page.locator("#drop")).to_have_css("outline-style", "solid")
    page.focus("#query")
    expect(page.locator("#drop")).to_have_css("outline-style", "none")
