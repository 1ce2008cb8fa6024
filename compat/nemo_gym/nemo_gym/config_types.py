"""Config models shared by the compatibility modules (NeMo Gym's `nemo_gym.config_types`)."""

from __future__ import annotations

from pydantic import BaseModel


class BaseServerConfig(BaseModel):
    """Where a server listens; NeMo RL builds one for the head server (`BaseServerConfig(host=..., port=...)`)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """`http://host:port`."""
        return f"http://{self.host}:{self.port}"
