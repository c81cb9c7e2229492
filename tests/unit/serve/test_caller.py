"""Routes know who is calling: a key id derived from the key, never the key itself."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated

import pytest
from fastapi import Request, Security

from src.core.settings import Settings
from src.serve.app import create_app
from src.serve.deps import Caller, KeyRing, api_key_header, get_caller
from tests.helpers.api import AUTH, ROTATED_KEY, TEST_KEY, started_client
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio


def test_a_valid_key_identifies_its_caller_by_a_digest_prefix() -> None:
    ring = KeyRing.from_keys([TEST_KEY, ROTATED_KEY])
    caller = ring.identify(TEST_KEY)
    assert caller is not None
    assert caller.key_id == hashlib.sha256(TEST_KEY.encode()).hexdigest()[:16]
    assert TEST_KEY not in caller.key_id
    assert "infer" in caller.scopes
    assert ring.identify(ROTATED_KEY) != caller
    assert ring.identify("wrong-key") is None
    assert ring.identify(None) is None
    assert ring.identify("") is None


async def test_the_inference_route_receives_the_caller(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory())
    seen: list[Caller] = []
    ring = app.state.key_ring

    async def recording_caller(
        request: Request, api_key: Annotated[str | None, Security(api_key_header)]
    ) -> Caller:
        caller = await get_caller(request, api_key)
        seen.append(caller)
        return caller

    app.dependency_overrides[get_caller] = recording_caller
    async for client in started_client(app):
        response = await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    assert response.status_code == 200, response.text
    assert seen == [ring.identify(TEST_KEY)]


async def test_the_access_log_names_the_caller_by_key_id_only(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    async for client in started_client(create_app(settings_factory())):
        response = await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
        assert response.status_code == 200
        assert (await client.get("/health")).status_code == 200
    out = capsys.readouterr().out
    access = [json.loads(line) for line in out.splitlines() if '"src.access"' in line]
    caller = KeyRing.from_keys([TEST_KEY]).identify(TEST_KEY)
    assert caller is not None
    assert [(a["path"], a["key_id"]) for a in access] == [
        ("/infer", caller.key_id),
        ("/health", None),
    ]
    assert TEST_KEY not in out
