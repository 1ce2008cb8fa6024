"""The collector's gate: outages are waited out (one probe at a time, bounded), everything else fails at once;
and the failure classes the sidecar records (rollout/backoff.py, rollout/failures.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gym_core.client import CallTimeout, ServerError, ServerNotRegistered
from rollout.backoff import BackoffPolicy, UpstreamGate
from rollout.failures import failure_record, is_outage

FAST = BackoffPolicy(first_wait_s=0.01, max_wait_s=0.04, give_up_after_s=30)
REQUEST = httpx.Request("POST", "http://127.0.0.1:1/run")


class Upstream:
    """Test double: refuses connections while `down`; comes back after `down_for` refused attempts."""

    def __init__(self) -> None:
        self.down, self.down_for, self.refused, self.served = False, 0, 0, 0

    async def attempt(self) -> str:
        await asyncio.sleep(0)
        if self.down:
            self.refused += 1
            if self.refused >= self.down_for:
                self.down = False  # the next attempt finds it restarted
            raise httpx.ConnectError("connection refused", request=REQUEST)
        self.served += 1
        return "ok"


def agent_error(status: int, error_type: str) -> ServerError:
    return ServerError(f"agent answered {status}", status, {"error": {"type": error_type, "message": "m"}})


async def test_an_outage_holds_every_rollout_and_probes_one_at_a_time() -> None:
    upstream, gate = Upstream(), UpstreamGate(FAST)
    assert await gate.call(upstream.attempt) == "ok"  # it answered once: from now on, refusals are an outage
    upstream.down, upstream.down_for = True, 60  # 50 in flight fail at once, then 10 probes are refused
    results = await asyncio.wait_for(asyncio.gather(*(gate.call(upstream.attempt) for _ in range(50))), 30)
    assert results == ["ok"] * 50 and upstream.served == 51
    assert upstream.refused == 60 and gate.outages == 1 and not gate.down
    assert gate.held == 60  # every refusal was held and retried, none became a failure


async def test_an_upstream_that_never_answered_fails_at_once() -> None:
    upstream, gate = Upstream(), UpstreamGate(FAST)
    upstream.down, upstream.down_for = True, 10**6
    with pytest.raises(httpx.ConnectError):
        await gate.call(upstream.attempt)
    assert upstream.refused == 1 and not gate.down


async def test_an_agent_reporting_a_server_behind_it_unreachable_is_waited_for_from_the_start() -> None:
    gate, calls = UpstreamGate(FAST), 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:  # the agent answers, but its resources server is between two keep-alive connections
            raise agent_error(502, "resources_unreachable")
        return "ok"

    assert await asyncio.wait_for(gate.call(attempt), 30) == "ok" and calls == 4 and gate.outages == 1


@pytest.mark.parametrize("error", [agent_error(500, "policy_error"), agent_error(422, "invalid_row"),
                                   agent_error(504, "episode_timeout"), CallTimeout("slow", request=REQUEST)])
async def test_failures_that_are_not_outages_are_raised_without_waiting(error: Exception) -> None:
    gate, calls = UpstreamGate(FAST), 0
    await gate.call(Upstream().attempt)

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await gate.call(failing)
    assert calls == 1 and not gate.down


async def test_a_long_outage_gives_up_and_the_held_rollouts_fail() -> None:
    upstream = Upstream()
    gate = UpstreamGate(BackoffPolicy(first_wait_s=0.01, max_wait_s=0.02, give_up_after_s=0.2))
    await gate.call(upstream.attempt)
    upstream.down, upstream.down_for = True, 10**6
    outcomes = await asyncio.wait_for(asyncio.gather(*(gate.call(upstream.attempt) for _ in range(20)),
                                                     return_exceptions=True), 30)
    assert all(isinstance(o, httpx.ConnectError) for o in outcomes)
    assert upstream.refused < 20 + 40  # the probes were paced: about one per wait, not a flood
    upstream.down = False
    assert await gate.call(upstream.attempt) == "ok" and not gate.down  # back: the gate opens again


def test_outage_kinds() -> None:
    assert is_outage(httpx.ConnectError("refused", request=REQUEST))
    assert is_outage(httpx.RemoteProtocolError("server disconnected", request=REQUEST))
    assert is_outage(ServerNotRegistered("agent is restarting"))
    assert is_outage(agent_error(502, "policy_unreachable")) and is_outage(agent_error(502, "resources_unreachable"))
    assert is_outage(agent_error(502, "resources_session_lost"))  # restarted: the rollout must run again
    assert not is_outage(agent_error(502, "policy_error")) and not is_outage(CallTimeout("t", request=REQUEST))


def test_failure_classes() -> None:
    row = failure_record(agent_error(422, "invalid_row"))
    assert row["_ng_failure_class"] == "invalid_row" and row["_ng_failure_terminal"] is True
    assert row["error"]["type"] == "http_error" and row["error"]["status"] == 422
    assert failure_record(agent_error(502, "resources_error"))["_ng_failure_class"] == "resources_error"
    assert "_ng_failure_terminal" not in failure_record(agent_error(504, "episode_timeout"))
    assert failure_record(CallTimeout("t", request=REQUEST))["_ng_failure_class"] == "timeout"
    unreachable = failure_record(httpx.ConnectError("refused", request=REQUEST))
    assert unreachable["_ng_failure_class"] == "agent_unreachable" and unreachable["error"]["type"] == "ConnectError"
    assert failure_record(ServerError("500", 500, "not json")) == {
        "error": {"type": "http_error", "status": 500, "message": "500"}}
