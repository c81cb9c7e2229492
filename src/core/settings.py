"""Every knob of the service in one validated ``Settings``, read once at start-up.

Values come from ``DFD_*`` environment variables and a ``.env`` file (see ``.env.example``).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from src.core.device import DEVICE_PATTERN, available_cpus, resolve_device

DEFAULT_DEV_API_KEY = "demo-key"
MIN_PRODUCTION_KEY_LENGTH = 16
DEFAULT_CHECKPOINT = Path("checkpoints/demo/model.pt")
KNOWN_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
# The placeholders in deploy/k8s/base/secret.example.yaml (a test keeps the two in step): the
# example applied as it is must not start a production service. Any key containing
# "REPLACE-ME" (any case, any separators) is refused too.
PLACEHOLDER_API_KEYS = frozenset({"REPLACE-ME-example-key-1", "REPLACE-ME-example-key-2"})
_PLACEHOLDER_MARK = "replaceme"
ENV_VARIABLE = "DFD_ENV"
# A Host header pattern: a name or address without a port, "*" alone, or "*.domain".
_HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_.-]+|\[[0-9a-f:.]+\]")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def is_placeholder_key(key: str) -> bool:
    """A key copied from an example rather than generated."""
    letters = re.sub(r"[^a-z]", "", key.lower())
    return key in PLACEHOLDER_API_KEYS or _PLACEHOLDER_MARK in letters


class _EmptyDeploymentEnv(PydanticBaseSettingsSource):
    """Keeps an empty ``DFD_ENV`` so that it can be refused.

    ``env_ignore_empty`` drops empty variables so that their defaults apply, which for
    ``DFD_ENV`` would silently mean development. This source reads the environment, then the
    ``.env`` file, without dropping empty values, and passes an empty ``DFD_ENV`` on to the
    ``env`` validator.
    """

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._sources: list[EnvSettingsSource] = [
            EnvSettingsSource(settings_cls, env_ignore_empty=False)
        ]
        if isinstance(dotenv, DotEnvSettingsSource):
            self._sources.append(
                DotEnvSettingsSource(
                    settings_cls,
                    env_file=dotenv.env_file,
                    env_file_encoding=dotenv.env_file_encoding,
                    env_ignore_empty=False,
                )
            )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        for source in self._sources:  # the environment wins over .env, as for every setting
            value = source.env_vars.get(ENV_VARIABLE.lower())
            if value is not None:
                return {"env": value} if not value.strip() else {}
        return {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DFD_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        protected_namespaces=(),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        empty_env = _EmptyDeploymentEnv(settings_cls, dotenv_settings)
        return init_settings, empty_env, env_settings, dotenv_settings, file_secret_settings

    # Deployment
    env: Literal["development", "production"] = "development"

    # Auth: several keys may be valid at once, for rotation.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    legacy_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MODEL_API_KEY", "DFD_MODEL_API_KEY"),
        description="The first version's MODEL_API_KEY; merged into api_keys.",
    )

    # Model
    checkpoint_path: Path = DEFAULT_CHECKPOINT
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    onnx_precision: Literal["fp32", "int8"] = "fp32"
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    face_crop: Literal["auto", "on", "off"] = "auto"
    decision_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    # Uploads
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    allowed_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP"]
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_image_side: int = Field(default=12_000, ge=16)
    min_image_side: int = Field(default=16, ge=1)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_concurrent_uploads: int = Field(default=64, ge=1)
    min_upload_bytes_per_s: float = Field(default=8192, ge=0)
    decode_budget_pixels: int | None = Field(default=None, ge=1)

    # Batching and backpressure
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    batch_timeout_ms: float = Field(default=5.0, ge=0.0, le=10_000)
    max_queue_size: int = Field(default=64, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1, le=3600)
    preprocess_workers: int | None = Field(default=None, ge=1, le=256)

    # Server
    host: str = "127.0.0.1"
    # Host header values answered (others get 400): "*" = any, "*.example.com" = its subdomains.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    drain_timeout_s: float = Field(default=20.0, ge=0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    keepalive_timeout_s: int = Field(default=5, ge=1, le=3600)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("api_keys", "allowed_formats", "allowed_hosts", mode="before")
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_is_named(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(
                    f"{ENV_VARIABLE} is set but empty: set {ENV_VARIABLE}=production (or "
                    f"{ENV_VARIABLE}=development), or remove it to run in development"
                )
            return value.strip().lower()
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        hosts = [host.lower() for host in hosts]
        if not hosts:
            raise ValueError("allowed_hosts must not be empty (use * for any host)")
        bad = [host for host in hosts if not _HOST_PATTERN.fullmatch(host)]
        if bad:
            raise ValueError(
                f"allowed_hosts {bad} are not host patterns: give names or addresses without a "
                "port, * for any host, or *.example.com for its subdomains"
            )
        return hosts

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        upper = [f.upper() for f in formats]
        unknown = sorted(set(upper) - KNOWN_FORMATS)
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; known: {sorted(KNOWN_FORMATS)}")
        if not upper:
            raise ValueError("allowed_formats must not be empty")
        return upper

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, device: str) -> str:
        device = device.strip().lower()
        if not DEVICE_PATTERN.match(device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
        return device

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.legacy_api_key and self.legacy_api_key not in self.api_keys:
            self.api_keys = [*self.api_keys, self.legacy_api_key]
        if self.env == "production":
            if not self.api_keys:
                raise ValueError("production needs DFD_API_KEYS (or MODEL_API_KEY)")
            for index, key in enumerate(self.api_keys):
                if is_placeholder_key(key):
                    raise ValueError(
                        f"API key #{index + 1} is a placeholder (REPLACE-ME, as in "
                        "deploy/k8s/base/secret.example.yaml), refused in production: set "
                        "DFD_API_KEYS to generated keys, e.g. $(openssl rand -hex 32)"
                    )
                if key == DEFAULT_DEV_API_KEY:
                    raise ValueError("the development key 'demo-key' is refused in production")
                if len(key) < MIN_PRODUCTION_KEY_LENGTH:
                    raise ValueError(
                        f"API keys must be at least {MIN_PRODUCTION_KEY_LENGTH} characters "
                        "in production"
                    )
        elif not self.api_keys:
            self.api_keys = [DEFAULT_DEV_API_KEY]
        if not self.checkpoint_path.is_file():
            raise ValueError(
                f"checkpoint not found: {self.checkpoint_path} (set DFD_CHECKPOINT_PATH)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("set both DFD_SSL_CERTFILE and DFD_SSL_KEYFILE, or neither")
        for tls_file in (self.ssl_certfile, self.ssl_keyfile):
            if tls_file is not None and not tls_file.is_file():
                raise ValueError(f"TLS file not found: {tls_file}")
        resolve_device(self.device)
        return self

    @cached_property
    def torch_device(self) -> str:
        return resolve_device(self.device)

    @property
    def effective_max_batch_size(self) -> int:
        """4 on a CPU (bigger batches are slower per image on small CPUs; BENCHMARKS.md), 32
        on a GPU, unless set."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 32 if self.torch_device.startswith("cuda") else 4

    @property
    def effective_decode_budget_pixels(self) -> int:
        """1.25 x the largest image allowed, unless set: one maximal image decodes at a time,
        with room beside it for ordinary ones."""
        return self.decode_budget_pixels or self.max_image_pixels + self.max_image_pixels // 4

    @property
    def effective_torch_threads(self) -> int:
        return self.torch_threads or available_cpus()

    @property
    def effective_preprocess_workers(self) -> int:
        return self.preprocess_workers or max(2, min(8, available_cpus()))


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one clear message."""
    from pydantic import ValidationError

    from src.core.errors import ConfigurationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc
