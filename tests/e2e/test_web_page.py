"""The web page in a real browser against a real server: an image gets a verdict and a heat
overlay, a wrong key gets the error in plain words, a video gets one chart point per frame."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.helpers import REPO_ROOT
from tests.helpers.api import TEST_KEY

EXAMPLES = REPO_ROOT / "examples"
TIMEOUT_MS = 60_000


def open_page(page: Page, base_url: str, path: str = "/") -> None:
    response = page.goto(base_url + path)
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_contain_text("fake")


def natural_width(page: Page, selector: str) -> int:
    return int(page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0"))


def test_an_image_gets_a_verdict_a_face_box_and_a_heat_overlay(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    page.get_by_label("API key").fill(TEST_KEY)
    page.locator("#file").set_input_files(EXAMPLES / "fake_0.jpg")
    with page.expect_response(re.compile(r"/explain\?method=gradcam$")) as answer:
        page.get_by_role("button", name="Check it").click()
    body = answer.value.json()
    assert answer.value.status == 200, body
    expect(page.locator("#verdict")).to_have_text(
        "Likely fake" if body["label"] == "fake" else "Likely real", timeout=TIMEOUT_MS
    )
    assert body["label"] == "fake", "the demo model calls the example fake fake"
    share = round(body["fake_prob"] * 1000) / 10
    expect(page.locator("#prob-text")).to_have_text(re.compile(rf"^{share:g}%$"))
    expect(page.locator("#overlay")).to_be_visible()
    page.wait_for_function("document.getElementById('overlay').complete")
    assert natural_width(page, "#overlay") >= 256
    assert body["explanation"]["face_box"] is not None
    expect(page.locator("#source-canvas")).to_be_visible()
    # the key stays in this tab's session storage, nowhere else
    stored = page.evaluate("[sessionStorage.getItem('dfd-api-key'), localStorage.length]")
    assert stored == [TEST_KEY, 0]


def offered(page: Page) -> list[str]:
    """The methods the page's list offers, once it has asked the service which it runs."""
    page.wait_for_function("document.getElementById('method').dataset.loaded === '1'")
    values: list[str] = page.locator("#method option").evaluate_all(
        "options => options.map(o => o.value)"
    )
    return values


def test_with_torch_every_method_is_offered(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    assert offered(page) == ["gradcam", "ig", "lime", "shap"]
    expect(page.locator("#method")).to_have_value("gradcam")
    expect(page.locator("#method-note")).to_be_hidden()


def test_the_method_can_be_chosen_with_the_keyboard(page: Page, base_url: str) -> None:
    open_page(page, base_url, "/ui/")
    page.get_by_label("API key").fill(TEST_KEY)
    page.get_by_label("Explanation method").select_option("lime")
    page.locator("#file").set_input_files(EXAMPLES / "fake_0.jpg")
    with page.expect_response(re.compile(r"/explain\?method=lime$")) as answer:
        page.get_by_label("API key").press("Enter")  # submits the form
    assert answer.value.status == 200
    expect(page.locator("#overlay-caption")).to_contain_text("lime", timeout=TIMEOUT_MS)
    page.wait_for_function("document.getElementById('overlay').complete")
    assert natural_width(page, "#overlay") >= 256


def test_a_wrong_key_shows_the_error_in_plain_words(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    page.get_by_label("API key").fill("not-the-key")
    page.locator("#file").set_input_files(EXAMPLES / "fake_0.jpg")
    page.get_by_role("button", name="Check it").click()
    error = page.get_by_role("alert")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_contain_text("The API key was not accepted")
    text = error.inner_text()
    assert "{" not in text and "<" not in text and "Traceback" not in text, text
    expect(page.locator("#result")).to_be_hidden()


def test_a_file_that_is_not_an_image_shows_the_error_in_plain_words(
    page: Page, base_url: str, tmp_path: object
) -> None:
    open_page(page, base_url)
    page.get_by_label("API key").fill(TEST_KEY)
    page.locator("#file").set_input_files(
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"these are not pixels"}
    )
    page.get_by_role("button", name="Check it").click()
    error = page.get_by_role("alert")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_contain_text(re.compile(r"not accepted|could not be used"))
    assert "{" not in error.inner_text()


def test_a_video_gets_a_chart_with_one_point_per_frame_and_an_overlay(
    page: Page, base_url: str
) -> None:
    open_page(page, base_url)
    page.get_by_label("API key").fill(TEST_KEY)
    page.locator("#file").set_input_files(EXAMPLES / "fake_0.mp4")
    with page.expect_response(re.compile(r"/infer/video")) as answer:
        page.get_by_role("button", name="Check it").click()
    assert answer.value.status == 200, answer.value.text()
    body = answer.value.json()
    expect(page.locator("#chart-box")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#chart .point")).to_have_count(len(body["frames"]))
    assert len(body["frames"]) > 1
    aggregate = page.locator("#chart .aggregate")
    expect(aggregate).to_have_count(1)
    assert float(aggregate.get_attribute("data-value") or "nan") == body["fake_prob"]
    expect(page.locator("#verdict")).to_have_text(
        "Likely fake" if body["label"] == "fake" else "Likely real"
    )
    # the most suspicious frame, cut from the video by the browser, explained by the service
    expect(page.locator("#overlay")).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_function("document.getElementById('overlay').complete")
    assert natural_width(page, "#overlay") >= 256
    expect(page.locator("#source-caption")).to_contain_text("most suspicious")
