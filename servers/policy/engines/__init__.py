"""Policy engines: the interface in `base`, one module per engine."""

from servers.policy.engines.base import ENGINES, Engine, EngineConfig, EngineError, create_engine

__all__ = ["ENGINES", "Engine", "EngineConfig", "EngineError", "create_engine"]
