"""The tool-calling agent: the episode loop between a policy server and a resources server.

`POST /run` takes a task row: seed the rollout's session on the resources server, then loop — ask the policy
(`/v1/responses`, the full history each step), run every function call against the resources server,
append the outputs — until the model answers without tool calls or `max_steps` model calls were made, then
`/verify` and return the verify response, whose `response.output` is the whole episode with the policy's
token fields still on the model items. `POST /v1/responses` runs the same loop without seeding or verifying.
An environment with a simulated user may answer the model with a new user message instead of ending the
episode (servers/agents/user_turns.py).

Each server issues a rollout's session itself (`/seed_session` on the resources server, the first call on the
policy): the agent keeps the `X-Session-Id` each server returned and sends it back to that server only; cookies a
server sets are sent back to it too, so NeMo Gym servers (which keep a rollout's state by cookie) work unchanged.

What the model did wrong (arguments that are not JSON, a tool that does not exist, arguments the tool
rejects) becomes a `function_call_output` the model sees. What the infrastructure did wrong (a server down,
an error status from the policy, the episode deadline) is an HTTP error from this server, never a reward.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, ClassVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from gym_core.client import ServerNotRegistered, get_client
from gym_core.limits import truncate_echo
from gym_core.protocol import (
    MODEL_VERSION_HEADER,
    ErrorBody,
    ErrorDetail,
    ResponseCreateParams,
    ResponseUsage,
    TaskRow,
    dumps,
    loads,
)
from gym_core.server import (
    SESSION_HEADER,
    GymServer,
    JSONResponse,
    ServerConfig,
    describe_validation_error,
    error_response,
)
from servers.agents.user_turns import UserTurns

# Statuses of a tool call that are the model's doing; their error body is shown to the model.
MODEL_VISIBLE_STATUSES = frozenset({400, 404, 413, 422})
# Statuses with which a server refuses what the task row put in a request (seed, verify, the first model call):
# the row's fault, answered 422 `invalid_row` so the collector records it as such, not as a server failure.
ROW_FAULT_STATUSES = frozenset({400, 413, 422})


class ToolCallingConfig(ServerConfig):
    """The agent block: which policy and resources servers to use, and the episode's limits."""

    policy: str
    resources: str
    max_steps: int = Field(8, ge=1)  # model calls per episode
    max_user_turns: int = Field(8, ge=0)  # user messages an environment may add per episode (0: never ask)
    episode_timeout_s: float = Field(600.0, gt=0)  # seed + all steps + verify


@dataclass
class Episode:
    """One rollout's identity and limits while it runs."""

    deadline: float  # event-loop time
    # The session each server issued for this rollout (its X-Session-Id), sent back to that server only.
    sessions: dict[str, str] = field(default_factory=dict)
    # Cookies each server set, sent back to it: NeMo Gym servers keep a rollout's state by cookie.
    cookies: dict[str, dict[str, str]] = field(default_factory=dict)

    def headers_for(self, role: str) -> dict[str, str]:
        """Headers naming this rollout to a server: the session it issued, plus its cookies."""
        headers = {SESSION_HEADER: self.sessions[role]} if role in self.sessions else {}
        if self.cookies.get(role):
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies[role].items())
        return headers

    def keep_session(self, role: str, reply: httpx.Response) -> None:
        """Remember the session and the cookies a server returned."""
        issued = reply.headers.get(SESSION_HEADER)
        if issued:
            self.sessions[role] = issued
        for header in reply.headers.get_list("set-cookie"):
            self.cookies.setdefault(role, {}).update(_set_cookie(header))


_PLAIN_COOKIE = re.compile(r"([!#%&'*+\-.^_`|~0-9A-Za-z]+)=([!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]*)")
_COOKIE_FLAGS = frozenset({"secure", "httponly"})
_COOKIE_ATTRIBUTES = _COOKIE_FLAGS | {"expires", "path", "comment", "domain", "max-age", "version", "samesite"}


