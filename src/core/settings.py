"""Every knob of the service in one validated ``Settings``, read once at start-up.

Values come from ``DFD_*`` environment variables and a ``.env`` file (see ``.env.example``).
"""

from __future__ import annotations

import ipaddress
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
DEFAULT_CHECKPOINT = Path("checkpoints/deepfake-detector/0.2.0-demo/model.pt")
# A model repository holds <model>/<version>/model.pt (src/models/repository.py lists it).
CHECKPOINT_FILE = "model.pt"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of version directory names: numbers by value ("10" after "9"), text after."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", version)
        if part
    )


def repository_checkpoint(root: Path, model: str, version: str | None) -> Path:
    """The checkpoint ``root/model/version/model.pt``; without ``version``, the highest one."""
    folder = root / model
    if version is None:
        versions = sorted(
            (path.parent.name for path in folder.glob(f"*/{CHECKPOINT_FILE}") if path.is_file()),
            key=version_order,
        )
        if not versions:
            raise ValueError(
                f"no {model}/<version>/{CHECKPOINT_FILE} in the model repository {root}"
            )
        version = versions[-1]
    path = folder / version / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"checkpoint not found in the model repository: {path}")
    return path


KNOWN_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
# The placeholders in deploy/k8s/base/secret.example.yaml (a test keeps the two in step): the
# example applied as it is must not start a production service. Any key containing
# "REPLACE-ME" (any case, any separators) is refused too.
PLACEHOLDER_API_KEYS = frozenset({"REPLACE-ME-example-key-1", "REPLACE-ME-example-key-2"})
_PLACEHOLDER_MARK = "replaceme"
ENV_VARIABLE = "DFD_ENV"
# A Host header pattern: a name or address without a port, "*" alone, or "*.domain".
_HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_.-]+|\[[0-9a-f:.]+\]")
# What a key may do: inference routes; its own results and feedback; models and everyone's results.
KEY_SCOPES = ("infer", "history", "admin")
# Rate and quota values that mean "no limit".
NO_LIMIT = frozenset({"off", "none", "unlimited"})
# A browser origin for DFD_CORS_ORIGINS: scheme, host and an optional port, no path.
_ORIGIN_PATTERN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def check_rate(value: str | None) -> str | None:
    """A limit such as ``120/minute`` or ``10000/day`` (the ``limits`` notation), or None for
    no limit (empty, off, none, unlimited)."""
    if value is None or value.strip().lower() in NO_LIMIT | {""}:
        return None
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"{value!r} is no limit like 120/minute or 10000/day") from None
    return value.strip()


