"""Weather: one tool that reads a fixed table, and a reward for answering with the right weather."""

from __future__ import annotations

import re

from pydantic import BaseModel

from gym_core.protocol import TaskRow, VerifyRequest
from servers.resources import Attempt, ResourcesServer, Session, ToolError, final_answer, row_fields, tool

# A fixed table, so rewards are reproducible: city -> (temperature in °C, condition).
WEATHER: dict[str, tuple[int, str]] = {
    "Paris": (18, "sunny"),
    "London": (12, "rainy"),
    "Tokyo": (24, "cloudy"),
    "New York": (21, "windy"),
    "Sydney": (27, "sunny"),
    "Reykjavik": (3, "snowy"),
    "Cairo": (35, "clear"),
    "Lima": (19, "foggy"),
}


class WeatherRow(BaseModel):
    """The fields a weather task row carries besides the conversation."""

    city: str | None = None  # informational: the city the question names
    expected_condition: str
    expected_temperature_c: int


class Weather(ResourcesServer):
    """Answer weather questions with the `get_weather` tool."""

    row_model = WeatherRow

    @tool
    async def get_weather(self, session: Session, city: str) -> dict:
        """Get the current weather for a city.

        Args:
            city: the city name, e.g. "Paris"
        """
        key = next((name for name in WEATHER if name.lower() == city.strip().lower()), None)
        if key is None:
            raise ToolError(f"unknown city {city!r}; known cities: {', '.join(WEATHER)}")
        session.state.setdefault("looked_up", []).append(key)
        temperature, condition = WEATHER[key]
        return {"city": key, "temperature_c": temperature, "condition": condition}

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 when the final answer names the expected condition and temperature, else 0."""
        expected = row_fields(WeatherRow, row)
        answer = final_answer(row.response).lower()
        condition_ok = expected.expected_condition.lower() in answer
        # Longer digit runs cannot be a temperature (and int() refuses past 4,300 digits).
        numbers = {int(n) for n in re.findall(r"-?\d+", answer) if len(n) <= 12}
        temperature_ok = expected.expected_temperature_c in numbers
        return {
            "reward": float(condition_ok and temperature_ok),
            "condition_correct": condition_ok,
            "temperature_correct": temperature_ok,
            "used_tool": bool(session.state.get("looked_up")),
        }

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: look the city up and report it; report a neighbouring temperature instead."""
        expected = row_fields(WeatherRow, row)
        city, condition, temperature = expected.city, expected.expected_condition, expected.expected_temperature_c
        lookup = (("get_weather", {"city": city}),)
        return (Attempt(f"It is {temperature} °C and {condition} in {city}.", lookup),
                Attempt(f"It is {temperature + 1} °C and {condition} in {city}.", lookup))
