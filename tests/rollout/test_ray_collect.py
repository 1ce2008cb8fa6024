"""Sharded collection on a local Ray instance: the same output as the local collector, a worker killed mid-run
(its rollouts go to the other worker) and the driver killed mid-run (then `--resume`): every (task, repeat)
exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_core.client import close_client
from gym_core.launcher import Stack
from rollout.collect import failures_path
from rollout.metrics import metrics_path
from rollout.ray_collect import collect_on_ray
from tests.ray_cluster import local_ray

HERE = Path(__file__).parent


def row(**fields: object) -> dict:
    return {"responses_create_params": {"input": "hi"}, **fields}


def keys(path: Path) -> Counter:
    rows = map(json.loads, path.read_text().splitlines())
    return Counter((r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with local_ray() as address:
        yield address


async def test_sharded_collection_writes_the_one_output(ray_address: str, stack: Stack, tmp_path: Path) -> None:
    rows = [row(reward_value=float(i % 2)) for i in range(20)] + [row(behaviour="error")]
    output = tmp_path / "out.jsonl"
    try:
        summary = await collect_on_ray(stack.url("fake"), rows, output, workers=2, agent_name="fake", num_repeats=3,
                                       concurrency=8, timeout=30, progress=False)
    finally:
        await close_client()
    assert (summary.count, summary.failures, summary.mean_reward, summary.workers_lost) == (60, 3, 0.5, 0)
    assert keys(output) == Counter({(t, k): 1 for t in range(20) for k in range(3)})
    assert len(failures_path(output).read_text().splitlines()) == 3
    (entry,) = json.loads(metrics_path(output).read_text())
    assert entry["agent_metrics"]["count"] == 60 and entry["key_metrics"]["pass@3/reward"] == 0.5


async def test_a_worker_killed_mid_run_loses_nothing(ray_address: str, stack: Stack, tmp_path: Path) -> None:
    import ray

    rows = [row(delay=0.1) for _ in range(60)]
    output = tmp_path / "out.jsonl"

    async def kill_a_worker() -> None:
        while not output.exists() or len(output.read_text().splitlines()) < 10:
            await asyncio.sleep(0.05)
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith(f"gym-collector-{os.getpid()}-"))
        pid = await ray.get_actor(name, namespace=ray.get_runtime_context().namespace).pid.remote()
        os.kill(pid, signal.SIGKILL)

    killer = asyncio.create_task(kill_a_worker())
    try:
        summary = await collect_on_ray(stack.url("fake"), rows, output, workers=2, agent_name="fake", num_repeats=2,
                                       concurrency=8, timeout=30, progress=False)
    finally:
        await close_client()
    await asyncio.wait_for(killer, 10)
    assert summary.workers_lost == 1 and (summary.count, summary.failures) == (120, 0)
    assert keys(output) == Counter({(t, k): 1 for t in range(60) for k in range(2)})


@pytest.mark.timeout(240)
def test_driver_killed_mid_run_then_resume_runs_each_rollout_once(ray_address: str, stack: Stack,
                                                                  tmp_path: Path) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(row(delay=0.1, reward_value=1.0)) + "\n" for _ in range(80)))
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "gym_core.cli", "rollout", "--agent", stack.url("fake"), "--input", str(data),
               "--output", str(output), "--num-repeats", "2", "--concurrency", "8", "--ray", ray_address,
               "--workers", "2", "--no-progress"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (not output.exists() or len(output.read_text().splitlines()) < 20) and time.monotonic() < deadline:
            assert driver.poll() is None, driver.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    partial = keys(output)
    assert 20 <= sum(partial.values()) < 160 and max(partial.values()) == 1
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert keys(output) == Counter({(t, k): 1 for t in range(80) for k in range(2)})
    assert f"resumed={sum(partial.values())}" in resumed.stdout
