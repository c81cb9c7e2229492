"""The committed demo model, served as `make run` serves it, tells held-out pairs apart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from src.core.settings import DEFAULT_CHECKPOINT, Settings
from src.models import read_checkpoint
from src.serve.app import create_app
from tests.helpers import REPO_ROOT as ROOT
from tests.helpers.api import TEST_KEY, started_client
from tests.helpers.images import infer_files

pytestmark = pytest.mark.anyio


def test_demo_checkpoint_is_a_trained_face_model() -> None:
    metadata = read_checkpoint(ROOT / DEFAULT_CHECKPOINT).metadata
    assert metadata.architecture == "efficientnet_lite0"
    assert metadata.face_crop is True
    assert metadata.metrics["auc"] > 0.8, "the shipped model's validation AUC is too low"
    assert metadata.train_args, "training arguments are missing from the metadata"


async def test_served_demo_model_separates_held_out_real_and_self_blended_fake(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(checkpoint_path=ROOT / DEFAULT_CHECKPOINT))
    async for client in started_client(app):
        probs = {}
        for name in ("real_0", "fake_0", "real_1", "fake_1"):
            data = (ROOT / "examples" / f"{name}.jpg").read_bytes()
            response = await client.post(
                "/infer", files=infer_files(data), headers={"X-API-Key": TEST_KEY}
            )
            assert response.status_code == 200, response.text
            probs[name] = response.json()["fake_prob"]
    for pair in ("0", "1"):
        assert probs[f"fake_{pair}"] - probs[f"real_{pair}"] > 0.5, probs
