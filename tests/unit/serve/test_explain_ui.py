"""The web page's routes: the page at / and /ui/, its two assets, nothing else from disk, no
route shadowed, and a page that needs no inline code and no other origin."""

from __future__ import annotations

import re

import httpx
import pytest

from src.serve.routes.ui import STATIC_DIR
from tests.helpers.api import AUTH, assert_error

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", ["/", "/ui/"])
async def test_the_page_is_served_with_a_policy_that_allows_what_it_uses(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "media-src blob:" in policy  # a video's frame is cut from a blob: URL


@pytest.mark.parametrize(
    ("name", "media_type"), [("app.js", "text/javascript"), ("style.css", "text/css")]
)
async def test_the_assets_are_served(client: httpx.AsyncClient, name: str, media_type: str) -> None:
    response = await client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("name", ["index.htm", "..%2Fapp.py", "secret.txt", "%2e%2e"])
async def test_nothing_else_is_served_from_disk(client: httpx.AsyncClient, name: str) -> None:
    assert_error(await client.get(f"/ui/{name}"), 404, "not_found")


async def test_the_page_shadows_no_route(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    assert (await client.post("/infer", headers=AUTH)).status_code == 400


def test_the_page_has_no_inline_code_and_no_other_origin() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"<[^>]*\son[a-z]+=", html), "inline event handler"
    for text in (html, (STATIC_DIR / "app.js").read_text(encoding="utf-8")):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    assert "innerHTML" not in js and "eval(" not in js and 'setAttribute("style"' not in js
    assert "localStorage" not in js, "the key stays in the tab's session storage"
    for element_id in re.findall(r'\$\("([\w-]+)"\)', js):
        assert f'id="{element_id}"' in html, f"app.js uses #{element_id}, which the page lacks"
