"""Settings that must not let a careless deployment start: example placeholder keys in
production, an empty DFD_ENV, and Host patterns that could never match."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.core.errors import ConfigurationError
from src.core.settings import Settings, load_settings
from tests.helpers import REPO_ROOT

SECRET_EXAMPLE = REPO_ROOT / "deploy" / "k8s" / "base" / "secret.example.yaml"
STRONG = "s3cure-production-key-0001"


def example_keys() -> list[str]:
    (secret,) = [doc for doc in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if doc]
    return [key.strip() for key in secret["stringData"]["DFD_API_KEYS"].split(",")]


# ------------------------------------------------------------------------- placeholder keys ---
def test_the_placeholder_list_is_the_example_secrets() -> None:
    from src.core.settings import PLACEHOLDER_API_KEYS

    assert set(example_keys()) == PLACEHOLDER_API_KEYS


@pytest.mark.parametrize("key", example_keys())
def test_each_example_key_is_refused_in_production(checkpoint_path: Path, key: str) -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        load_settings(
            checkpoint_path=checkpoint_path,
            _env_file=None,
            env="production",
            api_keys=[STRONG, key],
        )


def test_the_example_secret_applied_as_is_does_not_start_production(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    (secret,) = [doc for doc in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if doc]
    monkeypatch.setenv("DFD_ENV", "production")
    monkeypatch.setenv("DFD_CHECKPOINT_PATH", str(checkpoint_path))
    monkeypatch.setenv("DFD_API_KEYS", secret["stringData"]["DFD_API_KEYS"])
    with pytest.raises(ConfigurationError, match=r"placeholder.*DFD_API_KEYS"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    "key",
    [
        "replace-me-0123456789abcdef",
        "REPLACE_ME_0123456789abcdef",
        "0123456789abcdef-ReplaceMe",
        "my-key-replace.me-0123456789",
    ],
)
def test_any_replace_me_key_is_refused_in_production(checkpoint_path: Path, key: str) -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        load_settings(
            checkpoint_path=checkpoint_path, _env_file=None, env="production", api_keys=[key]
        )


def test_placeholders_are_only_a_production_matter(checkpoint_path: Path) -> None:
    settings = load_settings(
        checkpoint_path=checkpoint_path, _env_file=None, api_keys=example_keys()
    )
    assert settings.env == "development"
    production = load_settings(
        checkpoint_path=checkpoint_path, _env_file=None, env="production", api_keys=[STRONG]
    )
    assert production.api_keys == [STRONG]


# ---------------------------------------------------------------------------- empty DFD_ENV ---
def test_empty_dfd_env_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    monkeypatch.setenv("DFD_ENV", "")
    with pytest.raises(
        ConfigurationError, match="DFD_ENV is set but empty: set DFD_ENV=production"
    ):
        load_settings(checkpoint_path=checkpoint_path, _env_file=None)


def test_empty_dfd_env_in_the_env_file_is_refused(tmp_path: Path, checkpoint_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DFD_CHECKPOINT_PATH={checkpoint_path}\nDFD_ENV=\n")
    with pytest.raises(ConfigurationError, match="DFD_ENV is set but empty"):
        load_settings(_env_file=env_file)


def test_unset_dfd_env_is_development_and_the_environment_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint_path: Path
) -> None:
    assert load_settings(checkpoint_path=checkpoint_path, _env_file=None).env == "development"
    env_file = tmp_path / ".env"
    env_file.write_text(f"DFD_CHECKPOINT_PATH={checkpoint_path}\nDFD_ENV=\n")
    monkeypatch.setenv("DFD_ENV", "production")
    monkeypatch.setenv("DFD_API_KEYS", STRONG)
    assert load_settings(_env_file=env_file).env == "production"


def test_other_empty_settings_still_mean_their_default(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    monkeypatch.setenv("DFD_TORCH_THREADS", "")
    monkeypatch.setenv("DFD_ALLOWED_HOSTS", "")
    settings = load_settings(checkpoint_path=checkpoint_path, _env_file=None)
    assert settings.torch_threads is None and settings.allowed_hosts == ["*"]


def test_serve_exits_with_the_reason_when_dfd_env_is_empty(checkpoint_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update({"DFD_ENV": "", "DFD_CHECKPOINT_PATH": str(checkpoint_path)})
    result = subprocess.run(
        [sys.executable, "-m", "src.serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "DFD_ENV is set but empty" in result.stderr


# ---------------------------------------------------------------------------- allowed hosts ---
def test_allowed_hosts_default_to_any_and_parse_a_comma_list(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    assert load_settings(checkpoint_path=checkpoint_path, _env_file=None).allowed_hosts == ["*"]
    monkeypatch.setenv("DFD_ALLOWED_HOSTS", "DFD.example.com, *.internal.example,127.0.0.1,[::1]")
    settings = load_settings(checkpoint_path=checkpoint_path, _env_file=None)
    assert settings.allowed_hosts == ["dfd.example.com", "*.internal.example", "127.0.0.1", "[::1]"]


@pytest.mark.parametrize(
    "hosts", ["dfd.example.com:8000", "dfd.*.com", "*example.com", "http://dfd.example.com", ","]
)
def test_host_patterns_that_never_match_are_refused(checkpoint_path: Path, hosts: str) -> None:
    with pytest.raises(ConfigurationError, match="allowed_hosts"):
        load_settings(checkpoint_path=checkpoint_path, _env_file=None, allowed_hosts=hosts)


def test_allowed_hosts_is_documented() -> None:
    assert "allowed_hosts" in Settings.model_fields
    assert "\nDFD_ALLOWED_HOSTS=*\n" in (REPO_ROOT / ".env.example").read_text()
