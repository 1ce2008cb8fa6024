"""The `ray` launcher backend on a local Ray instance: servers placed as processes started by Ray actors, with
their resources and node labels, registered at their node's address; `gym status` / `gym down` as usual."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gym_core.auth import find_token
from gym_core.config import ConfigError, load_config
from gym_core.launcher import launch
from gym_core.ray_launcher import Placement, RayLaunchError, launcher_settings, placed_block
from tests.processes import gone
from tests.ray_cluster import local_ray

ROLLOUT_TESTS = Path(__file__).parents[1] / "rollout"
CONFIG = """\
launcher: {{backend: ray, address: "{address}"}}
servers:
  fake: {{kind: agent, entrypoint: "fake_agent:FakeAgentForTests", num_cpus: 1, node_labels: {{gym-test: "yes"}}}}
  counter: {{kind: resources, env: counter, num_cpus: 0.5}}
"""


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        # The fake agent is imported by its server process: Ray's workers (and so the servers) inherit this path.
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROLLOUT_TESTS), os.environ.get("PYTHONPATH", "")]))
        with local_ray(**{"gym-test": "yes"}) as address:
            yield address


def test_settings_and_blocks() -> None:
    config = load_config({"launcher": {"backend": "ray", "address": "auto"}, "servers": {"c": {"kind": "agent",
                                                                                            "entrypoint": "x:Y"}}})
    assert launcher_settings(config).address == "auto"
    plain = load_config({"servers": {"c": {"kind": "agent", "entrypoint": "x:Y"}}})
    assert launcher_settings(plain).backend == "local" and launcher_settings(plain, "h:1").backend == "ray"
    with pytest.raises(ConfigError, match="launcher: backend"):
        launcher_settings(load_config({"launcher": {"backend": "slurm"}, "servers": {"c": {"kind": "agent",
                                                                                         "entrypoint": "x:Y"}}}))
    block = {"kind": "policy", "num_gpus": 1, "node_labels": {"gpu": "h100"}, "engine": "native"}
    assert placed_block(block) == {"kind": "policy", "engine": "native", "auth": "required"}
    options = Placement.model_validate(block).actor_options("policy")
    assert (options["num_gpus"], options["num_cpus"], options["label_selector"]) == (1, 0, {"gpu": "h100"})


@pytest.mark.timeout(180)
def test_gym_up_on_ray_status_rollout_down(ray_address: str, tmp_path: Path) -> None:
    import ray

    config = tmp_path / "gym.yaml"
    config.write_text(CONFIG.format(address=ray_address))
    up = subprocess.Popen([sys.executable, "-m", "gym_core.cli", "up", str(config), "--registry-port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        registry = ""
        deadline = time.monotonic() + 120
        while not registry and time.monotonic() < deadline and up.poll() is None:
            line = up.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("registry: "):
                registry = line.split()[1]
        assert registry, f"gym up did not start: {up.poll()} {up.stderr.read() if up.poll() is not None else ''}"
        local_registry = "http://127.0.0.1:" + registry.rsplit(":", 1)[1]
        # Placed servers listen beyond loopback, so the whole stack needs its token (kept in gym up's 0600 file).
        auth = {"authorization": f"Bearer {find_token(registry)}"}
        assert httpx.get(f"{local_registry}/servers").status_code == 401
        servers = {s["name"]: s for s in httpx.get(f"{local_registry}/servers", headers=auth).json()}
        node_ip = ray.util.get_node_ip_address()
        assert set(servers) == {"fake", "counter"}
        assert all(s["url"].startswith(f"http://{node_ip}:") for s in servers.values())  # bound to the node
        pids = [s["pid"] for s in servers.values()]
        assert os.getpid() not in pids and up.pid not in pids
        # Each server runs under its own actor, which holds the resources its block asked for.
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "gym-server-" in str(a)]
        assert len(actors) == 2
        deadline = time.monotonic() + 30  # the resource view the driver sees lags placement a little
        while ray.available_resources().get("CPU", 0) != pytest.approx(0.5) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == pytest.approx(0.5)  # 2 CPUs - 1 (fake) - 0.5 (counter)
        status = subprocess.run([sys.executable, "-m", "gym_core.cli", "status", "--registry", registry],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.count(" ok") == 2, status.stdout
        row = {"responses_create_params": {"input": "x"}}
        assert httpx.post(f"{servers['fake']['url']}/run", json=row, timeout=30).status_code == 401
        reply = httpx.post(f"{servers['fake']['url']}/run", json=row, headers=auth, timeout=30)
        assert reply.json()["reward"] == 1.0
        down = subprocess.run([sys.executable, "-m", "gym_core.cli", "down", "--registry", registry],
                              capture_output=True, text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in pids)


@pytest.mark.timeout(120)
def test_a_server_ray_cannot_place_is_a_clear_error(ray_address: str) -> None:
    config = {"launcher": {"backend": "ray", "address": ray_address},
              "servers": {"counter": {"kind": "resources", "env": "counter", "node_labels": {"gym-test": "no"}}}}
    with pytest.raises(RayLaunchError, match=r"could not place counter .*label_selector"):
        with launch(load_config(config), start_timeout=8):
            pass
    import ray

    assert ray.is_initialized()  # a Ray the launcher joined is left running
    assert json.dumps(ray.available_resources())  # and still answers


@pytest.mark.timeout(180)
def test_a_placed_server_that_dies_is_restarted_by_a_new_actor(ray_address: str) -> None:
    import ray

    config = {"launcher": {"backend": "ray", "address": ray_address},
              "servers": {"counter": {"kind": "resources", "env": "counter", "num_cpus": 0.5,
                                      "restart": {"backoff_s": 0.1, "max_backoff_s": 0.2}}}}
    with launch(load_config(config), echo_logs=False) as stack:
        auth = stack.auth.headers()
        first_pid, first_url = stack.servers["counter"].pid, stack.url("counter")
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while not (stack.servers["counter"].restarts == 1 and stack.servers["counter"].url != first_url):
            assert time.monotonic() < deadline, "the placed server was not restarted"
            assert stack.failed is None, stack.failure
            time.sleep(0.1)
        info = httpx.get(f"{stack.registry_url}/servers/counter", headers=auth).json()
        assert info["restarts"] == 1 and info["pid"] == stack.servers["counter"].pid != first_pid
        assert httpx.get(f"{info['url']}/health").status_code == 200
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "gym-server-counter" in str(a)]
        assert len(actors) == 1  # the dead server's actor was ended, the new one holds its resources
        pids = [first_pid, info["pid"]]
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in pids)
