"""New weights for a vLLM upstream, through vLLM's own weight-transfer control plane over HTTP.

vLLM serves the control plane when started with `VLLM_SERVER_DEV_MODE=1` and `--weight-transfer-config`
(docs: "Weight Transfer"; routes in vllm/entrypoints/serve/dev/rlhf/api_router.py): `POST
/init_weight_transfer_engine` once, then per update `/start_weight_update`, `/update_weights` (one or more
times) and `/finish_weight_update` with the new `weight_version`. A checkpoint on disk travels through the
shared-disk backend (`{"backend": "disk"}`: `update_info` is `{"path": <absolute directory of safetensors
files>}`), so the vLLM workers must see the path. Generation is paused with `/pause?mode=keep` around the
update (requests in flight are frozen, not dropped, and resume on `/resume`), so no request mixes weights.

A safetensors file or uploaded bytes are staged as `<staging>/<version>/model.safetensors` (a link to the file,
or the bytes written out), since the backend loads a directory. NCCL and IPC transfers are driven by the
trainer itself (vLLM's `TrainerWeightTransferEngine`), not through a path: point such a trainer at vLLM.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from gym_core.client import get_client
from gym_core.protocol import loads
from servers.policy.engines.base import EngineError, WeightSource

DEV_MODE_HINT = ("start vLLM with VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config '{\"backend\": \"disk\"}' "
                 "(engine: vllm does this with weight_transfer: disk)")


def next_version(version: str) -> str:
    """The version after `version`: the next integer, or `<version>+1` for a caller's own label."""
    return str(int(version) + 1) if version.isdigit() else f"{version}+1"


class VLLMWeightUpdater:
    """Drives the weight-transfer routes of every upstream replica; stages files and bytes for the disk backend."""

    def __init__(self, roots: list[str], headers: dict[str, str], timeout_s: float,
                 staging_dir: str | None = None) -> None:
        self.roots = roots
        self.headers = headers
        self.timeout_s = timeout_s
        self._staging_dir = staging_dir
        self._own_staging: str | None = None  # a temporary directory this updater made and removes
        self._initialized: set[str] = set()
        self._lock = asyncio.Lock()  # one update at a time: vLLM accepts one session per engine

    async def update(self, source: WeightSource, version: str) -> None:
        """Load `source` into every replica as `version`; EngineError names the replica and step that failed."""
        async with self._lock:
            directory, staged = await asyncio.to_thread(self._stage, source, version)
            try:
                await asyncio.gather(*(self._update_one(root, directory, version) for root in self.roots))
            finally:
                if staged:  # loaded into GPU memory by now (or failed): the staged copy is not needed
                    await asyncio.to_thread(shutil.rmtree, directory, True)

    def close(self) -> None:
        """Remove the staging directory this updater created."""
        if self._own_staging is not None:
            shutil.rmtree(self._own_staging, ignore_errors=True)
            self._own_staging = None

    def _stage(self, source: WeightSource, version: str) -> tuple[str, bool]:
        """An absolute directory of safetensors files holding `source`, and whether it was staged here."""
        if source.path is not None:
            path = Path(source.path).expanduser().resolve()
            if path.is_dir():
                return str(path), False
            if not path.is_file():
                raise EngineError(f"weights path {source.path} does not exist (on the policy server's host; vLLM "
                                  "must see it too)", 400, "invalid_request")
        staged = Path(self._staging_root()) / _safe_name(version)
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        target = staged / "model.safetensors"
        if source.path is not None:
            target.symlink_to(Path(source.path).expanduser().resolve())
        else:
            target.write_bytes(source.data or b"")
        return str(staged), True

    def _staging_root(self) -> str:
        if self._staging_dir is not None:
            os.makedirs(self._staging_dir, exist_ok=True)
            return os.path.abspath(self._staging_dir)
        if self._own_staging is None:
            self._own_staging = tempfile.mkdtemp(prefix="gym-weights-")
        return self._own_staging

    async def _update_one(self, root: str, directory: str, version: str) -> None:
        if root not in self._initialized:
            await self._call(root, "/init_weight_transfer_engine", {"init_info": {}})
            self._initialized.add(root)
        await self._call(root, "/pause?mode=keep", None)
        try:
            await self._call(root, "/start_weight_update", {})
            await self._call(root, "/update_weights", {"update_info": {"path": directory}})
            await self._call(root, "/finish_weight_update", {"weight_version": version})
        finally:
            await self._call(root, "/resume", None)

    async def _call(self, root: str, path: str, body: dict[str, Any] | None) -> None:
        try:
            reply = await get_client().post(root, path, body, headers=self.headers, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise EngineError(f"vLLM at {root} did not finish {path} within {self.timeout_s:g} s; raise "
                              "weights_timeout_s for large checkpoints", 504, "upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"vLLM at {root} unreachable for {path}: {exc}", 502, "upstream_unreachable") from None
        if reply.status_code == 404:
            raise EngineError(f"vLLM at {root} has no {path.split('?')[0]} route: {DEV_MODE_HINT}", 501,
                              "not_implemented")
        if reply.status_code >= 400:
            raise EngineError(f"vLLM at {root} answered {reply.status_code} to {path}: {_message(reply)}", 502,
                              "upstream_error")


def _message(reply: httpx.Response) -> str:
    try:
        body = loads(reply.content)
    except ValueError:
        return reply.text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        body = error.get("message", error) if isinstance(error, dict) else error or body.get("detail", body)
    return str(body)[:500]


def _safe_name(version: str) -> str:
    """A directory name for a version label (callers' labels may hold slashes)."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in version) or "weights"