def _set_cookie(header: str) -> dict[str, str]:
    """The cookie a Set-Cookie header sets, as `SimpleCookie` reads it ({} if it is malformed)."""
    # Plain headers like our servers' (name=value; Path=/; HttpOnly) are read directly: SimpleCookie costs
    # ~25 µs each; anything else (quotes, odd names or attributes) still goes through it.
    first, *attributes = header.split(";")
    plain = _PLAIN_COOKIE.fullmatch(first.strip())
    if plain and plain.group(1).lower() not in _COOKIE_ATTRIBUTES and all(map(_plain_attribute, attributes)):
        return {plain.group(1): plain.group(2)}
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _cookie_pairs(header: str) -> dict[str, str]:
    """The name=value pairs of a Cookie request header."""
    pairs = (part.strip().partition("=") for part in header.split(";"))
    return {name: value for name, eq, value in pairs if name and eq}


def _plain_attribute(part: str) -> bool:
    key, equals, _ = part.strip().partition("=")
    return not key or (key.lower() in _COOKIE_ATTRIBUTES and bool(equals or key.lower() in _COOKIE_FLAGS))


class EpisodeError(Exception):
    """The episode could not be completed for a reason outside the model; answered as an HTTP error."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class ToolCallingAgent(GymServer):
    """Runs tool-calling episodes: `POST /run` (seed, loop, verify) and `POST /v1/responses` (loop only)."""

    kind: ClassVar[str] = "agent"
    config_model: ClassVar[type[BaseModel]] = ToolCallingConfig

    def __init__(self, name: str, config: dict[str, Any] | BaseModel | None = None) -> None:
        super().__init__(name, config)
        self.user_turns = UserTurns()

    def add_routes(self, app: FastAPI) -> None:
        """Register /run, /v1/responses and /aggregate_metrics."""
        app.add_api_route("/run", self._run_route, methods=["POST"])
        app.add_api_route("/v1/responses", self._responses_route, methods=["POST"])
        app.add_api_route("/aggregate_metrics", self._metrics_route, methods=["POST"])

    def new_episode(self, resources_session: str | None = None, cookie: str | None = None) -> Episode:
        """An episode whose deadline starts now; a caller that seeded the resources server itself passes the
        session (and cookies) that server gave it."""
        episode = Episode(asyncio.get_running_loop().time() + self.config.episode_timeout_s)
        if resources_session:
            episode.sessions["resources"] = resources_session
        if cookie:
            episode.cookies["resources"] = _cookie_pairs(cookie)
        return episode

    async def run(self, row: dict[str, Any], episode: Episode) -> bytes:
        """One whole rollout of a task row; returns the verify response's JSON."""
        resources = self.config.resources
        await self._call("resources", resources, "/seed_session", row, episode, row_fault=True)
        response = await self.loop(row["responses_create_params"], episode)
        reply = await self._call("resources", resources, "/verify", {**row, "response": response}, episode,
                                 row_fault=True)
        verified = _json_object(reply, "resources", resources, "/verify")
        if not isinstance(verified.get("reward"), (int, float)):
            raise EpisodeError(502, "resources_error", f"resources server {resources!r} /verify returned no "
                                                       f"numeric 'reward' (keys: {sorted(verified)})")
        if "response" in verified:  # the usual case: pass the verify body on untouched
            return reply.content
        return dumps({**verified, "response": response})

    async def loop(self, params: dict[str, Any], episode: Episode) -> dict[str, Any]:
        """The model <-> tools loop; returns the episode as one Response (all output items, summed usage)."""
        items = params["input"]
        history = [{"type": "message", "role": "user", "content": items}] if isinstance(items, str) else list(items)
        offered = {t.get("name") for t in params.get("tools") or [] if t.get("type", "function") == "function"}
        outputs: list[dict[str, Any]] = []
        usage = ResponseUsage()
        last: dict[str, Any] = {}
        user_turns = 0
        for step in range(self.config.max_steps):
            # The first model call sends only what the row holds: a refusal of it is the row's fault.
            reply = await self._call("policy", self.config.policy, "/v1/responses",
                                     {**params, "input": history + outputs}, episode, row_fault=step == 0)
            last = _json_object(reply, "policy", self.config.policy, "/v1/responses")
            produced = last.get("output")
            if not isinstance(produced, list) or not all(isinstance(item, dict) for item in produced):
                raise EpisodeError(502, "policy_error", f"policy server {self.config.policy!r} returned a "
                                                        "response without an `output` list of items")
            _stamp_model_version(produced, reply.headers.get(MODEL_VERSION_HEADER))
            outputs.extend(produced)
            _add_usage(usage, last.get("usage"))
            calls = [item for item in produced if item.get("type") == "function_call"]
            for call in calls:
                output = await self._tool_output(call, offered, episode)
                # id and status make it a Responses output item (the SDK's ResponseFunctionToolCallOutputItem).
                outputs.append({"type": "function_call_output", "id": f"fco_{uuid.uuid4().hex}",
                                "call_id": call.get("call_id"), "output": output, "status": "completed"})
            if last.get("incomplete_details"):
                break
            if not calls and any(i.get("type") == "message" for i in produced):
                turn = None
                if user_turns < self.config.max_user_turns and step < self.config.max_steps - 1:
                    turn = await self._user_turn(outputs, episode)
                if turn is None:
                    break
                outputs.append(turn)
                user_turns += 1
        return {**last, "output": outputs, "usage": usage}

    async def _user_turn(self, outputs: list[dict[str, Any]], episode: Episode) -> dict[str, Any] | None:
        """The environment's next user message after the model's answer, if it adds user turns."""
        try:
            return await self.user_turns.next(self._call, self.config.resources, outputs, episode)
        except ValueError as exc:
            raise EpisodeError(502, "resources_error", str(exc)) from None

    async def _tool_output(self, call: dict[str, Any], offered: set[str], episode: Episode) -> str:
        """The text the model sees for one function call: the tool's result, or an error it can act on."""
        name = call.get("name")
        if name not in offered:
            available = ", ".join(sorted(offered)) or "none"
            return _model_error("unknown_tool", f"no tool named {name!r}; available tools: {available}")
        try:
            arguments = loads(call.get("arguments") or "{}")
        except ValueError as exc:
            return _model_error("invalid_arguments", f"arguments of {name!r} are not valid JSON ({exc})")
        if not isinstance(arguments, dict):
            return _model_error("invalid_arguments", f"arguments of {name!r} must be a JSON object")
        reply = await self._call("resources", self.config.resources, f"/{name}", arguments, episode,
                                 ok=MODEL_VISIBLE_STATUSES)
        # Our servers answer UTF-8 JSON or text; decoding directly skips httpx's charset detection on every call.
        return reply.content.decode("utf-8", "replace")

    async def _call(self, role: str, server: str, path: str, body: Any, episode: Episode,
                    ok: frozenset[int] = frozenset(), row_fault: bool = False) -> httpx.Response:
        """POST to another server within the episode deadline; failures become `EpisodeError`s (with
        `row_fault`, a refusal in ROW_FAULT_STATUSES is the task row's: 422 `invalid_row`)."""
        remaining = episode.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _timeout(self.config.episode_timeout_s, role, path)
        try:
            reply = await get_client().post(server, path, body, headers=episode.headers_for(role),
                                            timeout=remaining)
        except httpx.TimeoutException:
            raise _timeout(self.config.episode_timeout_s, role, path) from None
        except (httpx.HTTPError, ServerNotRegistered) as exc:
            message = f"{role} server {server!r} failed on {path}: {exc}"
            raise EpisodeError(502, f"{role}_unreachable", message) from None
        if reply.is_success or reply.status_code in ok:
            episode.keep_session(role, reply)
            return reply
        error = _error_body(reply)
        if error is not None and error.error.type == "invalid_session":
            # The server no longer knows this rollout (it restarted, or the session expired): its state is gone,
            # so the episode cannot go on; the collector runs the rollout again (rollout/failures.py).
            raise EpisodeError(502, f"{role}_session_lost", f"{role} server {server!r} lost the rollout's session "
                                                            f"on {path}: {_error_message(reply)}")
        if row_fault and reply.status_code in ROW_FAULT_STATUSES:
            raise EpisodeError(422, "invalid_row", f"{role} server {server!r} refused the task row on {path} "
                                                   f"({reply.status_code}): {_error_message(reply)}; fix the row "
                                                   "(retrying it cannot help)")
        raise EpisodeError(502, f"{role}_error", f"{role} server {server!r} answered {reply.status_code} to "
                                                 f"{path}: {_error_message(reply)}")

    async def _run_route(self, request: Request) -> Response:
        try:
            row = loads(await request.body())
            TaskRow.model_validate(row)  # validate at the edge; the raw row is what travels on
        except (ValidationError, ValueError) as err:
            return _invalid(err, "/run expects a task row", "invalid_row")
        try:
            # A fresh session per rollout: a caller reusing one header or cookie must not merge rollouts.
            return Response(await self.run(row, self.new_episode()), media_type="application/json")
        except EpisodeError as err:
            return error_response(err.status, str(err), err.error_type)

    async def _responses_route(self, request: Request) -> Response:
        try:
            params = loads(await request.body())
            ResponseCreateParams.model_validate(params)
        except (ValidationError, ValueError) as err:
            return _invalid(err, "/v1/responses expects a Responses create body")
        # The caller may have seeded the resources server itself: use the session (or cookies) it got there.
        caller_session = request.headers.get(SESSION_HEADER) or request.headers.get("cookie")
        episode = self.new_episode(request.headers.get(SESSION_HEADER), request.headers.get("cookie"))
        try:
            return JSONResponse(await self.loop(params, episode))
        except EpisodeError as err:
            if caller_session and err.error_type == "resources_session_lost":
                # The session is the caller's, not one this agent started: naming an unknown one is its mistake.
                return error_response(410, f"{err}; send no session, or the one /seed_session returned",
                                      "invalid_session")
            return error_response(err.status, str(err), err.error_type)

    async def _metrics_route(self, request: Request) -> Response:
        """Metrics are the environment's to compute: the body (one piece, or an NDJSON part) goes on untouched."""
        forwarded = {k: v for k, v in request.headers.items() if k.lower() in _METRICS_HEADERS}
        try:
            reply = await get_client().request("POST", self.config.resources, "/aggregate_metrics",
                                               content=await request.body(), headers=forwarded)
        except (httpx.HTTPError, ServerNotRegistered) as exc:
            return error_response(502, f"resources server {self.config.resources!r} failed: {exc}", "resources_error")
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")


