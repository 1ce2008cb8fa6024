"""Running task rows against agents by name (NeMo Gym's `nemo_gym.rollout_collection.RolloutCollectionHelper`).

`run_examples(examples, head_server_config)` is what NeMo RL's actor calls: it POSTs every row to `/run` of the
agent its `agent_ref.name` names and returns an iterator of awaitables that finish in completion order, each
giving `(row, result)` with the row object passed in (NeMo RL reads its `_rowidx` back). A failed call raises
`GymHTTPError` (with `.status`) or the client's timeout / connection error when awaited. At most
`max_concurrency` rows are in flight (NeMo Gym sets no bound; pass a semaphore to choose one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any

from pydantic import BaseModel

from nemo_gym.config_types import BaseServerConfig
from nemo_gym.global_config import AGENT_REF_KEY_NAME
from nemo_gym.server_utils import ServerClient, get_response_json, raise_for_status

DEFAULT_MAX_CONCURRENCY = 1024


class RolloutCollectionHelper(BaseModel):
    """Dispatches rows to agents through the head server's view of the stack."""

    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def run_examples(self, examples: list[dict[str, Any]], head_server_config: BaseServerConfig | None = None,
                     semaphore: asyncio.Semaphore | None = None) -> Iterator[Awaitable[tuple[dict, dict]]]:
        """One awaitable per row, yielded in completion order; call it inside a running event loop."""
        missing = [i for i, row in enumerate(examples) if not (row.get(AGENT_REF_KEY_NAME) or {}).get("name")]
        if missing:
            raise ValueError(f"rows {missing[:10]} have no agent_ref.name; every row names the agent that runs it "
                             '(e.g. "agent_ref": {"type": "responses_api_agents", "name": "weather_agent"})')
        client = self.setup_server_client(head_server_config)
        slots = semaphore or asyncio.Semaphore(self.max_concurrency)

        async def run(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            """POST one row to its agent's /run; the row and the parsed result."""
            async with slots:
                reply = await client.post(server_name=row[AGENT_REF_KEY_NAME]["name"], url_path="/run", json=row)
                await raise_for_status(reply)
                return row, await get_response_json(reply)

        tasks = [asyncio.ensure_future(run(row)) for row in examples]
        return _as_completed(tasks)

    def setup_server_client(self, head_server_config: BaseServerConfig | None = None) -> ServerClient:
        """A client for the stack the head server describes."""
        return ServerClient.load_from_global_config(head_server_config)


def _as_completed(tasks: list[asyncio.Future]) -> Iterator[Awaitable[tuple[dict, dict]]]:
    """`asyncio.as_completed`, cancelling what is left when the caller stops iterating (e.g. on a failure)."""
    try:
        yield from asyncio.as_completed(tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        with contextlib.suppress(RuntimeError):  # no loop left to log from
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved, so an abandoned failure is not logged as "never retrieved"
