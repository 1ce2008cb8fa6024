"""The math environment: answer extraction and normalisation on nasty inputs, /verify, metrics, data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.math.app import Math, answers_match, extract_answer, normalize
from gym_core.config import load_config
from gym_core.protocol import TaskRow

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
EXAMPLE = Path(__file__).parents[3] / "examples" / "math.yaml"


@pytest.fixture
def client():
    with TestClient(Math("math", {}).build_app(), headers={"X-Session-Id": "s"}) as c:
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.mark.parametrize("text,expected", [
    (r"so the answer is \boxed{42}.", "42"),
    (r"\boxed{1} wait, no: \boxed{2}", "2"),                       # the last box wins
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),        # nested braces
    (r"\boxed {7}", "7"),
    (r"\fbox{9}", "9"),
    (r"\boxed{5} and then \boxed{6", "5"),                         # an unclosed last box falls back to a closed one
    (r"\boxed{", None),
    ("first 3, then 4, finally 12.", "12"),                        # no box: the last number
    ("It costs 1,234,567 dollars", "1,234,567"),
    ("x = -3.5", "-3.5"),
    ("x = \u22125", "-5"),                                         # unicode minus
    (r"so x = \dfrac{3}{4}", "3/4"),
    ("the answer is 7, I think", "7"),
    ("", None),
    ("no numbers here at all", None),
    ("<think>I guess 12</think>The answer is 13.", "13"),          # reasoning is not the answer
    ("<think>let me think... 12 maybe", None),                     # reasoning that never finished
    ("}{" * 50_000 + r"\boxed{3}", "3"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("raw,canonical", [
    ("$42$", "42"), (" 42 ", "42"), ("42.", "42"), ("5.0", "5"), ("5.50", "5.5"), ("-0.0", "0"),
    ("1,000", "1000"), ("1,234.5", "1234.5"), ("1,2", "1,2"),
    (r"\frac{6}{8}", "3/4"), (r"\dfrac{1}{2}", "1/2"), (r"\tfrac12", "1/2"), (r"-\frac{1}{2}", "-1/2"),
    (r"\frac{-1}{2}", "-1/2"), ("4/2", "2"), (".5", "0.5"), ("(3)", "3"), (r"\text{(B)}", "B"),
    (r"90^\circ", "90"), (r"10\%", "10"), (r"\$ 3", "3"), (r"\left( 1, 2 \right)", "(1,2)"),
    ("1/0", "1/0"), ("x^2 + 1", "x^2+1"), ("9" * 200, "9" * 200),
])
def test_normalize(raw, canonical):
    assert normalize(raw) == canonical


@pytest.mark.parametrize("given,expected,same", [
    ("0.5", r"\frac{1}{2}", True), ("0.3333333", "1/3", True), ("0.33", "1/3", False),
    ("1000", "1,000", True), ("-7", "−7", True), ("7", "-7", False), ("1e3", "1000", False),
    ("X^2+1", "x^2 + 1", True), ("1/0", "0", False), ("100000000000000000000000001", "1e26", False),
    ("1" * 5000, "1" * 5000, True),
])
def test_answers_match(given, expected, same):
    assert answers_match(given, expected) is same


@pytest.mark.parametrize("junk", [
    "", " ", "\\boxed{" * 10_000, "{" * 100_000, "9" * 1_000_000, "1/" * 100_000, r"\frac{" * 50_000,
    "\x00\udcff", "-" * 10_000 + "5",
])
def test_junk_never_raises_and_stays_fast(junk):
    start = time.perf_counter()
    extracted = extract_answer(junk)
    if extracted is not None:
        answers_match(extracted, "5")
        normalize(extracted)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text,reward,extracted", [
    (r"17 * 23 = 391, so \boxed{391}", 1.0, "391"),
    (r"\boxed{391.0}", 1.0, "391"),
    ("The product is 391.", 1.0, "391"),
    (r"\boxed{390}", 0.0, "390"),
    ("I cannot solve this.", 0.0, None),
    ("", 0.0, None),
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


def test_verify_fractions_against_latex_expected(client):
    row = next(r for r in ROWS if r["expected_answer"] == r"\frac{3}{4}")
    for text in ("0.75", "3/4", r"\boxed{\dfrac{3}{4}}", r"\boxed{6/8}"):
        assert client.post("/verify", json={**row, "response": answer(text)}).json()["reward"] == 1.0


def test_metrics_have_pass_and_majority_at_k(client):
    def rollout(task: int, index: int, answer: str | None, reward: float) -> dict:
        return {"_ng_task_index": task, "_ng_rollout_index": index, "extracted_answer": answer, "reward": reward}

    rows = [rollout(0, 0, "5", 0.0), rollout(0, 1, "7", 1.0), rollout(0, 2, "5", 0.0),   # majority wrong
            rollout(1, 0, None, 0.0), rollout(1, 1, "2", 1.0), rollout(1, 2, "2", 1.0)]  # None does not vote
    metrics = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()["agent_metrics"]
    assert metrics["pass@1/reward"] == pytest.approx(0.5)
    assert metrics["pass@3/reward"] == 1.0
    assert metrics["majority@1/reward"] == 0.0          # task 0: "5" is wrong; task 1: no answer yet
    assert metrics["majority@2/reward"] == 0.5          # task 0: tie 5/7 goes to the first seen
    assert metrics["majority@3/reward"] == 0.5
    assert metrics["mean/reward"] == pytest.approx(0.5)


def test_a_row_without_expected_answer_is_an_error_not_a_zero(client):
    row = {"responses_create_params": ROWS[0]["responses_create_params"], "response": answer("1")}
    with TestClient(Math("math", {}).build_app(), raise_server_exceptions=False) as c:
        assert c.post("/verify", json=row).status_code == 500


def test_example_rows_are_valid():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        assert task.responses_create_params.tools == [] and task.extra["expected_answer"]
        assert answers_match(row["expected_answer"], row["expected_answer"])


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.servers["math"].env == "math"
    assert {config.servers["agent"].resources, config.servers["agent"].policy} == {"math", "policy"}
    assert config.servers["policy"].engine == "openai"
    native = load_config(EXAMPLE, ["servers.policy.engine=native", "servers.policy.model=builtin:tiny"])
    assert native.servers["policy"].engine == "native"


def test_gym_env_test_runs_this_folder():
    # A light conformance run (tests/environments runs the full one); the pytest row runs only this file's test.
    done = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", "math", "--rollouts", "50",
                           "-k", "example_rows"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
