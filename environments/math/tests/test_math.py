"""The math environment: math-verify grading of near misses, the bounded worker pool, /verify, metrics, data."""

from __future__ import annotations

import json
import subprocess
import sys
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.math.app import Math
from environments.math.grading import gold_text, grade, warm_up
from environments.math.verify_pool import TaskFailed, TaskTimeout, VerifyPool
from gym_core.config import load_config
from gym_core.protocol import TaskRow
from tests.environments.adversarial import assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
EXAMPLE = Path(__file__).parents[3] / "examples" / "math.yaml"


@pytest.fixture(scope="module")
def client():
    # Keeps no cookies: each /verify is its own rollout, on a session the server issues for it.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    with TestClient(Math("math", {}).build_app(), cookies=no_cookies) as c:
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.mark.parametrize("expected,text,correct", [
    ("391", r"17 * 23 = 391, so \boxed{391}", True),
    ("391", r"\boxed{391.0}", True),                                   # unusual format, same number
    ("391", "The product is 391.", True),                              # no box: the last number
    ("391", r"\boxed{390}", False),                                    # plausible wrong
    ("391", r"\boxed{1} wait, no: \boxed{391}", True),                 # the last box wins
    (r"\frac{3}{4}", "0.75", True),
    (r"\frac{3}{4}", r"\boxed{\dfrac{6}{8}}", True),
    (r"\frac{3}{4}", r"\boxed{3/4}", True),
    (r"\frac{3}{4}", r"\boxed{0.7}", False),
    ("1/3", r"\boxed{0.33}", False),                                   # rounding is not equality
    ("-7", "\\boxed{\u22127}", True),                                  # unicode minus
    ("-7", r"\boxed{7}", False),
    ("86400", r"\boxed{86,400}", True),                                # thousands separator
    ("720", r"\boxed{720^\circ}", True),
    ("x^2 + 2x + 1", r"\boxed{(x+1)^2}", True),                        # symbolic equivalence
    ("x^2 + 2x + 1", r"\boxed{x^2 + 2x + 2}", False),
    ("2x", r"\boxed{x \cdot 2}", True),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\sqrt{3}/2}", True),
    ("(-2, 2)", r"\boxed{(-2,2)}", True),                              # interval
    ("(-2, 2)", r"\boxed{[-2, 2]}", False),                            # closed is not open
    (r"\{2, 3\}", r"\boxed{\{3, 2\}}", True),                          # set order does not matter
    (r"\{2, 3\}", r"\boxed{\{2, 4\}}", False),
    ("13", "<think>I guess 12</think>The answer is 13.", True),        # reasoning is not the answer
    ("12", "<think>let me think... 12 maybe", False),                 # reasoning that never finished
    ("5", "I cannot solve this.", False),
    ("5", "", False),
])
def test_grade(expected, text, correct):
    assert grade(expected, text, timeout_s=5)["correct"] is correct


def test_gold_answers_are_wrapped_in_math_mode_once():
    assert gold_text(" 391 ") == "$391$"
    assert gold_text(r"$\frac{1}{2}$") == r"$\frac{1}{2}$"
    assert gold_text(r"\boxed{2}") == r"\boxed{2}"


def test_extracted_answer_is_reported_and_capped():
    assert grade("391", r"\boxed{391}", 5)["extracted_answer"] == "391"
    assert grade("1", "no numbers here", 5)["extracted_answer"] is None
    long = grade("1", r"\boxed{" + "9" * 1_000 + "}", 5)["extracted_answer"]
    assert long.endswith("(1000 chars)") and len(long) < 300
    assert grade("1", r"\boxed{" + "9" * 10_000 + "}", 5)["correct"] is False  # past Python's int limit


def _sleep_forever() -> None:
    import time
    while True:
        time.sleep(1)


def _fail() -> None:
    raise RuntimeError("grading bug")


@pytest.mark.timeout(120)
async def test_a_hung_grading_is_killed_and_the_pool_keeps_serving():
    pool = VerifyPool(1, timeout_s=5.0, warm_up=warm_up)  # sympy's import is the warm-up's, not a task's
    try:
        with pytest.raises(TaskTimeout):
            await pool.run(_sleep_forever)
        assert (await pool.run(grade, "2", r"\boxed{2}", 5))["correct"] is True  # a fresh worker took over
        with pytest.raises(TaskFailed, match="grading bug"):
            await pool.run(_fail)
        assert (await pool.run(grade, "2", "2", 5))["correct"] is True
    finally:
        pool.close()


