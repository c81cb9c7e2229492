"""Async jobs: run to done or failed, never run twice, resumed or failed after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from src.core.errors import InvalidVideoError, OverloadedError
from src.store.jobs import JobRunner, JobView
from src.store.models import JobRow

pytestmark = pytest.mark.anyio


async def wait_status(runner: JobRunner, job_id: str, *statuses: str) -> JobView:
    for _ in range(500):
        job = await runner.get(job_id, None)
        assert job is not None
        if job.status in statuses:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}")


async def read_size(path: Path, params: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": len(path.read_bytes()), "echo": params}


@pytest.fixture
async def runner(sessions: sessionmaker[Session], tmp_path: Path) -> AsyncIterator[JobRunner]:
    runner = JobRunner(sessions, tmp_path / "jobs", poll_s=0.1, owner="replica-a")
    runner.register("size", read_size)
    await runner.start()
    yield runner
    await runner.stop()


async def test_a_job_runs_to_done_and_its_input_is_removed(runner: JobRunner) -> None:
    job = await runner.submit("size", b"12345", {"frames": 8}, key_id="key-a")
    assert job.status == "queued"
    assert (runner.jobs_dir / f"{job.id}.input").is_file()
    done = await wait_status(runner, job.id, "done")
    assert done.result == {"bytes": 5, "echo": {"frames": 8}}
    assert done.attempts == 1 and done.error is None
    assert not (runner.jobs_dir / f"{job.id}.input").exists()


async def test_a_job_is_someone_elses_404(runner: JobRunner) -> None:
    job = await runner.submit("size", b"x", {}, key_id="key-a")
    assert await runner.get(job.id, "key-b") is None
    assert await runner.get(job.id, "key-a") is not None
    assert await runner.get("nope' OR 1=1 --", None) is None


async def test_a_failing_job_says_why(runner: JobRunner) -> None:
    async def bad_video(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        raise InvalidVideoError("no video stream in the file")

    async def crashes(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    runner.register("bad", bad_video)
    runner.register("crash", crashes)
    bad = await runner.submit("bad", b"x", {}, None)
    crash = await runner.submit("crash", b"x", {}, None)
    failed = await wait_status(runner, bad.id, "failed")
    assert failed.error == "invalid_video: no video stream in the file"
    crashed = await wait_status(runner, crash.id, "failed")
    assert crashed.error == "internal error while running the job"  # no internals leak


async def test_an_unknown_kind_is_refused_before_anything_is_kept(runner: JobRunner) -> None:
    with pytest.raises(ValueError, match="no job function"):
        await runner.submit("nope", b"x", {}, None)
    assert list(runner.jobs_dir.glob("*")) == []


async def test_a_restart_resumes_the_running_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def slow(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(30)
        return {}

    first = JobRunner(sessions, tmp_path / "jobs", poll_s=0.1, owner="replica-a")
    first.register("video", slow)
    await first.start()
    job = await first.submit("video", b"frames", {"n": 1}, None)
    await asyncio.wait_for(started.wait(), 10)
    await first.stop()  # the process ends while the job runs
    assert (await first.get(job.id, None)).status == "running"  # type: ignore[union-attr]

    second = JobRunner(sessions, tmp_path / "jobs", poll_s=0.1, owner="replica-a")
    second.register("video", read_size)
    await second.start()
    try:
        done = await wait_status(second, job.id, "done")
    finally:
        await second.stop()
    assert done.result == {"bytes": 6, "echo": {"n": 1}}
    assert done.attempts == 2


async def test_a_restart_fails_a_job_whose_input_is_gone_or_out_of_attempts(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runner = JobRunner(sessions, tmp_path / "jobs", poll_s=0.1, owner="replica-a", max_attempts=2)
    runner.register("size", read_size)
    lost = await runner.submit("size", b"x", {}, None)
    tired = await runner.submit("size", b"y", {}, None)
    with sessions.begin() as session:  # as a crashed process would have left them
        session.execute(
            update(JobRow)
            .where(JobRow.id.in_([lost.id, tired.id]))
            .values(status="running", owner="replica-a")
        )
        session.execute(update(JobRow).where(JobRow.id == tired.id).values(attempts=2))
    (runner.jobs_dir / f"{lost.id}.input").unlink()
    await runner.start()
    try:
        lost_now = await wait_status(runner, lost.id, "failed")
        tired_now = await wait_status(runner, tired.id, "failed")
    finally:
        await runner.stop()
    assert lost_now.error == "the job's input was lost when the service restarted"
    assert tired_now.error == "the service restarted during each of 2 attempts"
    assert not (runner.jobs_dir / f"{tired.id}.input").exists()


async def test_another_replicas_stale_job_is_taken_over(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runner = JobRunner(
        sessions, tmp_path / "jobs", poll_s=0.1, owner="replica-b", stale_s=0.0, heartbeat_s=0.1
    )
    runner.register("size", read_size)
    running = await runner.submit("size", b"abc", {}, None)
    queued = await runner.submit("size", b"abcd", {}, None)
    lost = await runner.submit("size", b"x", {}, None)
    with sessions.begin() as session:  # as a replica that died would have left them
        for job, status in ((running, "running"), (queued, "queued"), (lost, "queued")):
            session.execute(
                update(JobRow).where(JobRow.id == job.id).values(status=status, owner="dead-one")
            )
    (runner.jobs_dir / f"{lost.id}.input").unlink()  # it was on the dead replica's disk
    await runner.start()
    try:
        done = await wait_status(runner, running.id, "done")
        adopted = await wait_status(runner, queued.id, "done")
        failed = await wait_status(runner, lost.id, "failed")
    finally:
        await runner.stop()
    assert done.result == {"bytes": 3, "echo": {}}
    assert adopted.result == {"bytes": 4, "echo": {}}
    assert failed.error == "the replica that kept the job's input is gone"


async def test_a_live_replicas_jobs_are_left_alone(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    holder = JobRunner(sessions, tmp_path / "a", poll_s=0.1, owner="a", heartbeat_s=0.05)
    holder.register("size", read_size)
    other = JobRunner(sessions, tmp_path / "b", owner="b", stale_s=5.0)
    job = await holder.submit("size", b"abc", {}, None)  # queued on a, not started yet
    assert other.recover(own_only=False) == 0
    assert (await other.get(job.id, None)).status == "queued"  # type: ignore[union-attr]


async def test_two_runners_never_run_the_same_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runs: list[str] = []

    async def count_runs(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        runs.append(params["n"])
        await asyncio.sleep(0.01)
        return {}

    runners = [
        JobRunner(sessions, tmp_path / "jobs", poll_s=0.05, owner=f"r{i}", workers=2)
        for i in range(2)
    ]
    for r in runners:
        r.register("count", count_runs)
    jobs = [await runners[0].submit("count", b"x", {"n": str(i)}, None) for i in range(12)]
    for r in runners:
        await r.start()
    try:
        for job in jobs:
            await wait_status(runners[1], job.id, "done")
    finally:
        for r in runners:
            await r.stop()
    assert sorted(runs) == sorted(str(i) for i in range(12))


async def test_a_full_service_delays_a_job_without_failing_it(runner: JobRunner) -> None:
    calls = 0

    async def busy_once(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OverloadedError("full", retry_after_s=0.05)
        return {"calls": calls}

    runner.register("busy", busy_once)
    job = await runner.submit("busy", b"x", {}, None)
    done = await wait_status(runner, job.id, "done")
    assert done.result == {"calls": 2}
    assert done.attempts == 1  # being put off is not an attempt
