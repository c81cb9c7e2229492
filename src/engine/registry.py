"""Which loaded version of a model answers a request: traffic weights (canary / A-B), sticky per
API key or per request, a pinned version, a shadow, and the history that rollback walks back.

The registry holds loaded :class:`InferenceService` objects and routing state only; loading,
persisting and HTTP live in ``src/serve/models_admin.py``. Every change replaces the routing in
one assignment on the event loop, so a request sees the old setting or the new, never half.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from src.core.errors import ConflictError, InvalidParameterError, NotFoundError
from src.core.settings import version_order
from src.engine.service import InferenceService

HISTORY_LENGTH = 20
BUCKETS = 10_000  # routing resolution: 0.01 % of the traffic


@dataclass(frozen=True)
class Shadow:
    version: str
    sample: float  # share of requests (0..1] also scored by the shadow version


@dataclass(frozen=True)
class Routing:
    """One model's routing setting; ``revision`` grows with every change (replicas compare it)."""

    traffic: dict[str, int]
    shadow: Shadow | None = None
    history: tuple[dict[str, int], ...] = ()
    revision: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "traffic": dict(self.traffic),
            "shadow": None
            if self.shadow is None
            else {"version": self.shadow.version, "sample": self.shadow.sample},
            "history": [dict(entry) for entry in self.history],
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, object]) -> Routing:
        traffic = _weights(value.get("traffic"))
        shadow_value = value.get("shadow")
        shadow = None
        if isinstance(shadow_value, Mapping):
            shadow = Shadow(str(shadow_value["version"]), float(shadow_value["sample"]))
        history_value = value.get("history")
        entries = history_value if isinstance(history_value, list) else []
        history = tuple(_weights(entry) for entry in entries if isinstance(entry, Mapping))
        revision = value.get("revision", 0)
        return cls(traffic, shadow, history, int(revision) if isinstance(revision, int) else 0)


def _weights(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(version): int(weight) for version, weight in value.items()}


@dataclass
class ModelRegistry:
    """The loaded versions of one model and how traffic is split between them."""

    name: str
    sticky: bool = True
    loaded: dict[str, InferenceService] = field(default_factory=dict)
    routing: Routing = field(default_factory=lambda: Routing({}))
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    # --------------------------------------------------------------- routing
    def route(self, caller_key: str | None, pinned: str | None = None) -> InferenceService:
        """The version that answers: ``pinned`` when the client asks for a loaded one, else a
        draw by weight, the same draw for the same key while the weights stay (sticky)."""
        if pinned is not None:
            service = self.loaded.get(pinned)
            if service is None:
                raise NotFoundError(f"model {self.name!r} has no version {pinned!r} loaded")
            return service
        traffic = self.routing.traffic
        if len(traffic) == 1:
            return self.loaded[next(iter(traffic))]
        if self.sticky and caller_key is not None:
            digest = hashlib.blake2b(f"{self.name}\0{caller_key}".encode(), digest_size=8)
            bucket = int.from_bytes(digest.digest(), "big") % BUCKETS
        else:
            bucket = self._rng.randrange(BUCKETS)
        return self.loaded[pick(traffic, bucket)]

    def shadow_for(self, answered: str) -> InferenceService | None:
        """The shadow version to score this request aside, when one is drawn for it."""
        shadow = self.routing.shadow
        if shadow is None or shadow.version == answered:
            return None
        service = self.loaded.get(shadow.version)
        if service is None or self._rng.random() >= shadow.sample:
            return None
        return service

    # ------------------------------------------------------------- changes
    def check_traffic(self, weights: Mapping[str, int]) -> dict[str, int]:
        """Weights in percent over loaded versions, summing to 100 (zero weights dropped)."""
        if not weights:
            raise InvalidParameterError("traffic names no version")
        for version, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise InvalidParameterError(
                    f"the weight of {version!r} must be an integer from 0 to 100"
                )
            if version not in self.loaded:
                raise InvalidParameterError(
                    f"version {version!r} of {self.name!r} is not loaded "
                    f"(POST /models/{self.name}/versions/{version}/load first)"
                )
        if sum(weights.values()) != 100:
            raise InvalidParameterError(f"traffic weights sum to {sum(weights.values())}, not 100")
        kept = {version: weight for version, weight in weights.items() if weight > 0}
        return dict(sorted(kept.items(), key=lambda item: version_order(item[0])))

    def with_traffic(self, weights: Mapping[str, int]) -> Routing:
        """The routing after ``weights`` (checked), the current traffic pushed on the history."""
        traffic = self.check_traffic(weights)
        history = (*self.routing.history, dict(self.routing.traffic))[-HISTORY_LENGTH:]
        return Routing(traffic, self.routing.shadow, history, self.routing.revision + 1)

    def rolled_back(self) -> Routing:
        """The routing before the last traffic change (its versions must still be loaded)."""
        if not self.routing.history:
            raise ConflictError(f"model {self.name!r} has no earlier traffic setting")
        previous = self.routing.history[-1]
        missing = [version for version in previous if version not in self.loaded]
        if missing:
            raise ConflictError(
                f"the earlier traffic setting {previous} needs versions that are not loaded: "
                f"{', '.join(missing)} (load them first)"
            )
        return Routing(
            dict(previous),
            self.routing.shadow,
            self.routing.history[:-1],
            self.routing.revision + 1,
        )

    def with_shadow(self, version: str | None, sample: float) -> Routing:
        if version is not None:
            if version not in self.loaded:
                raise InvalidParameterError(f"version {version!r} of {self.name!r} is not loaded")
            if not 0 < sample <= 1:
                raise InvalidParameterError("sample must be a share in (0, 1]")
        shadow = None if version is None else Shadow(version, sample)
        r = self.routing
        return Routing(dict(r.traffic), shadow, r.history, r.revision + 1)

    def check_unload(self, version: str) -> None:
        if version not in self.loaded:
            raise ConflictError(f"version {version!r} of {self.name!r} is not loaded")
        if len(self.loaded) == 1:
            raise ConflictError(f"version {version!r} is the only loaded version of {self.name!r}")
        if self.routing.traffic.get(version, 0) > 0:
            raise ConflictError(
                f"version {version!r} takes {self.routing.traffic[version]} % of the traffic: "
                f"move it to other versions first (PUT /models/{self.name}/traffic)"
            )

    def without(self, version: str) -> Routing:
        """The routing once ``version`` is unloaded: no shadow on it (traffic has none)."""
        r = self.routing
        shadow = None if r.shadow is not None and r.shadow.version == version else r.shadow
        return Routing(dict(r.traffic), shadow, r.history, r.revision + (shadow != r.shadow))


def pick(traffic: Mapping[str, int], bucket: int) -> str:
    """The version whose share of ``BUCKETS`` holds ``bucket`` (versions in their given order)."""
    edge = 0
    last = ""
    for version, weight in traffic.items():
        edge += weight * BUCKETS // 100
        last = version
        if bucket < edge:
            return version
    return last
