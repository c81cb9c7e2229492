"""Admission counts work in images, refuses what does not fit, and drains."""

from __future__ import annotations

import time

import pytest

from src.core.errors import OverloadedError, ServiceUnavailableError, TooMuchWorkError
from src.engine.admission import Admission
from src.serve.metrics import Metrics

pytestmark = pytest.mark.anyio


async def test_a_request_of_many_images_takes_as_many_places() -> None:
    admission = Admission(capacity=64, events=Metrics(), retry_after_s=2)
    admission.open()
    with admission.admit(32):
        assert admission.pending == 32
        with admission.admit(32):
            assert admission.pending == 64
            with pytest.raises(OverloadedError) as full, admission.admit(1):
                pass
            assert full.value.retry_after_s == 2
        with pytest.raises(OverloadedError), admission.admit(33):
            pass
    assert admission.pending == 0


async def test_more_images_than_the_whole_capacity_is_an_input_error() -> None:
    admission = Admission(capacity=8, events=Metrics())
    admission.open()
    with pytest.raises(TooMuchWorkError, match="at most 8"), admission.admit(9):
        pass
    assert admission.pending == 0


async def test_refusals_are_counted_and_readiness_reported() -> None:
    metrics = Metrics()
    admission = Admission(capacity=1, events=metrics)
    admission.open()
    assert metrics.ready._value.get() == 1
    with admission.admit(), pytest.raises(OverloadedError), admission.admit():
        pass
    assert metrics.rejections.labels(reason="queue_full")._value.get() == 1
    admission.begin_drain()
    assert metrics.ready._value.get() == 0


async def test_drain_refuses_late_work_and_waits_for_admitted_work() -> None:
    admission = Admission(capacity=4, events=Metrics())
    assert not admission.accepts(), "accepting before open"
    admission.open()
    before = time.perf_counter()
    with admission.admit(2, arrived_at=before):
        admission.begin_drain()
        assert not admission.ready
        assert not await admission.wait_idle(0.01)
        with admission.admit(1, arrived_at=before):
            pass
        with pytest.raises(ServiceUnavailableError), admission.admit(1):
            pass
    assert await admission.wait_idle(0.01)
