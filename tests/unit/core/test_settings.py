"""Settings: environment, .env, legacy variable, and refusals at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.core.errors import ConfigurationError
from src.core.settings import DEFAULT_DEV_API_KEY, Settings, load_settings
from tests.helpers import REPO_ROOT

STRONG = "s3cure-production-key-0001"


def make(checkpoint: Path, **kw: object) -> Settings:
    return load_settings(checkpoint_path=checkpoint, _env_file=None, **kw)


def test_environment_variables_are_read(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    monkeypatch.setenv("DFD_CHECKPOINT_PATH", str(checkpoint_path))
    monkeypatch.setenv("DFD_API_KEYS", "key-one, key-two")
    monkeypatch.setenv("DFD_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("DFD_ALLOWED_FORMATS", "jpeg,png")
    monkeypatch.setenv("DFD_LOG_LEVEL", "debug")
    settings = load_settings(_env_file=None)
    assert settings.api_keys == ["key-one", "key-two"]
    assert settings.max_batch_size == 16
    assert settings.allowed_formats == ["JPEG", "PNG"]
    assert settings.log_level == "DEBUG"
    assert settings.checkpoint_path == checkpoint_path


def test_dotenv_file_is_read(tmp_path: Path, checkpoint_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DFD_CHECKPOINT_PATH={checkpoint_path}\nDFD_PORT=9123\n")
    settings = load_settings(_env_file=env_file)
    assert settings.port == 9123


def test_legacy_model_api_key_still_works(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    monkeypatch.setenv("MODEL_API_KEY", "legacy-key")
    settings = make(checkpoint_path, api_keys=["new-key"])
    assert settings.api_keys == ["new-key", "legacy-key"]


def test_development_gets_the_demo_key(checkpoint_path: Path) -> None:
    assert make(checkpoint_path).api_keys == [DEFAULT_DEV_API_KEY]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"env": "production"}, "production needs"),
        ({"env": "production", "api_keys": [DEFAULT_DEV_API_KEY]}, "refused in production"),
        ({"env": "production", "api_keys": ["short"]}, "at least 16"),
        ({"env": "production", "api_keys": [STRONG, "short"]}, "at least 16"),
        ({"device": "tpu"}, "device must be"),
        ({"device": "cuda"}, "CUDA is not available"),
        ({"device": "cuda:3"}, "CUDA is not available"),
        ({"allowed_formats": ["JPEG", "HEIC"]}, "unknown image formats"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"ssl_certfile": "cert.pem"}, "both DFD_SSL_CERTFILE"),
    ],
)
def test_bad_settings_are_refused(
    checkpoint_path: Path, overrides: dict[str, object], message: str
) -> None:
    if "cuda" in str(overrides.get("device", "")):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    with pytest.raises(ConfigurationError, match=message):
        make(checkpoint_path, **overrides)


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="checkpoint not found"):
        make(tmp_path / "absent.pt")


def test_production_with_strong_keys_starts(checkpoint_path: Path) -> None:
    settings = make(checkpoint_path, env="production", api_keys=[STRONG])
    assert settings.api_keys == [STRONG]
    assert settings.torch_device == "cpu"


def test_serve_refuses_bad_config_before_serving(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env["DFD_CHECKPOINT_PATH"] = str(tmp_path / "missing.pt")
    result = subprocess.run(
        [sys.executable, "-m", "src.serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr


def test_env_example_documents_every_setting_and_loads(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    example = REPO_ROOT / ".env.example"
    text = example.read_text()
    for name in Settings.model_fields:
        if name == "legacy_api_key":
            assert "MODEL_API_KEY" in text
            continue
        assert f"DFD_{name.upper()}=" in text, f"DFD_{name.upper()} is not documented"
    env_file = tmp_path / ".env"
    env_file.write_text(text)  # the committed repository (checkpoints/) is what it serves
    settings = load_settings(_env_file=env_file)
    assert settings.api_keys == [DEFAULT_DEV_API_KEY]
    assert settings.torch_threads is None


def test_default_threads_follow_the_cores_this_process_may_use(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import src.core.settings as config

    monkeypatch.setattr(config, "available_cpus", lambda: 3)
    settings = Settings(checkpoint_path=checkpoint_path, device="cpu")
    assert settings.effective_torch_threads == 3
    assert settings.effective_preprocess_workers == 3
    assert Settings(checkpoint_path=checkpoint_path, torch_threads=1).effective_torch_threads == 1
