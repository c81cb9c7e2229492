"""Two replicas on loopback converge on one routing setting: a traffic change, a rollback and a
shadow made through one replica's admin API reach the other within ``DFD_ROUTING_SYNC_S`` (plus
the load of a version it did not have). Shared through PostgreSQL when the store is on, through
``<repository>/<model>/routing.json`` when it is off."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import AUTH
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.databases import postgres_database
from tests.helpers.images import image_bytes
from tests.helpers.server import free_port, start_server, stop_server, wait_ready

ADMIN = {"X-API-Key": "admin-key-0123456789"}
MODEL = "detector"
SYNC_S = 0.5
LOAD_ALLOWANCE_S = 10.0  # a version the replica must load first (torch import, warm-up)


@contextlib.contextmanager
def replicas(repository: Path, tmp_path: Path, **settings: str) -> Iterator[list[str]]:
    servers, bases = [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            bases.append(f"http://127.0.0.1:{port}")
            servers.append(
                start_server(
                    None,
                    port,
                    DFD_MODEL_REPOSITORY=str(repository),
                    DFD_MODEL_NAME=MODEL,
                    DFD_MODEL_VERSION="1",
                    DFD_ADMIN_API_KEYS=ADMIN["X-API-Key"],
                    DFD_ROUTING_SYNC_S=str(SYNC_S),
                    DFD_CACHE="off",
                    DFD_SPOOL_PATH=str(tmp_path / name / "spool.jsonl"),
                    DFD_JOBS_DIR=str(tmp_path / name / "jobs"),
                    **settings,
                )
            )
        for base, server in zip(bases, servers, strict=True):
            wait_ready(base, server)
        yield bases
    finally:
        for server in servers:
            stop_server(server)


def version_answering(base: str) -> str:
    response = httpx.post(
        f"{base}/infer",
        content=image_bytes(),
        headers={**AUTH, "content-type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def until(condition: str, check: object, timeout: float) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{condition} not within {timeout} s")


def admin(method: str, url: str, body: object = None) -> httpx.Response:
    response = httpx.request(method, url, json=body, headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("shared_by", ["postgresql", "file"])
def test_a_routing_change_on_one_replica_reaches_the_other(shared_by: str, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    for version, seed in (("1", 0), ("2", 1)):
        make_checkpoint(repository / MODEL / version / "model.pt", seed=seed)
    with contextlib.ExitStack() as stack:
        if shared_by == "postgresql":
            url = stack.enter_context(postgres_database())
            settings = {"DFD_DATABASE_URL": url}
        else:
            settings = {"DFD_STORE": "off"}
        a, b = stack.enter_context(replicas(repository, tmp_path, **settings))
        assert version_answering(a) == version_answering(b) == "1"

        admin("POST", f"{a}/models/{MODEL}/versions/2/load")
        admin("PUT", f"{a}/models/{MODEL}/traffic", {"2": 100})
        assert version_answering(a) == "2"  # at once where it was made
        # b loads version 2 itself, then switches
        took = until("b serves 2", lambda: version_answering(b) == "2", SYNC_S + LOAD_ALLOWANCE_S)
        view = httpx.get(f"{b}/models", headers=ADMIN, timeout=10).json()
        (model,) = [m for m in view["models"] if m["name"] == MODEL]
        assert model["traffic"] == {"2": 100} and model["previous_traffic"] == {"1": 100}

        # a rollback on b reaches a, which has both versions: within the sync interval
        admin("POST", f"{b}/models/{MODEL}/rollback")
        assert version_answering(b) == "1"
        back = until("a serves 1", lambda: version_answering(a) == "1", SYNC_S + 2.0)
        print(
            f"{shared_by}: the switch reached b in {took:.2f} s (a load included), "
            f"the rollback reached a in {back:.2f} s"
        )

        if shared_by == "postgresql":  # shadow scores of both replicas land in one table
            admin("PUT", f"{a}/models/{MODEL}/shadow", {"version": "2", "sample": 1.0})
            until(
                "b has the shadow",
                lambda: (
                    httpx.get(f"{b}/models", headers=ADMIN, timeout=10).json()["models"][0][
                        "shadow"
                    ]
                    is not None
                ),
                SYNC_S + 2.0,
            )
            for base in (a, b, a, b):
                version_answering(base)
            report = until(
                "four shared requests",
                lambda: (
                    httpx.get(f"{b}/models/{MODEL}/compare", headers=ADMIN, timeout=10).json()[
                        "shared_requests"
                    ]
                    == 4
                ),
                5.0,
            )
            assert report >= 0
