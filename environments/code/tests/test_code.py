"""The code environment: extraction, row formats, rewards for right / wrong / near-miss code, the sandbox."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from environments.code.app import Code
from environments.code.extract import extract_code
from environments.code.generate import make_row
from environments.code.rows import CodeRow
from environments.synthetic import make_rows
from gym_core.protocol import TaskRow, VerifyRequest
from servers.resources import Session
from tests.environments.adversarial import assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
FAST = {"sandbox": {"cpu_s": 1, "wall_s": 3}}

ADD_ROW = {"responses_create_params": {"input": [{"role": "user", "content": "Write add(a, b)."}]},
           "tests": [{"call": "add(1, 2)", "expected": 3}, {"call": "add(-1, 1)", "expected": 0},
                     {"call": "add(2, 2)", "expected": 4}, {"call": "add(0.1, 0.2)", "expected": 0.3}]}


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def client():
    with TestClient(Code("code", {**FAST, **KEEP_SESSIONS}).build_app()) as c:
        yield c


def verify(client, row: dict, text: str) -> dict:
    return client.post("/verify", json={**row, "response": answer(text)}).json()


# ------------------------------------------------------------------------------------------ extraction, rows

@pytest.mark.parametrize("text,code", [
    ("```python\nx = 1\n```", "x = 1\n"),
    ("```py\nx = 1\n```", "x = 1\n"),
    ("```\nx = 1\n```", "x = 1\n"),
    ("```python\nx = 1\n```\nor better:\n```python\nx = 2\n```", "x = 2\n"),     # the last block wins
    ("```bash\npip install x\n```\n```python\nx = 3\n```", "x = 3\n"),
    ("```bash\nrm -rf /\n```", None),                                             # not Python
    ("def f():\n    return 1", "def f():\n    return 1"),                         # unfenced code that compiles
    ("I think the answer is to add them.", None),                                 # prose
    ("<think>```python\nx = 1\n```</think>no code", None),                       # code only in reasoning
    ("```python\n   \n```", None),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


def hidden_tests(row: dict) -> list[dict]:
    return CodeRow.model_validate(row).hidden_tests()


def test_tests_of_reads_our_format_and_nemo_gyms():
    assert hidden_tests(ADD_ROW)[0] == {"kind": "call", "call": "add(1, 2)", "expected": 3}
    assert hidden_tests({"tests": [{"stdin": "1\n", "expected": "2"}]}) == [{"kind": "stdio", "stdin": "1\n",
                                                                         "expected": "2"}]
    stdio = hidden_tests(ROWS[4])
    assert stdio[0] == {"kind": "stdio", "stdin": "2\n", "expected": "4"}
    call = hidden_tests(ROWS[5])
    assert call[0] == {"kind": "function", "fn_name": "twoSum", "args": [[2, 7, 11, 15], 9], "expected": [0, 1]}
    packed = base64.b64encode(zlib.compress(json.dumps({"inputs": ["1\n"], "outputs": ["1"]}).encode())).decode()
    assert hidden_tests({"verifier_metadata": {"unit_tests": {"packed": packed}}})[0]["stdin"] == "1\n"


@pytest.mark.parametrize("row", [{}, {"tests": [{"call": "f()"}]}, {"tests": [{"expected": 1}]},
                                 {"verifier_metadata": {"unit_tests": {"inputs": ["1"], "outputs": []}}},
                                 {"verifier_metadata": {"unit_tests": {"inputs": ["{"], "outputs": ["1"],
                                                                       "fn_name": "f"}}},
                                 {"tests": []}, {"verifier_metadata": {"unit_tests": {"packed": "!!"}}}])
def test_malformed_tests_are_a_data_error(row):
    with pytest.raises(ValidationError):
        hidden_tests(row)


# ------------------------------------------------------------------------------------------ rewards

@pytest.mark.parametrize("text,reward", [
    (fenced("def add(a, b):\n    return a + b"), 1.0),
    ("def add(a, b):\n    return a + b", 1.0),                                       # unfenced, still code
    (fenced("add = lambda a, b: b + a"), 1.0),                                       # unusual but right
    (fenced("def add(a, b):\n    return round(a + b, 10)"), 1.0),                    # 0.3 within tolerance
    (fenced("def add(a, b):\n    return a * b"), 0.25),                              # plausible wrong: 2*2 == 4
    (fenced("def add(a, b):\n    return str(a + b)"), 0.0),                          # "3" is not 3
    (fenced("def add(a, b):\n    return a - b"), 0.0),
    (fenced("def plus(a, b):\n    return a + b"), 0.0),                              # wrong name
    (fenced("def add(a, b):\n    return a +"), 0.0),                                 # syntax error
    ("The function adds a and b.", 0.0),
])
def test_reward_is_the_fraction_of_tests_passed(client, text, reward):
    body = verify(client, ADD_ROW, text)
    assert body["reward"] == pytest.approx(reward)
    assert body["tests_total"] == 4 and body["all_passed"] is (reward == 1.0)


def test_failed_tests_say_why(client):
    body = verify(client, ADD_ROW, fenced("def add(a, b):\n    return a - b"))
    assert body["test_results"][0]["reason"] == "expected 3, got -1"
    body = verify(client, ADD_ROW, fenced("def plus(a, b):\n    return a + b"))
    assert body["test_results"][0]["reason"] == "NameError: name 'add' is not defined"


def test_nemo_gym_rows_stdio_and_function(client):
    assert verify(client, ROWS[4], fenced("n = int(input())\nprint(n * n)"))["reward"] == 1.0
    assert verify(client, ROWS[4], fenced("n = int(input())\nprint(n * n, ' ')\nprint()"))["reward"] == 1.0
    assert verify(client, ROWS[4], fenced("n = int(input())\nprint(n + 2)"))["reward"] == pytest.approx(1 / 3)
    two_sum = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
               "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
               "                return [seen[target - x], i]\n            seen[x] = i")
    assert verify(client, ROWS[5], fenced(two_sum))["reward"] == 1.0
    assert verify(client, ROWS[5], fenced(two_sum.replace("[seen[target - x], i]", "[i, seen[target - x]]")))[
        "reward"] == 0.0


EXAMPLE_SOLUTIONS = [
    "def count_letter(text):\n    return text.lower().count('a')",
    "def clamp_sum(nums):\n    return max(-4, min(42, sum(nums)))",
    "def clamp_sum(nums):\n    return max(-40, min(-26, sum(nums)))",
    "def digit_sum(n):\n    s = 0\n    while n:\n        n, d = divmod(n, 5)\n        s += d\n    return s",
]


def test_generated_example_rows_accept_a_correct_solution_and_reject_near_misses(client):
    for row, solution in zip(ROWS[:4], EXAMPLE_SOLUTIONS):
        assert verify(client, row, fenced(solution))["reward"] == 1.0, row["entry_point"]
        wrong = fenced(f"def {row['entry_point']}(*args):\n    return None")
        assert verify(client, row, wrong)["reward"] == 0.0
    base_ten = EXAMPLE_SOLUTIONS[3].replace("divmod(n, 5)", "divmod(n, 10)")  # the usual base, not the asked one
    assert verify(client, ROWS[3], fenced(base_ten))["reward"] < 1.0


# ------------------------------------------------------------------------------------------ the sandbox

HOSTILE = {
    "infinite_loop": ("def f():\n    while True:\n        pass", "CPU time limit|timed out"),
    "sleeping": ("import time\ndef f():\n    time.sleep(60)", "timed out after 3 s"),
    "fork_bomb": ("import os\ndef f():\n    while True:\n        os.fork()", "BlockingIOError"),
    "ten_gigabytes": ("def f():\n    return len(bytearray(10 * 1024 ** 3))", "MemoryError"),
    "write_outside": ("def f():\n    open('/work/gym-sandbox-escape', 'w').write('x')\n    return 1",
                      "Read-only file system"),
    "write_parent": ("def f():\n    open('../gym-sandbox-escape', 'w').write('x')\n    return 1", "Read-only"),
    "server_env": ("import os\ndef f():\n    return os.environ['GYM_SANDBOX_SECRET']", "KeyError"),
    "parent_environ": ("def f():\n    return open('/proc/1/environ').read()", "Permission denied"),
    "socket": ("import socket\ndef f():\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n    return 1",
               "Network is unreachable"),
    "exit": ("import os\ndef f():\n    os._exit(0)", "without reporting a result"),
    "flood_stdout": ("def f():\n    while True:\n        print('x' * 10000)", "CPU time limit|timed out"),
}
F_ROW = {"responses_create_params": {"input": [{"role": "user", "content": "f"}]},
         "tests": [{"call": "f()", "expected": 1}]}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_fails_its_test_with_the_reason(client, monkeypatch, name):
    monkeypatch.setenv("GYM_SANDBOX_SECRET", "hunter2")  # the server's environment must not reach the code
    code, reason = HOSTILE[name]
    body = verify(client, F_ROW, fenced(code))
    assert body["reward"] == 0.0, body
    assert re.search(reason, body["test_results"][0]["reason"]), body["test_results"]
    assert body["sandbox_isolation"]["network"] == "namespace"  # this machine allows namespaces
    assert not Path("/work/gym-sandbox-escape").exists()


def test_the_work_directory_starts_empty_and_is_writable(client):
    code = "import os\ndef f():\n    before = os.listdir('.')\n    open('x.txt', 'w').write('hi')\n" \
           "    return [before, open('x.txt').read(), os.getcwd()]"
    row = {**F_ROW, "tests": [{"call": "f()", "expected": [[], "hi", "/tmp"]}]}
    assert verify(client, row, fenced(code))["reward"] == 1.0


@pytest.mark.timeout(120)
async def test_the_server_keeps_serving_while_hostile_code_runs():
    server = Code("code", {"sandbox": {"cpu_s": 30, "wall_s": 5}, "max_concurrent_sandboxes": 2})
    hostile = _verify(server, F_ROW, fenced("import time\ndef f():\n    time.sleep(60)"))
    good = [_verify(server, ADD_ROW, fenced("def add(a, b):\n    return a + b")) for _ in range(3)]
    hostile_task = asyncio.ensure_future(hostile)
    results = await asyncio.gather(*good)
    assert [r["reward"] for r in results] == [1.0, 1.0, 1.0]
    assert not hostile_task.done()  # three good rollouts finished while the sleeper still holds its slot
    assert (await hostile_task)["test_results"][0]["reason"].startswith("timed out")


async def _verify(server: Code, row: dict, text: str) -> dict:
    return await server.verify(VerifyRequest.model_validate({**row, "response": answer(text)}), Session("s"))


@pytest.mark.timeout(120)
def test_without_namespaces_an_audit_hook_guards_sockets_and_files():
    app = Code("code", {"sandbox": {"namespaces": False, "cpu_s": 1, "wall_s": 3}, **KEEP_SESSIONS}).build_app()
    with TestClient(app) as c:
        for name in ("socket", "write_outside", "server_env", "infinite_loop", "fork_bomb"):
            body = verify(c, F_ROW, fenced(HOSTILE[name][0]))
            assert body["reward"] == 0.0 and body["sandbox_isolation"]["network"] == "audit-hook"
            reason = body["test_results"][0]["reason"]
            assert re.search({"socket": "network access is disabled", "write_outside": "outside the work directory"}
                             .get(name, HOSTILE[name][1]), reason), reason
        assert verify(c, ADD_ROW, fenced("def add(a, b):\n    return a + b"))["reward"] == 1.0


@pytest.mark.timeout(300)
def test_adversarial_output_gets_a_reward():
    assert_verify_survives(Code("code", FAST), F_ROW)


def test_example_rows_and_generator():
    assert len(ROWS) >= 5
    for row in ROWS:
        TaskRow.model_validate(row)
        assert hidden_tests(row)
    assert make_rows(make_row, "train", 20, 7) == make_rows(make_row, "train", 20, 7)
    assert make_rows(make_row, "train", 5, 7) != make_rows(make_row, "validation", 5, 7)
    assert make_rows(make_row, "train", 3, 7) == make_rows(make_row, "train", 20, 7)[:3]  # no batch dependence
    assert os.environ.get("GYM_SANDBOX_SECRET") is None
