"""The mcqa environment: option parsing, letter extraction on nasty inputs, /verify, metrics, data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.mcqa.app import MCQA, extract_choice, option_texts
from gym_core.protocol import TaskRow

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
ABCD = {"A": "Paris", "B": "London", "C": "Rome", "D": "Berlin"}


@pytest.fixture
def client():
    # Keeps no cookies: each /verify is its own rollout, on a session the server issues for it.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    with TestClient(MCQA("mcqa", {}).build_app(), cookies=no_cookies) as c:
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.mark.parametrize("options", [
    [{"A": "Paris"}, {"B": "London"}, {"C": "Rome"}, {"D": "Berlin"}],
    {"A": "Paris", "B": "London", "C": "Rome", "D": "Berlin"},
    {" a ": "Paris", "b": "London", "C": "Rome", "D": "Berlin"},
    ["Paris", "London", "Rome", "Berlin"],
])
def test_option_shapes(options):
    assert option_texts(options) == ABCD


@pytest.mark.parametrize("options", [None, "ABCD", [{"A": "x", "B": "y"}], {"AB": "x"}, {"1": "x"}, [1, 2]])
def test_bad_options_are_rejected(options):
    with pytest.raises(ValueError):
        option_texts(options)


@pytest.mark.parametrize("text,expected", [
    ("Answer: C", "C"),
    ("answer:c", None),                                   # a bare lowercase letter is not a choice...
    ("The answer is (c).", "C"),                          # ...unless parenthesised
    ("**Answer:** B", "B"),
    ("Final answer - [D]", "D"),
    (r"so \boxed{C}", "C"),
    (r"\boxed{\text{(B)}}", "B"),
    (r"\boxed{b}", "B"),
    (r"\boxed{Rome} Answer: A", "A"),                     # a box that is not a letter does not decide
    ("Between (A) and (C), I choose (C)", "C"),
    ("Answer: A. Wait, re-reading: Answer: D", "D"),      # the last statement wins
    ("The answer is a good guess, but B", "B"),           # the article "a" is not option A
    ("A is wrong, B is wrong, so C", "C"),                # the last lone capital
    ("I think it's D", "D"),                              # "I" is no option here
    ("rome", "C"),                                        # the option's text
    ("Answer: E", None),                                  # not an option
    ("Berlin? No, ROME.", None),                          # no letter and not exactly an option
    ("", None),
    ("<think>Answer: A</think>", None),                   # reasoning only
    ("<think>A or B?</think>Answer: B", "B"),
    ("ABCD", None),                                       # letters inside a word
    ("x" * 1_000_000 + " Answer: B", "B"),
    ("Answer: B" + " " * 1_000_000, "B"),                 # trailing whitespace is not the tail
    ("Answer: B" + "." * 1_000_000, None),                # beyond the scanned tail
])
def test_extract_choice(text, expected):
    assert extract_choice(text, ABCD) == expected


@pytest.mark.parametrize("junk", ["(" * 200_000, "answer " * 100_000, "\\boxed{" * 50_000, "A" * 1_000_000,
                                  "\x00\udcff", "Answer:" + "*" * 100_000])
def test_junk_never_raises_and_stays_fast(junk):
    start = time.perf_counter()
    extract_choice(junk, ABCD)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text,reward,extracted", [
    ("Rome is the capital. Answer: C", 1.0, "C"),
    (r"\boxed{C}", 1.0, "C"),
    ("Answer: A", 0.0, "A"),
    ("I don't know.", 0.0, None),
])
def test_verify(client, text, reward, extracted):
    body = client.post("/verify", json={**ROWS[0], "response": answer(text)}).json()
    assert (body["reward"], body["extracted_answer"]) == (reward, extracted)
    assert body["options"] == ROWS[0]["options"]


def test_verify_with_dict_options_and_lowercase_expected(client):
    row = {**ROWS[2], "expected_answer": " b "}
    assert isinstance(row["options"], dict)
    assert client.post("/verify", json={**row, "response": answer("(B)")}).json()["reward"] == 1.0


@pytest.mark.parametrize("fields, named", [
    ({"expected_answer": "A"}, "options: Field required"),
    ({"options": "A) Paris B) Rome", "expected_answer": "A"}, "options: `options` must be"),
    ({"options": [{"A": "Paris"}, {"B": "Rome"}], "expected_answer": "E"}, "expected_answer: 'E' is not one of"),
])
def test_a_malformed_row_is_the_rows_error_not_a_zero(fields, named):
    row = {"responses_create_params": ROWS[0]["responses_create_params"], **fields, "response": answer("A")}
    with TestClient(MCQA("mcqa", {}).build_app()) as c:
        reply = c.post("/verify", json=row)
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
    assert named in reply.json()["error"]["message"]


def test_metrics_have_majority_at_k(client):
    rows = [{"_ng_task_index": 0, "_ng_rollout_index": i, "extracted_answer": a, "reward": float(a == "C")}
            for i, a in enumerate(["A", "C", "C", None])]
    metrics = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()["key_metrics"]
    assert [metrics[f"majority@{k}/reward"] for k in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    assert metrics["pass@4/reward"] == 1.0


def test_example_rows_are_valid():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        letters = option_texts(task.extra["options"])
        assert task.extra["expected_answer"] in letters
        assert all(f"{k}) {v}" in task.responses_create_params.items[-1].text for k, v in letters.items())


def test_gym_env_test_runs_this_folder():
    # A light conformance run (tests/environments runs the full one); the pytest row runs only this file's test.
    done = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", "mcqa", "--rollouts", "50",
                           "-k", "example_rows"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
