"""The keys, scopes and rate-limit settings: refused when they could not work, and production
started with managed keys alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.core.errors import ConfigurationError
from src.core.settings import DEFAULT_DEV_API_KEY, Settings, load_settings

STRONG = "s3cure-production-key-0001"


def make(checkpoint_path: Path, **overrides: object) -> Settings:
    return load_settings(checkpoint_path=checkpoint_path, _env_file=None, **overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rate_limit": "lots"}, "no limit like"),
        ({"quota": "10/fortnight"}, "no limit like"),
        ({"failed_auth_limit": "20 per fortnight"}, "no limit like"),
        ({"api_key_scopes": "infer,root"}, "scopes"),
        ({"api_key_scopes": ""}, "scopes"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis://"),
        ({"trusted_proxies": "10.0.0.0/8,proxy.local"}, "no IP or network"),
        ({"cors_origins": "https://app.example.com/path"}, "not origins"),
        ({"rate_limit_failure_mode": "maybe"}, "rate_limit_failure_mode"),
        ({"rate_limit_key_prefix": "has space"}, "rate_limit_key_prefix"),
        ({"env": "production", "admin_api_keys": ["short"], "api_keys": [STRONG]}, "at least 16"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    checkpoint_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(checkpoint_path, **overrides)


def test_values_are_parsed_from_the_environment(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFD_API_KEY_SCOPES", "infer, admin")
    monkeypatch.setenv("DFD_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    monkeypatch.setenv("DFD_CORS_ORIGINS", "https://app.example.com,http://localhost:5173")
    monkeypatch.setenv("DFD_RATE_LIMIT", "120/minute")
    monkeypatch.setenv("DFD_FAILED_AUTH_LIMIT", "off")
    settings = make(checkpoint_path)
    assert settings.api_key_scopes == ["infer", "admin"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    assert settings.cors_origins == ["https://app.example.com", "http://localhost:5173"]
    assert settings.rate_limit == "120/minute"
    assert settings.failed_auth_limit is None
    assert settings.quota is None and settings.redis_url is None


def test_production_may_run_on_managed_keys_alone(checkpoint_path: Path, tmp_path: Path) -> None:
    settings = make(checkpoint_path, env="production", keys_file=tmp_path / "keys.json")
    assert settings.api_keys == []
    with pytest.raises(ConfigurationError, match="DFD_KEYS_FILE"):
        make(checkpoint_path, env="production")


def test_development_adds_the_demo_key_only_when_no_key_is_configured(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    assert make(checkpoint_path).api_keys == [DEFAULT_DEV_API_KEY]
    assert make(checkpoint_path, keys_file=tmp_path / "keys.json").api_keys == []
    assert make(checkpoint_path, admin_api_keys=["admin-key"]).api_keys == []