@pytest.mark.timeout(120)
def test_a_pathological_answer_is_cut_off_as_reward_0_with_a_flag():
    server = Math("math", {"grading_workers": 1, "parse_timeout_s": 60, "hard_timeout_s": 3.0, **KEEP_SESSIONS})
    with TestClient(server.build_app()) as c:
        tower = r"\boxed{2^{2^{2^{2^{2^{2}}}}}}"
        body = c.post("/verify", json={**ROWS[0], "response": answer(tower)}).json()
        assert (body["reward"], body["grading_timed_out"]) == (0.0, True)
        body = c.post("/verify", json={**ROWS[0], "response": answer(r"\boxed{391}")}).json()
        assert (body["reward"], body["grading_timed_out"]) == (1.0, False)


@pytest.mark.parametrize("text,reward,extracted", [
    (r"17 * 23 = 391, so \boxed{391}", 1.0, "391"),
    (r"\boxed{390}", 0.0, "390"),
    ("I cannot solve this.", 0.0, None),
])
def test_verify(client, text, reward, extracted):
    body = client.post("/verify", json={**ROWS[0], "response": answer(text)}).json()
    assert (body["reward"], body["extracted_answer"]) == (reward, extracted)
    assert body["expected_answer"] == "391"


def test_verify_reads_only_the_last_message_and_ignores_reasoning_items(client):
    response = answer(r"\boxed{391}")
    response["output"] += [{"type": "reasoning", "id": "r", "summary": []}, answer("hmm")["output"][0]]
    assert client.post("/verify", json={**ROWS[0], "response": response}).json()["reward"] == 0.0
    reasoning_only = {"output": [{"type": "reasoning", "id": "r", "summary": [{"type": "summary_text",
                                                                               "text": r"\boxed{391}"}]}]}
    body = client.post("/verify", json={**ROWS[0], "response": reasoning_only}).json()
    assert (body["reward"], body["extracted_answer"]) == (0.0, None)


def test_every_example_row_accepts_its_own_answer_and_rejects_a_wrong_one(client):
    for row in ROWS:
        good = client.post("/verify", json={**row, "response": answer(f"\\boxed{{{row['expected_answer']}}}")})
        bad = client.post("/verify", json={**row, "response": answer(r"\boxed{123456789}")})
        assert (good.json()["reward"], bad.json()["reward"]) == (1.0, 0.0), row["expected_answer"]


@pytest.mark.timeout(300)
def test_adversarial_output_gets_a_reward():
    assert_verify_survives(Math("math", {"grading_workers": 1, "hard_timeout_s": 20.0}), ROWS[0])


def test_metrics_have_pass_and_majority_at_k(client):
    def rollout(task: int, index: int, answer: str | None, reward: float) -> dict:
        return {"_ng_task_index": task, "_ng_rollout_index": index, "extracted_answer": answer, "reward": reward}

    rows = [rollout(0, 0, "5", 0.0), rollout(0, 1, "7", 1.0), rollout(0, 2, "5", 0.0),   # majority wrong
            rollout(1, 0, None, 0.0), rollout(1, 1, "2", 1.0), rollout(1, 2, "2", 1.0)]  # None does not vote
    metrics = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()["agent_metrics"]
    assert metrics["pass@1/reward"] == pytest.approx(0.5)
    assert metrics["pass@3/reward"] == 1.0
    assert metrics["majority@1/reward"] == 0.0
    assert metrics["majority@2/reward"] == 0.5
    assert metrics["majority@3/reward"] == 0.5


def test_a_row_without_expected_answer_is_the_rows_error_not_a_zero():
    row = {"responses_create_params": ROWS[0]["responses_create_params"], "response": answer("1")}
    with TestClient(Math("math", {}).build_app()) as c:
        reply = c.post("/verify", json=row)
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
    assert "expected_answer: Field required" in reply.json()["error"]["message"]


def test_example_rows_are_valid():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        assert task.responses_create_params.tools == [] and task.extra["expected_answer"]


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.servers["math"].env == "math"
    assert {config.servers["agent"].resources, config.servers["agent"].policy} == {"math", "policy"}
    native = load_config(EXAMPLE, ["servers.policy.engine=native", "servers.policy.model=builtin:tiny"])
    assert native.servers["policy"].engine == "native"


def test_gym_env_test_runs_this_folder():
    # A light conformance run (tests/environments runs the full one); the pytest row runs only this file's test.
    done = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", "math", "--rollouts", "50",
                           "-k", "example_rows"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
