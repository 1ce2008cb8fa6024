"""Multi-step tools: answer a question that needs several lookups, then submit the answer through a tool."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gym_core.protocol import dumps
from servers.resources import Attempt, ResourcesServer, Session, TaskRow, ToolError, VerifyRequest, row_fields, tool

MAX_ANSWER_CHARS = 200


class Employee(BaseModel):
    """A person in the directory."""

    id: str
    name: str
    title: str
    department_id: str


class Department(BaseModel):
    """A department: its budget in dollars and its manager's employee id."""

    id: str
    name: str
    budget: int | float
    manager_id: str


class Directory(BaseModel):
    """The company directory a task row carries as `database`."""

    employees: list[Employee]
    departments: list[Department]


class MultiStepRow(BaseModel):
    """The task row's own fields: the directory, the answer to submit, and (informational) the question's kind."""

    database: Directory
    expected_answer: str | int | float
    question_kind: str | None = None


class MultiStepTools(ResourcesServer):
    """A company directory (seeded from the row) behind three lookup tools and `submit_answer`."""

    row_model = MultiStepRow

    async def seed(self, row: TaskRow, session: Session) -> None:
        """Load the row's `database` into the session; no calls or submission yet."""
        session.state.update(database=row_fields(MultiStepRow, row).database, calls=[], submitted=None)

    def _db(self, session: Session, name: str, args: dict[str, Any]) -> Directory:
        if "database" not in session.state:
            raise ToolError("no task is loaded for this session: call /seed_session with the task row first")
        session.state["calls"].append({"tool": name, **args})
        return session.state["database"]

    @tool
    async def find_employee(self, session: Session, name: str) -> dict:
        """Find an employee by full name.

        Args:
            name: the employee's full name, e.g. "Ada Okafor"
        """
        wanted = name.strip().lower()
        for person in self._db(session, "find_employee", {"name": name}).employees:
            if person.name.lower() == wanted:
                return {"employee_id": person.id, "name": person.name, "department_id": person.department_id}
        raise ToolError(f"no employee named {name[:100]!r}")

    @tool
    async def get_employee(self, session: Session, employee_id: str) -> dict:
        """Get an employee's record by id.

        Args:
            employee_id: the id returned by find_employee or get_department, e.g. "E3"
        """
        for person in self._db(session, "get_employee", {"employee_id": employee_id}).employees:
            if person.id == employee_id:
                return {"employee_id": person.id, "name": person.name, "department_id": person.department_id,
                        "title": person.title}
        raise ToolError(f"no employee with id {employee_id[:100]!r}")

    @tool
    async def get_department(self, session: Session, department_id: str) -> dict:
        """Get a department by id: its name, budget in dollars and manager's employee id.

        Args:
            department_id: the department id, e.g. "D2"
        """
        for department in self._db(session, "get_department", {"department_id": department_id}).departments:
            if department.id == department_id:
                return {"department_id": department.id, "name": department.name, "budget": department.budget,
                        "manager_id": department.manager_id}
        raise ToolError(f"no department with id {department_id[:100]!r}")

    @tool
    async def submit_answer(self, session: Session, answer: str) -> dict:
        """Submit the final answer to the question. Only the first submission counts.

        Args:
            answer: the answer, e.g. "120000" or "Ada Okafor"
        """
        self._db(session, "submit_answer", {"answer": answer[:MAX_ANSWER_CHARS]})
        if session.state["submitted"] is not None:
            return {"status": "ignored: an answer was already submitted"}
        session.state["submitted"] = answer[:MAX_ANSWER_CHARS]
        return {"status": "recorded"}

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 when the first submitted answer equals `expected_answer`, else 0 (text answers do not count)."""
        expected = row_fields(MultiStepRow, row).expected_answer
        submitted = session.state.get("submitted")
        calls = session.state.get("calls", [])
        correct = submitted is not None and answers_equal(submitted, expected)
        return {
            "reward": float(correct),
            "submitted": submitted is not None,
            "submitted_answer": submitted,
            "lookups": sum(1 for c in calls if c["tool"] != "submit_answer"),
            "tool_calls": [c["tool"] for c in calls][:50],
        }

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: look up each person the question names, their department (and its manager), then
        submit the expected answer; the same lookups, then another department's budget or another person."""
        task = row_fields(MultiStepRow, row)
        database, expected = task.database, task.expected_answer
        question = dumps(row.responses_create_params.model_dump(mode="json")["input"]).decode()
        departments = {d.id: d for d in database.departments}
        lookups: list[tuple[str, dict[str, Any]]] = []
        for person in (e for e in database.employees if e.name in question):
            department = departments[person.department_id]
            lookups += [("find_employee", {"name": person.name}), ("get_department", {"department_id": department.id})]
            if task.question_kind == "manager":
                lookups.append(("get_employee", {"employee_id": department.manager_id}))
        if isinstance(expected, str):
            wrong: Any = next(e.name for e in database.employees if not answers_equal(e.name, expected))
        else:
            wrong = next(d.budget for d in database.departments if d.budget != expected)
        return (Attempt(f"The answer is {expected}.", (*lookups, ("submit_answer", {"answer": str(expected)}))),
                Attempt(f"The answer is {wrong}.", (*lookups, ("submit_answer", {"answer": str(wrong)}))))


def answers_equal(given: str, expected: Any) -> bool:
    """Numbers compare as numbers ("$120,000" == 120000); text case- and space-insensitively."""
    text = given.strip().strip(".").strip()
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        digits = text.replace(",", "").replace("$", "").replace("_", "").strip()
        if len(digits) > 30:
            return False
        try:
            return float(digits) == float(expected)
        except ValueError:
            return False
    return " ".join(text.lower().split()) == " ".join(str(expected).lower().split())
