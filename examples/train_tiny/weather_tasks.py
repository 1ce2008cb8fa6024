"""Synthetic weather tasks and demonstrations for the tiny model (the environment is environments/weather).

A task is a NeMo Gym row: the weather system prompt and tool, a question naming one of the environment's cities,
and the expected answer fields its verifier reads. A demonstration is the whole episode the tool-calling agent
runs: the question, a `get_weather` call, the tool's reply (exactly the JSON the weather server returns) and an
answer. The questions are made from templates that never produce the phrasings of the environment's
data/example.jsonl, which `make demo` and the evaluations use.

The demonstrations are deliberately mixed: `COMPLETE_SHARE` of the answers state the temperature and the
condition (reward 1), the others only the condition (reward 0; the verifier wants both). A model fine-tuned on
them calls the tool reliably but earns reward only when it happens to pick a complete answer; reinforcement
learning on the verifier's reward is what teaches it that the temperature matters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from environments.weather.app import WEATHER

EXAMPLES = Path(__file__).resolve().parents[2] / "environments" / "weather" / "data" / "example.jsonl"
SYSTEM = ("You are a weather assistant. Use the get_weather tool, then answer with the temperature in °C and the "
          "condition.")
TOOL = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"additionalProperties": False, "properties": {"city": {
            "type": "string", "description": "the city name, e.g. \"Paris\""}}, "required": ["city"],
            "type": "object"}}
QUESTIONS = [
    "What is the weather in {city}?", "What's the weather in {city} today?", "How is the weather in {city}?",
    "Weather in {city}, please.", "Can you check the weather in {city}?", "I'm flying to {city}. What's it like?",
    "Do I need a coat in {city} today?", "Is it warm in {city} right now?", "What should I wear in {city}?",
    "Give me the weather for {city}.", "What's it like outside in {city}?", "Any rain in {city} today?",
    "How cold is it in {city}?", "Check {city} weather for me.", "Tell me about the weather in {city}.",
    "Is it sunny in {city}?", "Current conditions in {city}?", "I'm in {city}. How's the weather?",
    "What's the temperature in {city}?", "Planning a walk in {city}. Weather?",
]
COMPLETE = ["It is {temp}°C and {condition} in {city}.", "{city}: {condition}, {temp}°C."]
INCOMPLETE = ["It is {condition} in {city} today.", "Expect {condition} weather in {city}."]
COMPLETE_SHARE = 0.4


def example_questions() -> set[str]:
    """The questions of the environment's example rows (kept out of the synthetic tasks)."""
    rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    return {row["responses_create_params"]["input"][-1]["content"] for row in rows}


def task(question: str, city: str) -> dict[str, Any]:
    """One task row of the weather environment."""
    temperature, condition = WEATHER[city]
    return {"responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": question}], "tools": [TOOL]},
            "city": city, "expected_temperature_c": temperature, "expected_condition": condition}


def tasks(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` tasks, a seeded sample of (question template, city) pairs."""
    rng = random.Random(seed)
    held_out = example_questions()
    out = []
    while len(out) < count:
        city = rng.choice(sorted(WEATHER))
        question = rng.choice(QUESTIONS).format(city=city)
        if question not in held_out:
            out.append(task(question, city))
    return out


def demonstration(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The episode's messages in OpenAI chat format: system, user, tool call, tool reply, answer."""
    city = row["city"]
    temperature, condition = WEATHER[city]
    reply = json.dumps({"city": city, "temperature_c": temperature, "condition": condition}, separators=(",", ":"))
    styles = COMPLETE if rng.random() < COMPLETE_SHARE else INCOMPLETE
    answer = rng.choice(styles).format(city=city, temp=temperature, condition=condition)
    call = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
    return [*row["responses_create_params"]["input"],
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": reply},
            {"role": "assistant", "content": answer}]
