"""Keys and scopes: who may call which route, managed keys re-read from their file, expired and
revoked keys refused, and key guessing limited per client address."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from src.core.errors import ConfigurationError
from src.core.settings import Settings
from src.keys import KeyFile
from src.serve.auth import KeyRing
from src.serve.ratelimit import client_address
from tests.helpers.api import ROTATED_KEY, TEST_KEY, assert_error
from tests.helpers.keyed_app import client_for, keyed_app

pytestmark = pytest.mark.anyio
ADMIN_KEY = "admin-key-0123456789"


def _key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def test_keys_from_settings_get_the_configured_scopes(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(admin_api_keys=[ADMIN_KEY]))
    async with client_for(app) as client:
        for path in ("/t/infer", "/t/history"):
            response = await client.get(path, headers=_key(TEST_KEY))
            assert response.status_code == 200
            assert response.json()["name"].startswith("env-")
        error = assert_error(await client.get("/t/admin", headers=_key(TEST_KEY)), 403, "forbidden")
        assert "admin" in error["message"] and TEST_KEY not in error["message"]
        for path in ("/t/infer", "/t/history", "/t/admin"):
            response = await client.get(path, headers=_key(ADMIN_KEY))
            assert response.status_code == 200
            assert response.json()["name"].startswith("admin-")


async def test_the_scopes_setting_narrows_what_settings_keys_may_do(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(api_key_scopes=["infer"]))
    async with client_for(app) as client:
        assert (await client.get("/t/infer", headers=_key(TEST_KEY))).status_code == 200
        assert_error(await client.get("/t/history", headers=_key(TEST_KEY)), 403, "forbidden")
    assert 'dfd_auth_refused_total{reason="scope"} 1.0' in _metrics(app)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong-key"}])
async def test_no_key_or_a_wrong_key_is_401(
    settings_factory: Callable[..., Settings], headers: dict[str, str]
) -> None:
    async with client_for(keyed_app(settings_factory())) as client:
        for path in ("/t/infer", "/t/history", "/t/admin"):
            assert_error(await client.get(path, headers=headers), 401, "unauthorized")


async def test_admin_actions_write_an_audit_line_without_the_key(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = keyed_app(settings_factory(admin_api_keys=[ADMIN_KEY]))
    async with client_for(app) as client:
        assert (await client.get("/t/admin", headers=_key(ADMIN_KEY))).status_code == 200
    out = capsys.readouterr().out
    [line] = [entry for entry in _log_lines(out) if entry["logger"] == "src.audit"]
    assert line["message"].startswith("admin action: GET /t/admin by admin-")
    assert line["key_name"].startswith("admin-") and line["audit"] == "admin_action"
    assert ADMIN_KEY not in out


async def test_managed_keys_carry_their_scopes_and_name(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    infer_key, _ = store.create("reader", ["infer"])
    admin_key, _ = store.create("ops", ["admin"])
    app = keyed_app(settings_factory(keys_file=store.path))
    async with client_for(app) as client:
        response = await client.get("/t/infer", headers=_key(infer_key))
        assert response.json() == {"name": "reader"}
        assert_error(await client.get("/t/history", headers=_key(infer_key)), 403, "forbidden")
        assert (await client.get("/t/admin", headers=_key(admin_key))).status_code == 200
        assert_error(await client.get("/t/infer", headers=_key(admin_key)), 403, "forbidden")
        # the keys from settings keep working beside the managed ones
        assert (await client.get("/t/infer", headers=_key(ROTATED_KEY))).status_code == 200


async def test_a_revoked_key_is_refused_once_the_file_is_re_read(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    key, _ = store.create("leaving", ["infer"])
    app = keyed_app(settings_factory(keys_file=store.path, keys_reload_s=0))
    async with client_for(app) as client:
        assert (await client.get("/t/infer", headers=_key(key))).status_code == 200
        store.revoke("leaving")
        error = assert_error(await client.get("/t/infer", headers=_key(key)), 401, "unauthorized")
        assert "revoked" in error["message"]
        added, _ = store.create("arriving", ["infer"])
        assert (await client.get("/t/infer", headers=_key(added))).status_code == 200
    metrics = _metrics(app)
    assert 'dfd_managed_keys{status="revoked"} 1.0' in metrics
    assert 'dfd_managed_keys{status="active"} 1.0' in metrics


def test_the_file_is_checked_at_most_every_reload_interval(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    key, _ = store.create("k", ["infer"])
    now = [0.0]
    ring = KeyRing({}, store, reload_s=2.0, clock=lambda: now[0])
    assert ring.identify(key) is not None
    store.revoke("k")
    now[0] = 1.9
    assert ring.identify(key) is not None  # not looked at yet
    now[0] = 2.0
    assert ring.check(key) == (None, "revoked")


def test_an_expired_key_is_refused_at_once_without_a_reload(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    soon = datetime.now(UTC) + timedelta(seconds=1)
    key, _ = store.create("brief", ["infer"], expires_at=soon)
    ring = KeyRing({}, store, reload_s=3600)
    assert ring.identify(key) is not None
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert ring.check(key) == (None, "expired")


async def test_a_damaged_file_keeps_the_previous_keys_and_says_so(
    settings_factory: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    key, _ = store.create("steady", ["infer"])
    app = keyed_app(settings_factory(keys_file=store.path, keys_reload_s=0))
    store.path.write_text("{broken")
    async with client_for(app) as client:
        assert (await client.get("/t/infer", headers=_key(key))).status_code == 200
        assert (await client.get("/t/infer", headers=_key(key))).status_code == 200
    lines = _log_lines(capsys.readouterr().out)
    errors = [e for e in lines if e["message"].startswith("key file not reloaded")]
    assert len(errors) == 1  # once per bad version of the file, not once per request
    assert 'dfd_key_file_reloads_total{result="error"} 1.0' in _metrics(app)


def test_a_damaged_file_at_start_up_stops_the_service(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"format": "dfd-keys/1", "keys": [{"name": "x"}]}))
    with pytest.raises(ConfigurationError, match="key record"):
        keyed_app(settings_factory(keys_file=path))


def test_a_key_file_that_does_not_exist_yet_is_picked_up_when_created(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "later.json")
    ring = KeyRing({}, store, reload_s=0)
    key, _ = store.create("late", ["infer"])
    assert ring.identify(key) is not None


async def test_failed_authentications_are_limited_per_client_address(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(failed_auth_limit="3/minute"))
    async with client_for(app, client="203.0.113.7") as guesser:
        for _ in range(3):
            assert_error(await guesser.get("/t/infer", headers=_key("guess")), 401, "unauthorized")
        refused = await guesser.get("/t/infer", headers=_key("guess"))
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # blocked even with a valid key: or guessing would go on behind the 429s
        assert_error(await guesser.get("/t/infer", headers=_key(TEST_KEY)), 429, "rate_limited")
    async with client_for(app, client="203.0.113.8") as other:
        assert (await other.get("/t/infer", headers=_key(TEST_KEY))).status_code == 200
    assert 'dfd_auth_refused_total{reason="address_limited"} 1.0' in _metrics(app)


async def test_forwarded_addresses_count_only_behind_a_trusted_proxy(
    settings_factory: Callable[..., Settings],
) -> None:
    trusting = keyed_app(
        settings_factory(failed_auth_limit="2/minute", trusted_proxies=["10.0.0.0/8"])
    )
    async with client_for(trusting, client="10.1.2.3") as proxy:
        for _ in range(2):
            headers = {**_key("guess"), "X-Forwarded-For": "198.51.100.1"}
            assert_error(await proxy.get("/t/infer", headers=headers), 401, "unauthorized")
        spoofed = {**_key("guess"), "X-Forwarded-For": "198.51.100.1"}
        assert_error(await proxy.get("/t/infer", headers=spoofed), 429, "rate_limited")
        fresh = {**_key(TEST_KEY), "X-Forwarded-For": "198.51.100.2"}
        assert (await proxy.get("/t/infer", headers=fresh)).status_code == 200

    untrusting = keyed_app(settings_factory(failed_auth_limit="2/minute"))
    async with client_for(untrusting, client="192.0.2.9") as direct:
        for index in range(2):
            headers = {**_key("guess"), "X-Forwarded-For": f"198.51.100.{index}"}
            assert_error(await direct.get("/t/infer", headers=headers), 401, "unauthorized")
        rotated = {**_key("guess"), "X-Forwarded-For": "198.51.100.99"}
        assert_error(await direct.get("/t/infer", headers=rotated), 429, "rate_limited")


def _scope(peer: str, forwarded: str | None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.1", "198.51.100.1", "192.0.2.1"),  # untrusted peer: its own address
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # left part is the client's say
        ("10.0.0.5", "198.51.100.1, 10.0.0.9", "198.51.100.1"),  # two proxies
        ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # all trusted: the first
        ("10.0.0.5", "not-an-ip", "10.0.0.5"),
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address(_scope(peer, forwarded), trusted) == expected


async def test_keys_never_appear_in_logs_metrics_or_errors(
    settings_factory: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    managed, _ = store.create("secretive", ["infer"], rate="1/minute")
    app = keyed_app(settings_factory(keys_file=store.path, keys_reload_s=0))
    bodies = []
    async with client_for(app) as client:
        for key in (managed, managed, TEST_KEY, "wrong-" + managed):
            bodies.append((await client.post("/t/charge/1", headers=_key(key))).text)
            bodies.append((await client.get("/t/admin", headers=_key(key))).text)
        store.revoke("secretive")
        bodies.append((await client.get("/t/infer", headers=_key(managed))).text)
        bodies.append((await client.get("/metrics")).text)
    out = capsys.readouterr()
    seen = "\n".join([*bodies, out.out, out.err])
    assert "rate_limited" in seen and "revoked" in seen and "secretive" in seen
    for key in (managed, TEST_KEY):  # "wrong-<managed>" would contain the managed key too
        assert key not in seen


async def test_every_answer_carries_security_headers_with_a_policy_by_path(
    settings_factory: Callable[..., Settings],
) -> None:
    from src.serve.middleware.security_headers import API_CSP, DOCS_CSP, UI_CSP

    app = keyed_app(settings_factory())
    async with client_for(app) as client:
        answers = {
            "/health": await client.get("/health"),
            "/t/infer": await client.get("/t/infer"),  # a 401
            "/openapi.json": await client.get("/openapi.json"),
            "/nowhere": await client.get("/nowhere"),
            "/docs": await client.get("/docs"),
            "/redoc": await client.get("/redoc"),
            "/docs/assets/swagger-init.js": await client.get("/docs/assets/swagger-init.js"),
            "/ui/app.js": await client.get("/ui/app.js"),
            "/": await client.get("/"),
        }
    for path, response in answers.items():
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
    for path in ("/health", "/t/infer", "/openapi.json", "/nowhere"):
        assert answers[path].headers["content-security-policy"] == API_CSP
    assert "default-src 'none'" in API_CSP and "frame-ancestors 'none'" in API_CSP
    # /docs sets its own policy (routes/docs.py); it is kept, not replaced
    assert "script-src 'self'" in answers["/docs"].headers["content-security-policy"]
    assert answers["/redoc"].headers["content-security-policy"] == DOCS_CSP
    assert answers["/ui/app.js"].headers["content-security-policy"] == UI_CSP
    assert answers["/"].headers["content-security-policy"] == UI_CSP
    assert "img-src 'self' data: blob:" in UI_CSP and "connect-src 'self'" in UI_CSP
    assert answers["/docs"].status_code == answers["/redoc"].status_code == 200
    assert "strict-transport-security" not in answers["/health"].headers  # plain HTTP


async def test_answers_over_tls_ask_browsers_to_keep_to_it(
    settings_factory: Callable[..., Settings],
) -> None:
    transport = httpx.ASGITransport(app=keyed_app(settings_factory()))
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as client:
        response = await client.get("/health")
    assert response.headers["strict-transport-security"] == "max-age=31536000"


async def test_cors_is_off_by_default_and_answers_configured_origins(
    settings_factory: Callable[..., Settings],
) -> None:
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    async with client_for(keyed_app(settings_factory())) as client:
        response = await client.options("/t/charge/1", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    app = keyed_app(
        settings_factory(cors_origins=["https://app.example.com"], rate_limit="5/minute")
    )
    async with client_for(app) as client:
        response = await client.options("/t/charge/1", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
        actual = await client.post(
            "/t/charge/1", headers={**_key(TEST_KEY), "Origin": "https://app.example.com"}
        )
        exposed = actual.headers["access-control-expose-headers"].lower()
        assert "ratelimit" in exposed and "retry-after" in exposed
        other = await client.options(
            "/t/charge/1", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def _log_lines(out: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _metrics(app: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.state.metrics.registry).decode()  # type: ignore[attr-defined]