def check_scopes(scopes: list[str]) -> list[str]:
    scopes = [scope.strip().lower() for scope in scopes]
    unknown = sorted(set(scopes) - set(KEY_SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty set of {', '.join(KEY_SCOPES)}: {unknown}")
    return list(dict.fromkeys(scopes))


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

    # Keys, scopes and rate limits (src/keys, src/serve/auth.py, src/serve/ratelimit.py)
    api_key_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["infer", "history"]
    )
    admin_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    keys_file: Path | None = None
    keys_reload_s: float = Field(default=2.0, ge=0, le=3600)
    rate_limit: str | None = None
    quota: str | None = None
    rate_limit_strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = (
        "moving-window"
    )
    redis_url: str | None = None
    redis_timeout_s: float = Field(default=0.5, gt=0, le=60)
    rate_limit_key_prefix: str = Field(default="dfd", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    rate_limit_failure_mode: Literal["open", "closed"] = "open"
    failed_auth_limit: str | None = "20/minute"
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_metric_keys: int = Field(default=20, ge=0, le=1000)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator(
        "api_key_scopes", "admin_api_keys", "trusted_proxies", "cors_origins", mode="before"
    )
    @classmethod
    def _parse_key_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("rate_limit", "quota", "failed_auth_limit")
    @classmethod
    def _rate_syntax(cls, value: str | None) -> str | None:
        return check_rate(value)

    @field_validator("api_key_scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        return check_scopes(scopes)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return url or None

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {proxy!r} is no IP or network") from None
        return proxies

    @field_validator("cors_origins")
    @classmethod
    def _origin_syntax(cls, origins: list[str]) -> list[str]:
        bad = [o for o in origins if o != "*" and not _ORIGIN_PATTERN.fullmatch(o)]
        if bad:
            raise ValueError(f"cors_origins {bad} are not origins like https://app.example.com")
        return origins

    # Model
    checkpoint_path: Path = DEFAULT_CHECKPOINT
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    onnx_precision: Literal["fp32", "int8"] = "fp32"
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    face_crop: Literal["auto", "on", "off"] = "auto"
    decision_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    # Model repository and OIP. With a repository (<model>/<version>/model.pt) the version
    # served at start is model_name's model_version (default: the highest), unless the shared
    # routing setting names others; DFD_CHECKPOINT_PATH alone is a one-model repository.
    # model_name is also the /v2 model's name.
    model_repository: Path | None = Path("checkpoints")
    model_name: str = Field(default="deepfake-detector", pattern=MODEL_NAME_PATTERN)
    model_version: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    # Model lifecycle (src/serve/lifecycle.py): versions resident at once, how often a replica
    # reads the shared routing setting, and whether a canary split is sticky per API key.
    max_loaded_versions: int = Field(default=2, ge=1, le=16)
    routing_sync_s: float = Field(default=2.0, ge=0.0, le=3600.0)
    traffic_split: Literal["key", "request"] = "key"

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

    # Videos and batches (POST /infer/video, POST /infer/batch)
    video_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    video_max_duration_s: float = Field(default=600.0, gt=0)
    video_max_frame_pixels: int = Field(default=3840 * 2160, ge=256)
    video_max_frames: int = Field(default=64, ge=1, le=1024)
    video_default_frames: int = Field(default=32, ge=1, le=1024)
    video_decode_budget_s: float = Field(default=20.0, gt=0)
    video_aggregate: Literal["mean", "max", "confident"] = "confident"
    video_body_timeout_s: float = Field(default=60.0, gt=0)
    video_timeout_s: float = Field(default=120.0, gt=0)
    max_batch_items: int = Field(default=32, ge=1, le=1024)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Batching and backpressure
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    batch_timeout_ms: float = Field(default=5.0, ge=0.0, le=10_000)
    max_queue_size: int = Field(default=64, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1, le=3600)
    preprocess_workers: int | None = Field(default=None, ge=1, le=256)

    # Explanations (POST /explain, src/explain): own admission and time limit; capped work
    max_concurrent_explain: int = Field(default=1, ge=1, le=16)
    explain_timeout_s: float = Field(default=30.0, gt=0, le=600)
    explain_ig_steps: int = Field(default=32, ge=2, le=256)
    explain_lime_samples: int = Field(default=200, ge=10, le=2000)
    explain_shap_samples: int = Field(default=200, ge=10, le=2000)
    explain_superpixels: int = Field(default=50, ge=4, le=400)

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

    # Store, cache and jobs (src/store): history, feedback, result cache, recordings, async jobs
    store: Literal["on", "off"] = "on"
    database_url: str = Field(
        default="sqlite:///data/store.db", pattern=r"^(sqlite|postgresql)(\+\w+)?://"
    )
    store_migrate: Literal["auto", "on", "off"] = "auto"
    store_queue_size: int = Field(default=10_000, ge=1)
    store_batch_size: int = Field(default=256, ge=1, le=10_000)
    store_retry_s: float = Field(default=2.0, gt=0, le=3600)
    spool_path: Path = Path("data/spool/results.jsonl")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    cache: Literal["auto", "memory", "redis", "off"] = "auto"
    cache_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    cache_key_prefix: str = Field(default="dfd:result:", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    record_inputs: str = Field(default="off", pattern=r"^(off|all|sample:(0?\.\d+|0|1(\.0*)?))$")
    record_dir: Path = Path("data/recordings")
    retention_days: float | None = Field(default=None, gt=0)
    jobs_dir: Path = Path("data/jobs")
    job_workers: int = Field(default=1, ge=1, le=64)
    job_max_attempts: int = Field(default=3, ge=1, le=100)

    @property
    def effective_cache(self) -> Literal["memory", "redis", "off"]:
        """auto: Redis (shared by replicas) when DFD_REDIS_URL is set, else memory."""
        if self.cache == "auto":
            return "redis" if self.redis_url else "memory"
        return self.cache

    @property
    def migrate_on_start(self) -> bool:
        """auto: migrate at start in development; production runs ``python -m src.store
        migrate`` as a deployment step and refuses to start on an older schema."""
        return self.store_migrate == "on" or (
            self.store_migrate == "auto" and self.env == "development"
        )

    # Monitoring and tracing (src/monitoring): drift against the checkpoint's reference
    # statistics; tracing is configured by the standard OTEL_* variables (off by default).
    drift_enabled: bool = True
    drift_window: int = Field(default=1000, ge=10, le=1_000_000)
    drift_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    drift_min_samples: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _drift_window_holds_min_samples(self) -> Settings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"DFD_DRIFT_MIN_SAMPLES ({self.drift_min_samples}) is larger than DFD_DRIFT_WINDOW "
                f"({self.drift_window}): no PSI would ever be computed"
            )
        return self

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
        configured_keys = bool(self.api_keys or self.admin_api_keys or self.keys_file)
        if self.env == "production":
            if not configured_keys:
                raise ValueError(
                    "production needs DFD_API_KEYS (or MODEL_API_KEY), DFD_ADMIN_API_KEYS or "
                    "DFD_KEYS_FILE"
                )
            for index, key in enumerate([*self.api_keys, *self.admin_api_keys]):
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
        elif not configured_keys:
            self.api_keys = [DEFAULT_DEV_API_KEY]
        self._use_repository()
        if not self.checkpoint_path.is_file():
            raise ValueError(
                f"checkpoint not found: {self.checkpoint_path} (set DFD_CHECKPOINT_PATH)"
            )
        if self.cache == "redis" and not self.redis_url:
            raise ValueError("DFD_CACHE=redis needs DFD_REDIS_URL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("set both DFD_SSL_CERTFILE and DFD_SSL_KEYFILE, or neither")
        for tls_file in (self.ssl_certfile, self.ssl_keyfile):
            if tls_file is not None and not tls_file.is_file():
                raise ValueError(f"TLS file not found: {tls_file}")
        resolve_device(self.device)
        return self

    def _use_repository(self) -> None:
        """With DFD_MODEL_REPOSITORY, serve the checkpoint it holds for model_name."""
        if "checkpoint_path" in self.model_fields_set:
            if "model_repository" in self.model_fields_set and self.model_repository is not None:
                raise ValueError("set DFD_MODEL_REPOSITORY or DFD_CHECKPOINT_PATH, not both")
            self.model_repository = None  # the one checkpoint is a one-model repository
        if self.model_repository is None:
            if self.model_version is not None:
                raise ValueError("DFD_MODEL_VERSION needs DFD_MODEL_REPOSITORY")
            return
        if not self.model_repository.is_dir():
            raise ValueError(f"model repository not found: {self.model_repository}")
        self.checkpoint_path = repository_checkpoint(
            self.model_repository, self.model_name, self.model_version
        )

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
    def effective_video_default_frames(self) -> int:
        """Frames a video request samples unless it says: at most ``video_max_frames``."""
        return min(self.video_default_frames, self.video_max_frames)

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
