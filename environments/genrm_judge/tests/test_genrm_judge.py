"""The genrm_judge environment: the judgment parser, the reward, judge failures as classified failures
(through the agent into the collector's failures file), and the scripted judge stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from environments.genrm_judge.app import FAILURE_CLASS, GenRMJudge
from environments.genrm_judge.judging import (
    Judgment,
    UnparseableJudgment,
    compare,
    judge_messages,
    parse_judgment,
)
from environments.genrm_judge.scripted_judge import ScriptedJudge, ranking, score
from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse, TaskRow
from gym_core.server import SESSION_HEADER
from rollout.collect import collect
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.engines.base import Engine, EngineConfig
from servers.policy.server import PolicyServer
from tests.servers.conftest import serve  # noqa: F401  (the fixture: real servers in the test's loop)

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
ROW = ROWS[0]  # capital of Australia; baseline says Sydney


# ------------------------------------------------------------------------------------------------ parser


@pytest.mark.parametrize("text, expected", [
    ('{"score_1": 4, "score_2": 2, "ranking": 2}', (4, 2, 2)),
    ('Response 1 is right.\n```json\n{"score_1": 5, "score_2": 1, "ranking": 1}\n```', (5, 1, 1)),
    ('<think>maybe {"score_1": 1, "score_2": 5, "ranking": 6}</think>{"score_1": 3, "score_2": 4, "ranking": 4}',
     (3, 4, 4)),
    ('first {"score_1": 2, "score_2": 2, "ranking": 3} then {"score_1": 4, "score_2": 3, "ranking": 3}', (4, 3, 3)),
    ('{"score_1": "4", "score_2": " 3.5 ", "ranking": 2, "note": "strings are numbers"}', (4, 3.5, 2)),
    ('{"score_1": 4, "score_2": 2, "ranking": 2} {"unrelated": true}', (4, 2, 2)),
])
def test_the_last_score_object_is_the_judgment(text: str, expected: tuple) -> None:
    assert parse_judgment(text) == Judgment(*map(float, expected))


@pytest.mark.parametrize("text, problem", [
    ("Response 1 is better.", "no {"),
    ('{"score_1": 4, "score_2": 2}', "no {"),
    ('{"score_1": 6, "score_2": 2, "ranking": 2}', "score_1 is 6; it must be a number from 1 to 5"),
    ('{"score_1": 4, "score_2": 2, "ranking": 0}', "ranking is 0"),
    ('{"score_1": "high", "score_2": 2, "ranking": 2}', "not a number"),
    ('{"score_1": true, "score_2": 2, "ranking": 2}', "score_1 is True"),
    ('{"score_1": 4, "score_2": 2, "ranking": 2', "no {"),
    ('<think>{"score_1": 4, "score_2": 2, "ranking": 2}</think> I cannot decide.', "no {"),
    ("{" * 100_000 + "9" * 10_000, "no {"),
])
def test_a_missing_or_invalid_judgment_is_unparseable(text: str, problem: str) -> None:
    with pytest.raises(UnparseableJudgment, match=problem.replace("{", r"\{")):
        parse_judgment(text)


def test_reward_combines_the_candidates_score_and_its_preference_in_both_orders() -> None:
    # The candidate was response 1 in the first call and response 2 in the second.
    result = compare([(Judgment(5, 2, 1), True), (Judgment(2, 4, 5), False)])
    assert (result.candidate_score, result.baseline_score, result.ranking) == (4.5, 2.0, 1.5)
    assert result.reward == pytest.approx(0.5 * 3.5 / 4 + 0.5 * 4.5 / 5)
    assert compare([(Judgment(5, 1, 1), True)]).reward == 1.0
    assert compare([(Judgment(1, 5, 6), True)]).reward == 0.0
    assert compare([(Judgment(3, 3, 3), True), (Judgment(3, 3, 3), False)]).ranking == 3.5  # a tie


def test_the_judge_sees_the_conversation_both_responses_and_the_principle() -> None:
    conversation = TaskRow.model_validate(ROWS[1]).responses_create_params.items
    system, user = judge_messages(conversation, "first answer", "second answer", "be exact")
    assert "score_1" in system["content"] and "following this principle: be exact" in system["content"]
    assert "[user]: I'm making pancakes" in user["content"] and "[assistant]: Sounds delicious" in user["content"]
    assert "You are a helpful assistant" not in user["content"]  # the policy's system prompt is not judged
    assert "Response 1:\n<<<\nfirst answer\n>>>" in user["content"] and user["content"].endswith("be exact")


# ------------------------------------------------------------------------------------------------ server


class JudgeDouble(Engine):
    """Test double for a judge model: replies with `reply`, records the prompts it was given."""

    def __init__(self, reply: str) -> None:
        super().__init__(EngineConfig(), "judge-double")
        self.reply, self.prompts = reply, []

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        self.prompts.append(request.messages[-1].content)
        message = {"role": "assistant", "content": self.reply}
        return ChatCompletionResponse.model_validate({"model": "judge", "choices": [{"message": message}]})


async def judge_server(serve, engine: Engine) -> str:
    policy = PolicyServer("judge", {"engine": "scripted"})
    policy.engine = engine
    return await serve(policy.build_app())


async def verify(serve, judge: str, answer: str, row: dict = ROW, **config) -> dict:
    server = await serve(GenRMJudge("genrm_judge", {"judge": judge, **config}).build_app())
    seeded = await get_client().post(server, "/seed_session", row)
    session = {SESSION_HEADER: seeded.headers[SESSION_HEADER]}  # the session the server issued
    response = {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                                                 "text": answer}]}]}
    reply = await get_client().post(server, "/verify", {**row, "response": response}, headers=session)
    assert reply.status_code == 200
    return reply.json()


async def test_verify_judges_in_both_orders_and_rewards_the_candidate(serve) -> None:
    judge = JudgeDouble('Reasoning... {"score_1": 5, "score_2": 3, "ranking": 2}')
    body = await verify(serve, await judge_server(serve, judge), "It is Canberra.")
    first, second = judge.prompts
    assert first.index("It is Canberra.") < first.index("Sydney, its largest") < second.index("It is Canberra.")
    # Candidate first: 5 vs 3, ranking 2; candidate second: 3 vs 5, ranking 7 - 2 = 5.
    assert (body["candidate_score"], body["baseline_score"], body["ranking"]) == (4.0, 4.0, 3.5)
    assert body["reward"] == pytest.approx(0.5 * 3 / 4 + 0.5 * 2.5 / 5) and body["judge_calls"] == 2
    assert body["preferred"] == "tie" and "_ng_failure_class" not in body


async def test_swap_positions_off_is_one_call(serve) -> None:
    judge = JudgeDouble('{"score_1": 5, "score_2": 1, "ranking": 1}')
    body = await verify(serve, await judge_server(serve, judge), "Canberra", swap_positions=False)
    assert body["reward"] == 1.0 and body["preferred"] == "candidate" and len(judge.prompts) == 1


@pytest.mark.parametrize("reply", ["I think response 1 wins.", '{"score_1": 9, "score_2": 1, "ranking": 1}', ""])
async def test_an_unreadable_judgment_is_a_classified_failure(serve, reply: str) -> None:
    body = await verify(serve, await judge_server(serve, JudgeDouble(reply)), "Canberra")
    assert body["_ng_failure_class"] == FAILURE_CLASS and body["reward"] == 0.0
    assert body["_ng_failure_judge_error"] and "judge failed" in body["error"]


async def test_a_failed_judge_call_is_a_classified_failure(serve) -> None:
    class Broken(JudgeDouble):
        async def chat(self, request, *, session_id=None):
            from servers.policy.engines.base import EngineError

            raise EngineError("upstream model crashed", 502)

    body = await verify(serve, await judge_server(serve, Broken("")), "Canberra")
    assert body["_ng_failure_class"] == FAILURE_CLASS and "upstream model crashed" in body["_ng_failure_judge_error"]
    body = await verify(serve, "http://127.0.0.1:9", "Canberra")  # nothing listens there
    assert body["_ng_failure_class"] == FAILURE_CLASS and "judge 'http://127.0.0.1:9'" in body["error"]


async def test_judge_failures_reach_the_failures_file_not_the_rewards(serve, tmp_path: Path) -> None:
    """Agent + collector: a judge that cannot be read never turns into a reward of 0."""
    genrm = await serve(GenRMJudge("genrm_judge", {"judge": await judge_server(serve, JudgeDouble("no idea"))})
                        .build_app())
    agent = await serve(ToolCallingAgent("agent", {
        "policy": await serve(PolicyServer("policy", {"engine": "scripted"}).build_app()),
        "resources": genrm, "max_steps": 1}).build_app())
    output = tmp_path / "rollouts.jsonl"
    summary = await collect(agent, iter(ROWS), output, agent_name="agent", num_repeats=2, progress=False,
                            aggregate_metrics=False)
    assert (summary.count, summary.failures) == (0, 10) and output.read_text() == ""
    failures = [json.loads(line) for line in summary.failures_output.read_text().splitlines()]
    assert {f["_ng_failure_class"] for f in failures} == {FAILURE_CLASS}
    assert all("no {" in f["error"]["message"] for f in failures)


# ------------------------------------------------------------------------------------------ scripted judge


def test_the_scripted_judge_scores_key_term_coverage() -> None:
    terms = {"canberra", "capital", "australia"}
    assert score("The capital of Australia is Canberra.", terms) == 5
    assert score("Australia's capital is Sydney.", terms) == 4
    assert score("No idea.", terms) == 1 and score("anything", set()) == 3
    assert [ranking(5, 1, 0, 0), ranking(4, 3, 0, 0), ranking(3, 3, 5, 9), ranking(3, 3, 9, 5), ranking(2, 3, 0, 0),
            ranking(1, 5, 0, 0)] == [1, 2, 3, 4, 5, 6]


async def test_the_scripted_judge_prefers_the_reference_over_the_baseline(serve) -> None:
    judge = await judge_server(serve, ScriptedJudge(EngineConfig(), "scripted-judge"))
    for row in ROWS:
        good = await verify(serve, judge, row["reference"], row)
        evasive = await verify(serve, judge, "I'd rather not get into that.", row)
        assert good["reward"] > evasive["reward"] and good["preferred"] in ("candidate", "tie"), row["principle"]
