"""A hand-built two-call episode with known token ids, shared by the trajectory and adapter tests."""

from __future__ import annotations


def episode(second_prompt: list[int] | None = None, reward: float = 1.0, task: int = 3, repeat: int = 1,
            agent: str = "agent", **extra: object) -> dict:
    """A tool call (prompt 1..4, generates 10 11), its output, then the final answer (generates 20 21 2)."""
    return {
        "_ng_task_index": task, "_ng_rollout_index": repeat, "_rowidx": 0, "reward": reward,
        "agent_ref": {"type": "responses_api_agents", "name": agent},
        "responses_create_params": {"input": [{"role": "user", "content": "weather?"}]},
        "response": {"status": "completed", "output": [
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "name": "get_weather", "arguments": "{}", "call_id": "c1",
             "prompt_token_ids": [1, 2, 3, 4], "generation_token_ids": [10, 11],
             "generation_log_probs": [-0.5, -0.25]},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [],
             "prompt_token_ids": second_prompt or [1, 2, 3, 4, 10, 11, 7, 8, 9],
             "generation_token_ids": [20, 21, 2], "generation_log_probs": [-1.0, -2.0, -0.125]},
        ]},
        **extra,
    }
