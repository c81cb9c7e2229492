"""What a hostile or unusual client can do over HTTP: forge log lines through the path, steer
redirects with the Host header, and whether the docs page needs the internet."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from html.parser import HTMLParser

import httpx
import pytest

from src.core.settings import Settings
from src.serve.app import create_app
from tests.helpers.api import assert_error, started_client

pytestmark = pytest.mark.anyio

FORGED = "2031-01-01 00:00:00,000 INFO    src.access [forged] GET /admin 200"
# %0A (LF), %0D (CR), ESC, NEL and LINE SEPARATOR, each of which can end a line somewhere.
HOSTILE_PATH = "/nope%0A" + FORGED.replace(" ", "%20") + "%0D%1B[31m%C2%85%E2%80%A8tail"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


# ------------------------------------------------------------------------------------- logs ---
async def test_text_logs_escape_control_characters_in_the_path(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_factory(log_format="text"))
    async for client in started_client(app):
        capsys.readouterr()
        response = await client.get(HOSTILE_PATH)
        assert response.status_code == 404
    out = capsys.readouterr().out
    lines = out.split("\n")
    assert [line for line in lines if "forged" in line], out
    for line in lines:
        if line:
            assert TEXT_LINE.match(line), f"a line that is no record of ours: {line!r}"
            assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), repr(line)
    access = [line for line in lines if " src.access " in line and "/nope" in line]
    assert len(access) == 1
    assert "/nope\\n2031-01-01" in access[0] and "\\r\\x1b[31m\\x85\\u2028tail 404" in access[0]


async def test_json_logs_keep_one_record_per_line_for_the_same_path(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_factory(log_format="json"))
    async for client in started_client(app):
        capsys.readouterr()
        await client.get(HOSTILE_PATH)
    lines = [line for line in capsys.readouterr().out.split("\n") if line]
    records = [json.loads(line) for line in lines]  # each line is one whole JSON object
    (access,) = [r for r in records if r["logger"] == "src.access" and "/nope" in r["path"]]
    assert access["path"].startswith("/nope\n2031-01-01")  # the value is kept, escaped by JSON
    assert "\u2028" in access["path"] and "\u2028" not in "\n".join(lines)


def test_text_formatter_escapes_every_field_and_indents_tracebacks() -> None:
    from src.serve.logging_setup import TEXT_FORMAT, SafeTextFormatter, escape_control

    formatter = SafeTextFormatter(TEXT_FORMAT)
    try:
        raise ValueError("bad\n" + FORGED)
    except ValueError:
        record = logging.LogRecord(
            "src.x\nname", logging.ERROR, __file__, 1, "failed on %s", ("a\rb",), sys.exc_info()
        )
    record.request_id = "rid\n" + FORGED
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert "src.x\\nname" in first and "failed on a\\rb" in first and "rid\\n2031" in first
    assert rest and all(line.startswith("    ") for line in rest), text
    assert record.request_id.startswith("rid\n"), "the record itself is left as it was"
    assert escape_control("ok \x00\x7f\u2029") == "ok \\x00\\x7f\\u2029"


# ------------------------------------------------------------------------------------ hosts ---
async def test_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/health/", "/ready/", "/infer/", "/metrics/"):
        response = await client.get(path, headers={"Host": "evil.example.com"})
        assert "location" not in response.headers, response.headers
        assert_error(response, 404, "not_found")


async def test_wrong_host_is_400_in_the_error_shape(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(allowed_hosts=["dfd.example.com", "*.internal.example"]))
    async for client in started_client(app):
        for host in ("dfd.example.com", "DFD.example.com:8443", "api.internal.example"):
            response = await client.get("/health", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        for host in ("evil.example.com", "dfd.example.com.evil.com", "internal.example.evil"):
            response = await client.get(
                "/health/", headers={"Host": host, "X-Request-ID": "host-check-1"}
            )
            error = assert_error(response, 400, "invalid_host")
            assert error["request_id"] == "host-check-1"
            assert "location" not in response.headers
        metrics = await client.get("/metrics", headers={"Host": "dfd.example.com"})
        assert 'route="<unmatched>",status="400"' in metrics.text


async def test_any_host_is_answered_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Host": "anything.example:1234"})
    assert response.status_code == 200


# ------------------------------------------------------------------------------------- docs ---
class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "spec-url", "data-openapi-url"):
            if values.get(name):
                self.urls.append(str(values[name]))
        self._in_script = tag == "script"
        if tag == "script" and not values.get("src"):
            self.inline_scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_load_only_same_origin_assets(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    refs = _refs(response.text)
    assert refs.urls, response.text
    assert not refs.inline_scripts, "an inline script is blocked by script-src 'self'"
    assert "<style" not in response.text
    for url in refs.urls:
        assert url.startswith("/") and not url.startswith("//"), f"not same-origin: {url}"
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png", "json": "application/json"}
    for url in refs.urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = kinds[url.rsplit(".", 1)[-1]]
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 100, url
    assert "/openapi.json" in refs.urls


async def test_swagger_page_starts_swagger_ui_from_a_same_origin_script(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-eval" not in policy
    scripts = [url for url in _refs(response.text).urls if url.endswith(".js")]
    bodies = [(await client.get(url)).text for url in scripts]
    assert "SwaggerUIBundle" in bodies[0]
    assert "SwaggerUIBundle({" in bodies[-1] and "data-openapi-url" in bodies[-1]
    for body in bodies:
        assert "cdn.jsdelivr.net" not in body[:2000]


async def test_unknown_docs_asset_is_a_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    for name in ("nope.js", "..%2Fapp.py", "core.py"):
        assert_error(await client.get(f"/docs/assets/{name}"), 404, "not_found")