# What /aggregate_metrics passes on: the body's type and the part headers (servers/resources.py).
_METRICS_HEADERS = frozenset({"content-type", "x-gym-metrics-run", "x-gym-metrics-part", "x-gym-metrics-final"})


def _add_usage(total: ResponseUsage, usage: Any) -> None:
    """Add one model call's usage (details included) to the episode's; a malformed one counts nothing."""
    if isinstance(usage, dict):
        try:
            total.add(ResponseUsage.model_validate(usage))
        except ValidationError:
            pass


def _json_object(reply: httpx.Response, role: str, server: str, path: str) -> dict[str, Any]:
    try:
        body = loads(reply.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise EpisodeError(502, f"{role}_error", f"{role} server {server!r} {path} did not return a JSON object")
    return body


def _stamp_model_version(items: list[dict[str, Any]], version: str | None) -> None:
    """Tag the item that closes a model call (it carries the token ids) with the weights' version that made it."""
    for item in items:
        if version is not None and item.get("generation_token_ids") is not None:
            item["model_version"] = version


def _model_error(error_type: str, message: str) -> str:
    """An error result in the same shape the resources server uses, so the model sees one format."""
    return dumps(ErrorBody(error=ErrorDetail(type=error_type, message=message))).decode()


def _timeout(limit: float, role: str, path: str) -> EpisodeError:
    return EpisodeError(504, "episode_timeout", f"episode exceeded episode_timeout_s={limit:g} s "
                                                f"(waiting on the {role} server's {path})")


def _error_body(reply: httpx.Response) -> ErrorBody | None:
    """A server's `{"error": {"type", "message"}}` body, if that is what it sent."""
    try:
        return ErrorBody.model_validate_json(reply.content)
    except ValidationError:
        return None


def _error_message(reply: httpx.Response) -> str:
    """The message of a server's error body, else the start of its text (never the whole of either)."""
    body = _error_body(reply)
    return truncate_echo(body.error.message if body else reply.text, 1000)


def _invalid(err: Exception, what: str, error_type: str | None = None) -> JSONResponse:
    detail = describe_validation_error(err) if isinstance(err, ValidationError) else f"body is not JSON ({err})"
    return error_response(422, f"{what}: {detail}", error_type)
