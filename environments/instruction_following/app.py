"""Instruction following: a writing task with verifiable constraints; reward = the fraction satisfied."""

from __future__ import annotations

from environments.instruction_following.constraints import build
from servers.answers import strip_reasoning
from servers.resources import ResourcesServer, Session, VerifyRequest, final_answer


class InstructionFollowing(ResourcesServer):
    """IFEval-style constraints checked by code; `strict` is the all-or-nothing variant."""

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward = satisfied / all constraints; `strict` = 1 only when every one holds."""
        specs = row.extra.get("constraints")
        if not isinstance(specs, list) or not specs:
            raise ValueError("an instruction_following row needs a non-empty `constraints` list")
        constraints = [build(spec) for spec in specs]
        text = strip_reasoning(final_answer(row.response))
        results = [c.check(text) for c in constraints]
        return {
            "reward": sum(results) / len(results),
            "strict": float(all(results)),
            "constraint_results": [{"type": c.type.name, "satisfied": ok} for c, ok in zip(constraints, results)],
        }

