"""`engine: vllm`: the policy server starts `vllm serve <model>` itself and proxies to it like `engine: openai`.

The flags are the ones Nemotron 3 Nano is served with (shared/nemotron_h.md section 5.3: tool-call parser
`qwen3_coder`, reasoning parser `nemotron_v3`, float32 Mamba SSM cache, the recipe's context length), each a
config key; `extra_args` adds any other. vLLM listens on a free loopback port; its output goes, line by line
with a `[vllm]` prefix, where the policy server's own log goes (the launcher's log of this server). `start`
waits for its `/health` within `start_timeout_s` (raise `gym up --start-timeout` to match: loading a 30B model
takes minutes) and fails with vLLM's last log lines if it exits first. vLLM runs in its own process group,
which `close` ends (SIGTERM, then SIGKILL), and it gets SIGTERM if the policy server dies without closing.
`api_key` reaches vLLM through its environment (`VLLM_API_KEY`), never its command line.

`weight_transfer: disk` adds `--weight-transfer-config '{"backend": "disk"}'` and `VLLM_SERVER_DEV_MODE=1`, so
`POST /v1/weights` loads checkpoints (see `vllm_weights`); `logits_processors` names NVIDIA's thinking-budget
processor for `thinking_budget` (see `reasoning`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sys
import time

import httpx
from pydantic import Field

from gym_core.client import get_client
from servers.policy.engines.base import EngineError
from servers.policy.engines.openai import OpenAIEngine, OpenAIEngineConfig

LOG_PREFIX = "[vllm] "
LOG_TAIL_LINES = 40


class VLLMEngineConfig(OpenAIEngineConfig):
    """What to serve and how; every flag is a key (None leaves it to vLLM)."""

    base_url: list[str] = Field(default_factory=list)  # set by `start` to the vLLM it launched
    model: str  # the checkpoint directory or Hugging Face name handed to `vllm serve`; also the served name
    command: list[str] = Field(default_factory=lambda: ["vllm", "serve"])
    trust_remote_code: bool = True
    tool_call_parser: str | None = "qwen3_coder"
    reasoning_parser: str | None = "nemotron_v3"  # built into recent vLLM; older ones: the nano_v3 plugin
    reasoning_parser_plugin: str | None = None
    mamba_ssm_cache_dtype: str | None = "float32"
    max_model_len: int | None = 262144
    weight_transfer: str | None = None  # "disk" for POST /v1/weights with checkpoints
    logits_processors: list[str] = Field(default_factory=list)
    extra_args: list[str] = Field(default_factory=list)
    start_timeout_s: float = Field(900.0, gt=0)
    stop_timeout_s: float = Field(4.0, ge=0)


def vllm_command(config: VLLMEngineConfig, port: int) -> list[str]:
    """The `vllm serve` command line for `config` on `port` (no secrets: the API key goes in the environment)."""
    args = [*config.command, config.model, "--host", "127.0.0.1", "--port", str(port)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    if config.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    if config.reasoning_parser_plugin:
        args += ["--reasoning-parser-plugin", config.reasoning_parser_plugin]
    if config.reasoning_parser:
        args += ["--reasoning-parser", config.reasoning_parser]
    if config.mamba_ssm_cache_dtype:
        args += ["--mamba-ssm-cache-dtype", config.mamba_ssm_cache_dtype]
    if config.max_model_len:
        args += ["--max-model-len", str(config.max_model_len)]
    if config.weight_transfer:
        args += ["--weight-transfer-config", json.dumps({"backend": config.weight_transfer})]
    if config.logits_processors:
        args += ["--logits-processors", *config.logits_processors]
    return args + config.extra_args


class VLLMEngine(OpenAIEngine):
    """An `OpenAIEngine` in front of a vLLM it starts at `start` and stops at `close`."""

    config: VLLMEngineConfig
    config_model = VLLMEngineConfig

    def __init__(self, config: VLLMEngineConfig, model_name: str) -> None:
        super().__init__(config.model_copy(update={"base_url": ["http://127.0.0.1:0/v1"]}), model_name)
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._log_reader: asyncio.Task | None = None

    async def start(self) -> None:
        """Launch vLLM on a free port and return once it answers GET /health."""
        port = _free_port()
        command = vllm_command(self.config, port)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.config.weight_transfer:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.config.api_key is not None:
            env["VLLM_API_KEY"] = self.config.api_key.get_secret_value()
        print(f"{LOG_PREFIX}starting: {' '.join(command)}", flush=True)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        except FileNotFoundError:
            raise EngineError(f"cannot start vLLM: {self.config.command[0]!r} is not on PATH; install it "
                              "(pip install 'gym-rl[vllm]' on a GPU host) or set `command:`", 500) from None
        self._log_reader = asyncio.create_task(self._forward_log())
        root = f"http://127.0.0.1:{port}"
        self._set_upstreams([root + "/v1"])
        try:
            await self._wait_healthy(root)
        except BaseException:
            await self.close()
            raise
        print(f"{LOG_PREFIX}ready at {root} (pid {self.process.pid})", flush=True)

    async def close(self) -> None:
        """Stop vLLM's process group: SIGTERM, then SIGKILL after `stop_timeout_s`."""
        await super().close()
        process, self.process = self.process, None
        if process is not None:
            await _stop_group(process, self.config.stop_timeout_s)
        if self._log_reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._log_reader, timeout=2)
            self._log_reader = None

    async def _wait_healthy(self, root: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        assert self.process is not None
        while True:
            if self.process.returncode is not None:
                raise EngineError(f"vLLM exited with code {self.process.returncode} while starting; its last "
                                  f"log lines:\n{self._tail()}", 500)
            with contextlib.suppress(httpx.HTTPError):
                if (await get_client().get(root, "/health", timeout=2.0)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise EngineError(f"vLLM did not answer GET /health within {self.config.start_timeout_s:g} s "
                                  f"(raise start_timeout_s, and gym up --start-timeout with it); its last log "
                                  f"lines:\n{self._tail()}", 500)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout=0.5)

    async def _forward_log(self) -> None:
        """vLLM's output, line by line with a prefix, to this server's stdout; the last lines kept for errors."""
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._log_tail.append(line)
            sys.stdout.write(f"{LOG_PREFIX}{line}\n")
            sys.stdout.flush()

    def _tail(self) -> str:
        return "\n".join(f"    {line}" for line in self._log_tail) or "    (no output)"


def _free_port() -> int:
    """A loopback port free now (vLLM binds it itself a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the policy server dies (Linux), so no vLLM outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def _stop_group(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace_s`, reap the leader; anything it started goes too."""
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=grace_s)
        except TimeoutError:
            pass
    _signal_group(process.pid, signal.SIGKILL)  # workers vLLM left behind, or a leader that ignored SIGTERM
    await process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

