"""Finding servers by name through the head server, and calling them (NeMo Gym's `nemo_gym.server_utils`).

`ServerClient.load_from_global_config(head)` reads the head server's `GET /global_config_dict_yaml` (our registry
answers it) and then addresses servers by instance name. Requests go through gym-rl's process-wide async client
(keep-alive, bounded timeouts); a failed status raises `GymHTTPError`, which carries `.status` (what NeMo RL
classifies into infrastructure vs data failures) and `.response_content`.

A head server bound beyond loopback (NeMo RL asks for 0.0.0.0) answers only with the stack token. The RunHelper
of this process records its stack's token by head port (`remember_head_token`), and the client sends it to that
head; the token never enters the config.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict

from gym_core.auth import bearer
from gym_core.client import get_client
from nemo_gym.config_types import BaseServerConfig
from nemo_gym.global_config import DEFAULT_HEAD_SERVER_PORT, HEAD_SERVER_KEY_NAME, get_global_config_dict

__all__ = ["DEFAULT_HEAD_SERVER_PORT", "HEAD_SERVER_KEY_NAME", "BaseServerConfig", "GymHTTPError", "ServerClient",
           "get_response_json", "raise_for_status"]

_HEAD_TOKENS: dict[int, str] = {}  # head port -> stack token, for the stacks this process runs
DEFAULT_REQUEST_TIMEOUT_S = 3600.0  # one /run is a whole episode; NeMo Gym sets none, we never wait forever
HEAD_TIMEOUT_S = 30.0


class GymHTTPError(RuntimeError):
    """A server answered an error status; `status` and `response_content` are kept for the caller."""

    def __init__(self, status: int, url: str, response_content: str) -> None:
        super().__init__(f"{url} answered HTTP {status}: {response_content[:500]}")
        self.status = status
        self.url = url
        self.response_content = response_content

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray's actor boundary (NeMo RL's concern)
        return (GymHTTPError, (self.status, self.url, self.response_content))


class ServerClient(BaseModel):
    """Calls servers by their instance name in the global config (NeMo Gym's class of the same name)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    head_server_config: BaseServerConfig
    global_config_dict: DictConfig
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    @classmethod
    def load_head_server_config(cls) -> BaseServerConfig:
        """The head server of this process's global config."""
        head = get_global_config_dict().get(HEAD_SERVER_KEY_NAME)
        if head is None:
            raise ValueError(f"the global config has no {HEAD_SERVER_KEY_NAME!r}: is a stack running in this process "
                             "(RunHelper.start)? Otherwise pass head_server_config")
        return BaseServerConfig.model_validate(OmegaConf.to_container(head, resolve=True))

    @classmethod
    def load_from_global_config(cls, head_server_config: BaseServerConfig | None = None) -> ServerClient:
        """A client knowing every server the head server reports."""
        head = head_server_config or cls.load_head_server_config()
        try:
            reply = httpx.get(f"{head.url}/global_config_dict_yaml", headers=bearer(_HEAD_TOKENS.get(head.port)),
                              timeout=HEAD_TIMEOUT_S)
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise ValueError(f"could not read the global config from the head server at {head.url} ({exc}); "
                             "is the stack running, and is that its host and port?") from None
        config = OmegaConf.create(json.loads(reply.content.decode()))
        return cls(head_server_config=head, global_config_dict=config)

    def base_url(self, server_name: str) -> str:
        """`http://host:port` of the instance called `server_name`."""
        entry = self.global_config_dict.get(server_name)
        try:
            block = next(iter(next(iter(entry.values())).values()))
            return f"http://{block['host']}:{block['port']}"
        except (AttributeError, StopIteration, KeyError, TypeError):
            known = ", ".join(k for k, v in self.global_config_dict.items() if isinstance(v, DictConfig)) or "none"
            raise ValueError(f"no server instance named {server_name!r} in the head server's config "
                             f"(instances: {known})") from None

    async def request(self, server_name: str, url_path: str, method: str, **kwargs: Any) -> httpx.Response:
        """Send one request to a server by name; `json` may be a dict or a pydantic model."""
        body = kwargs.pop("json", None)
        if isinstance(body, BaseModel):
            body = body.model_dump(exclude_unset=True)
        url = self.base_url(server_name)
        if method.upper() == "POST":
            return await get_client().post(url, url_path, body, headers=kwargs.get("headers"), timeout=self.timeout_s)
        return await get_client().get(url, url_path, timeout=self.timeout_s)

    async def post(self, server_name: str, url_path: str, **kwargs: Any) -> httpx.Response:
        """POST to a server by name."""
        return await self.request(server_name, url_path, "POST", **kwargs)

    async def get(self, server_name: str, url_path: str, **kwargs: Any) -> httpx.Response:
        """GET from a server by name."""
        return await self.request(server_name, url_path, "GET", **kwargs)


def remember_head_token(port: int, token: str | None) -> None:
    """Record (or, with None, forget) the stack token of the head server this process runs on `port`."""
    if token is None:
        _HEAD_TOKENS.pop(port, None)
    else:
        _HEAD_TOKENS[port] = token


async def raise_for_status(response: httpx.Response) -> None:
    """Raise GymHTTPError for a 4xx/5xx answer."""
    if response.is_error:
        raise GymHTTPError(response.status_code, str(response.request.url), response.text)


async def get_response_json(response: httpx.Response) -> Any:
    """The answer's JSON body."""
    return orjson.loads(response.content)
