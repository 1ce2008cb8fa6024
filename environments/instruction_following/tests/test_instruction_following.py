"""instruction_following: every constraint type on satisfying, violating and near-miss text; the reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.instruction_following.app import InstructionFollowing
from environments.instruction_following.constraints import TYPES, build
from environments.instruction_following.generate import make_row
from environments.synthetic import make_rows
from gym_core.protocol import TaskRow
from tests.environments.adversarial import assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]

# type -> (params, satisfying text, violating text, near miss that must also fail)
CASES = {
    "word_count": ({"relation": "at_least", "value": 5}, "one two three four five", "one two three four",
                   "one-two three four"),
    "sentence_count": ({"relation": "at_most", "value": 2}, "It rains. It pours.", "A. B. C.", "One! Two? Three."),
    "paragraph_count": ({"value": 2}, "first para\n\nsecond para", "just one", "first\nsecond (one paragraph)"),
    "include_keywords": ({"keywords": ["river", "stone"]}, "A River and a stone.", "a river only",
                         "rivers and stones"),                             # plurals are other words
    "forbidden_words": ({"words": ["very"]}, "It was every bit fine.", "It was very fine.", "VERY fine"),
    "keyword_frequency": ({"keyword": "sun", "relation": "at_least", "value": 2}, "sun, Sun!", "sun once",
                          "sun and sunny"),
    "letter_frequency": ({"letter": "z", "relation": "at_least", "value": 2}, "Zig zag", "zero", "Zero"),
    "json_format": ({}, '```json\n{"a": 1}\n```', "not json", '{"a": 1,}'),
    "bullet_list": ({"value": 2}, "* one\n- two", "* one", "* one\n* two\n* three"),
    "sections": ({"value": 2, "marker": "SECTION"}, "SECTION 1\nhi\nSECTION 2\nyo", "SECTION 1\nhi",
                 "Section 1\nhi\nSection 2\nyo"),
    "title": ({}, "<<On Rivers>>\ntext", "On Rivers\ntext", "<On Rivers>\ntext"),
    "all_lowercase": ({}, "all quiet here.", "All quiet here.", "all quiet, said I."),
    "all_uppercase": ({}, "ALL QUIET.", "All quiet.", "ALL QUIET, sir."),
    "capital_word_frequency": ({"relation": "at_least", "value": 2}, "VERY LOUD text", "Loud text",
                               "VERY Loud text A"),                         # single letters do not count
    "starts_with": ({"phrase": "In short"}, "  in short, yes.", "Yes, in short.", "In shorts we trust."),
    "ends_with": ({"phrase": "That is all."}, "Done. That is all.\n", "That is all. Bye.", "That is all"),
    "placeholders": ({"value": 2}, "Send to [name] at [address].", "Send to [name].", "Send to [name] at []."),
    "postscript": ({"marker": "P.S."}, "Hi.\n\nP.S. bye", "Hi. bye", "Hi.\nPS bye"),
    "no_commas": ({}, "No commas here.", "Yes, here.", "Almost，fullwidth is fine, but this is not"),
    "quotation": ({}, '"Quoted."', "Quoted.", '"Half quoted.'),
    "highlighted_sections": ({"value": 1}, "This is *key*.", "Nothing here.", "Not ** this"),
}


def test_there_are_at_least_fifteen_constraint_types_and_all_are_covered():
    assert len(TYPES) >= 15 and set(CASES) == set(TYPES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_constraint_accepts_satisfying_and_rejects_violating_text(name):
    params, good, bad, near = CASES[name]
    constraint = build({"type": name, **params})
    assert constraint.check(good) is True
    assert constraint.check(bad) is False
    assert constraint.check(near) is False
    assert constraint.describe()


@pytest.mark.parametrize("spec", [{"type": "nope"}, {"type": "word_count"}, {"type": "title", "extra": 1}, "x"])
def test_bad_constraint_specs_are_data_errors(spec):
    with pytest.raises(ValueError):
        build(spec)


@pytest.fixture(scope="module")
def client():
    with TestClient(InstructionFollowing("if", KEEP_SESSIONS).build_app()) as c:
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.mark.parametrize("text,reward,strict", [
    ("a quiet autumn note. the leaves fall. that is all.", 1.0, 1.0),
    ("A quiet autumn note. that is all.", 2 / 3, 0.0),                         # one capital letter
    ("a quiet note, really. that is all.", 2 / 3, 0.0),                        # one comma
    ("<think>Plan: lowercase, no commas.</think>a quiet note. that is all.", 1.0, 1.0),
    ("a quiet note. that is all. bye", 2 / 3, 0.0),                            # something follows the phrase
    ("", 1 / 3, 0.0),                                                          # empty: only "no commas" holds
])
def test_verify_reward_and_strict(client, text, reward, strict):
    body = client.post("/verify", json={**ROWS[4], "response": answer(text)}).json()
    assert body["reward"] == pytest.approx(reward) and body["strict"] == strict
    assert [r["type"] for r in body["constraint_results"]] == ["all_lowercase", "no_commas", "ends_with"]


def test_verify_a_formatted_answer(client):
    good = "<<Why libraries>>\n* quiet\n* free books\n- warm\n\nP.S. bring a card"
    assert client.post("/verify", json={**ROWS[5], "response": answer(good)}).json()["reward"] == 1.0
    two_bullets = good.replace("- warm\n", "")
    assert client.post("/verify", json={**ROWS[5], "response": answer(two_bullets)}).json()["reward"] == \
        pytest.approx(2 / 3)
    fenced_json = '```json\n{"name": "Harbor", "description": "a lantern glows"}\n```'
    assert client.post("/verify", json={**ROWS[6], "response": answer(fenced_json)}).json()["reward"] == 1.0


@pytest.mark.parametrize("fields, named", [
    ({}, "constraints: Field required"),
    ({"constraints": []}, "constraints: List should have at least 1 item"),
    ({"constraints": [{"type": "word_count", "relation": "at_least", "value": 5}, {"type": "nope"}]},
     "constraints.1: unknown constraint type 'nope'"),
])
def test_a_row_without_usable_constraints_is_the_rows_error_not_a_zero(fields, named):
    with TestClient(InstructionFollowing("if", KEEP_SESSIONS).build_app()) as c:
        row = {"responses_create_params": ROWS[0]["responses_create_params"], **fields, "response": answer("x")}
        reply = c.post("/verify", json=row)
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
    assert named in reply.json()["error"]["message"]


@pytest.mark.timeout(120)
def test_adversarial_output_gets_a_reward():
    for row in ROWS:
        assert_verify_survives(InstructionFollowing("if", KEEP_SESSIONS), row)


def test_example_rows_and_generator():
    assert len(ROWS) >= 5
    for row in ROWS:
        TaskRow.model_validate(row)
        for spec in row["constraints"]:
            assert build(spec).describe() in row["responses_create_params"]["input"][-1]["content"]
    rows = make_rows(make_row, "train", 200, 3)
    assert rows == make_rows(make_row, "train", 200, 3) and rows[:5] == make_rows(make_row, "train", 5, 3)
    assert rows[:20] != make_rows(make_row, "validation", 20, 3)
    for row in rows:
        kinds = [TYPES[s["type"]] for s in row["constraints"]]
        groups = [k.group for k in kinds if k.group]
        assert len(groups) == len(set(groups)), row["constraints"]             # no two of one group
        assert not {c for k in kinds for c in k.conflicts} & set(groups)     # no conflicting pair
    assert len({s["type"] for row in rows for s in row["constraints"]}) == len(TYPES)  # every type is drawn
