"""``GET /monitoring/drift``: how the last images compare with the model's validation data.

An admin route: the histograms describe everyone's inputs. The comparison is made afresh on a
worker thread for each call (milliseconds; the windows are copied on the loop), the same one the
periodic task makes for ``dfd_drift_psi``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from src.core.errors import NotFoundError
from src.monitoring.drift import DRIFT_THRESHOLD, DriftMonitor, DriftReport, FeatureDrift
from src.monitoring.features import DESCRIPTIONS
from src.serve.deps import AdminCallerDep
from src.serve.routes.openapi import error_responses

router = APIRouter(prefix="/monitoring", tags=["monitoring"])


class FeatureDriftOut(BaseModel):
    description: str
    samples: int = Field(description="values of this feature in the window")
    mean: float | None
    psi: float | None = Field(
        description="population stability index against the reference; null until the window "
        "holds min_samples values, or without a reference"
    )
    ks: float | None = Field(description="Kolmogorov-Smirnov statistic against the reference")
    edges: list[float] | None = Field(
        description="the reference's inner bin edges: bins (-inf, e0), [e0, e1), ..., [e_last, inf)"
    )
    reference: list[float] | None = Field(description="share of the reference in each bin")
    current: list[float] | None = Field(description="share of the window in each bin")

    @classmethod
    def of(cls, name: str, drift: FeatureDrift) -> FeatureDriftOut:
        return cls(description=DESCRIPTIONS.get(name, name), **vars(drift))


class ReferenceOut(BaseModel):
    split: str
    data: str | None
    n: int
    created_at: str


class ModelDriftOut(BaseModel):
    model_version: str
    window_size: int = Field(description="the most images the window holds")
    samples: int = Field(description="images in the window now")
    computed_at: str
    reference: ReferenceOut | None = Field(
        description="the checkpoint's reference statistics; null: none stored, no PSI"
    )
    drifted: list[str] = Field(description="features whose PSI is above psi_threshold")
    features: dict[str, FeatureDriftOut]

    @classmethod
    def of(cls, report: DriftReport) -> ModelDriftOut:
        reference = report.reference
        return cls(
            model_version=report.model_version,
            window_size=report.window_size,
            samples=report.samples,
            computed_at=report.computed_at,
            reference=None
            if reference is None
            else ReferenceOut(
                split=reference.split,
                data=reference.data,
                n=reference.n,
                created_at=reference.created_at,
            ),
            drifted=report.drifted,
            features={
                name: FeatureDriftOut.of(name, drift) for name, drift in report.features.items()
            },
        )


class DriftResponse(BaseModel):
    interval_s: float = Field(description="how often dfd_drift_psi is recomputed")
    min_samples: int
    psi_threshold: float
    models: list[ModelDriftOut]


@router.get("/drift", response_model=DriftResponse, responses=error_responses(401, 403, 404))
async def drift(request: Request, caller: AdminCallerDep) -> DriftResponse:
    """Per model version: the window's size, and per feature the PSI, the KS statistic, and the
    reference and current histograms over the same bins."""
    monitor: DriftMonitor | None = request.app.state.drift
    if monitor is None:
        raise NotFoundError("drift monitoring is off (DFD_DRIFT_ENABLED=false)")
    reports = await monitor.refresh()
    return DriftResponse(
        interval_s=monitor.interval_s,
        min_samples=monitor.min_samples,
        psi_threshold=DRIFT_THRESHOLD,
        models=[ModelDriftOut.of(report) for report in reports],
    )
