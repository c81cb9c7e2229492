"""``python -m bench.containers``: both images get the same settings, take turns, and the report
gives per-round figures, medians and the ratio."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import containers
from bench.containers import (
    container_env,
    image_label,
    medians_table,
    parse_args,
    podman_command,
    round_order,
    rounds_table,
    summarise,
    verdicts,
)


def test_images_alternate_first_place() -> None:
    images = ["localhost/dfd-api:cpu", "localhost/dfd-api:cuda"]
    orders = [[image_label(i) for i in round_order(images, n)] for n in range(4)]
    assert orders == [["cpu", "cuda"], ["cuda", "cpu"], ["cpu", "cuda"], ["cuda", "cpu"]]
    assert image_label("dfd-api") == "dfd-api"


def test_every_image_runs_with_the_same_backend_cache_off_and_cpu_limit() -> None:
    args = parse_args(["--cpus", "1.5", "--server-env", "DFD_STORE=off"])
    assert args.images == ["localhost/dfd-api:cpu", "localhost/dfd-api:cuda"]
    assert args.concurrency == [32]
    env = container_env(args, 8123, "off")
    assert env["DFD_BACKEND"] == "onnxruntime" and env["DFD_DEVICE"] == "cpu"
    assert env["DFD_CACHE"] == "off"
    assert env["DFD_FACE_CROP"] == "off"
    assert env["DFD_TORCH_THREADS"] == "2"  # ceil(1.5)
    assert env["DFD_STORE"] == "off"
    commands = [
        podman_command("podman", image, "name", env, args.cpus)
        for image in ("localhost/dfd-api:cpu", "localhost/dfd-api:cuda")
    ]
    assert commands[0][:-1] == commands[1][:-1], "only the image differs"
    assert "--cpus=1.5" in commands[0] and "--read-only" in commands[0]
    assert "DFD_PORT=8123" in commands[0]
    with pytest.raises(SystemExit):
        container_env(parse_args(["--server-env", "NOT_DFD=1"]), 1, "off")


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--images", "a:cpu"])
    with pytest.raises(SystemExit):
        parse_args(["--workloads", "frames,videos"])
    assert parse_args(["--workloads", "faces", "--concurrency", "1,32"]).concurrency == [1, 32]


def level(rps: float, p50: float, load: float = 1.0, statuses: Any = None) -> dict[str, Any]:
    return {
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "server_cpu_ms_per_ok": 10.0,
        "load_avg_1m": load,
        "statuses": statuses or {"200": 300},
    }


def test_medians_ratios_and_per_round_figures() -> None:
    rounds = [
        {"frames": {"cpu": {32: level(60, 500, 2.1)}, "cuda": {32: level(50, 600, 2.3)}}},
        {"frames": {"cpu": {32: level(40, 700)}, "cuda": {32: level(55, 550)}}},
        {"frames": {"cpu": {32: level(70, 450)}, "cuda": {32: level(52, 590)}}},
    ]
    [row] = summarise(rounds, ["cpu", "cuda"])
    assert (row["cpu_throughput_rps"], row["cuda_throughput_rps"]) == (60, 52)
    assert row["ratio"] == round(60 / 52, 3)
    assert row["round_ratios"] == [1.2, round(40 / 55, 3), round(70 / 52, 3)]
    assert row["cpu_p50_ms"] == 500 and row["cuda_p99_ms"] == 1180
    assert row["load_avg_1m"] == [2.3, 1.0, 1.0]
    assert row["target_met"] is True
    assert row["cpu_non_200"] == 0
    per_round = rounds_table(
        rounds, [["cpu", "cuda"], ["cuda", "cpu"], ["cpu", "cuda"]], ["cpu", "cuda"]
    )
    assert "| 2 (cuda, cpu) | frames | 32 | 40 | 55 | 0.727 |" in per_round
    assert "| 2.1 / 2.3 |" in per_round
    medians = medians_table([row], ["cpu", "cuda"])
    assert "| frames | 32 | 60 | 52 | 1.154 (1.20, 0.73, 1.35) |" in medians
    [verdict] = verdicts([row], ["cpu", "cuda"])
    assert "target >= 1: met" in verdict
    assert "cpu at least as fast in 2 of 3 rounds: 1.20, 0.73, 1.35" in verdict


def test_a_slower_first_image_misses_the_target_and_errors_are_counted() -> None:
    rounds = [
        {
            "faces": {
                "cpu": {32: level(40, 800, statuses={"200": 290, "422": 10})},
                "cuda": {32: level(50, 600)},
            }
        },
    ]
    [row] = summarise(rounds, ["cpu", "cuda"])
    assert row["ratio"] == 0.8 and row["target_met"] is False
    assert row["cpu_non_200"] == 10 and row["cuda_non_200"] == 0
    assert "NOT met; cpu at least as fast in 0 of 1 rounds" in verdicts([row], ["cpu", "cuda"])[0]


@pytest.mark.parametrize("together", [False, True])
def test_rounds_start_the_images_in_turn_or_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, together: bool
) -> None:
    """The round loop: interleaved, one image per start, the order reversed every other round;
    with --together both images in one start per workload; then the tables and the JSON."""
    calls: list[tuple[list[str], str, int]] = []

    def fake_run_images(
        images: list[str], workload: str, args: Any, frames: Any, index: int
    ) -> dict[str, dict[int, dict[str, Any]]]:
        calls.append(([image_label(i) for i in images], workload, index))
        rps = {"cpu": 40.0, "cuda": 50.0}
        return {image_label(i): {32: level(rps[image_label(i)], 500)} for i in images}

    monkeypatch.setattr(containers, "run_images", fake_run_images)
    monkeypatch.setattr(
        containers.subprocess,
        "run",
        lambda *a, **k: containers.subprocess.CompletedProcess(a, 0),
    )
    monkeypatch.setattr(containers, "stop_on_signals", lambda: None)
    argv = ["--rounds", "2", "--workloads", "frames", "--out", str(tmp_path)]
    assert containers.main(argv + (["--together"] if together else [])) == 0
    if together:
        assert calls == [(["cpu", "cuda"], "frames", 0), (["cuda", "cpu"], "frames", 1)]
    else:
        assert calls == [
            (["cpu"], "frames", 0),
            (["cuda"], "frames", 0),
            (["cuda"], "frames", 1),
            (["cpu"], "frames", 1),
        ]
    saved = json.loads((tmp_path / "containers.json").read_text())
    assert saved["medians"][0]["ratio"] == 0.8
    assert saved["settings"]["DFD_CACHE"] == "off" and saved["settings"]["together"] is together
    table = (tmp_path / "containers.md").read_text()
    assert ("cpu + cuda at once" in table) is together
    assert "target >= 1: NOT met" in table


def test_stop_all_tries_every_server_before_raising() -> None:
    stopped: list[str] = []

    class Server:
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        def stop(self) -> None:
            stopped.append(self.name)
            if self.fail:
                raise SystemExit(143)  # a signal while stopping

    with pytest.raises(SystemExit):
        containers.stop_all([Server("a", True), Server("b", False)])  # type: ignore[list-item]
    assert stopped == ["a", "b"]
