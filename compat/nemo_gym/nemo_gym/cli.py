"""Starting and stopping a stack from a NeMo Gym global config (NeMo Gym's `nemo_gym.cli.RunHelper`).

```python
rh = RunHelper()
rh.start(GlobalConfigDictParserConfig(initial_global_config_dict=DictConfig({...}), skip_load_from_cli=True))
rh.poll()       # raises if the head server or a server process died
rh.shutdown()
```

`start` parses the global config, translates its server instances (nemo_gym.gym_config) and starts them with
gym-rl's launcher; the registry is the head server, listening where the config's `head_server` says (NeMo RL
asks for 0.0.0.0 and a free port, and connects through the node's address). It returns once every server
answers `GET /health`; the config then holds each server's real host and port. A head bound beyond loopback
needs the stack token (gym_core/auth.py); this process's ServerClient sends it (server_utils).
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from omegaconf import DictConfig, open_dict

from gym_core.launcher import Stack, launch
from nemo_gym.global_config import (
    DEFAULT_HEAD_SERVER_PORT,
    HEAD_SERVER_KEY_NAME,
    GlobalConfigDictParserConfig,
    get_global_config_dict,
    reset_global_config_dict,
    server_instances,
)
from nemo_gym.gym_config import to_gym_config
from nemo_gym.server_utils import remember_head_token

__all__ = ["GlobalConfigDictParserConfig", "RunHelper"]

DEFAULT_HEAD_HOST = "127.0.0.1"


class RunHelper:
    """Runs the servers of a NeMo Gym global config as one gym-rl stack."""

    def __init__(self) -> None:
        self._exit: contextlib.ExitStack | None = None
        self._stack: Stack | None = None
        self._head_port = 0

    @property
    def stack(self) -> Stack:
        """The running stack (servers, pids, URLs, the registry URL)."""
        if self._stack is None:
            raise RuntimeError("no stack is running: call RunHelper.start first")
        return self._stack

    def start(self, global_config_dict_parser_config: GlobalConfigDictParserConfig) -> None:
        """Parse the config, start the head server and every server instance, wait until all are healthy."""
        if self._stack is not None:
            raise RuntimeError("this RunHelper already runs a stack; shutdown() it first")
        config = get_global_config_dict(global_config_dict_parser_config=global_config_dict_parser_config)
        head = config.get(HEAD_SERVER_KEY_NAME) or {}
        servers = to_gym_config(config)
        exit_stack = contextlib.ExitStack()
        try:
            self._stack = exit_stack.enter_context(launch(
                servers, registry_port=int(head.get("port", DEFAULT_HEAD_SERVER_PORT)),
                registry_host=str(head.get("host", DEFAULT_HEAD_HOST))))
        except BaseException:
            exit_stack.close()
            reset_global_config_dict()
            raise
        self._exit = exit_stack
        self._head_port = int(urlsplit(self._stack.registry_url).port or 0)
        remember_head_token(self._head_port, self._stack.auth.token)
        _record_addresses(config, self._stack)
        print(self._stack.table(), flush=True)

    def wait_for_spinup(self) -> None:
        """Nothing to wait for: `start` returns once every server is healthy."""

    def poll(self) -> None:
        """Raise RuntimeError naming the server (and its last log lines) if any process has exited."""
        for name, server in self.stack.servers.items():
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(f"Process `{name}` finished unexpectedly (exit code {code}); its last log "
                                   f"lines:\n{server.tail()}")

    def shutdown(self) -> None:
        """Stop every server and the head server (SIGTERM, then SIGKILL after a grace period)."""
        exit_stack, self._exit, self._stack = self._exit, None, None
        if exit_stack is not None:
            remember_head_token(self._head_port, None)
            exit_stack.close()
            reset_global_config_dict()

    def run_forever(self) -> None:
        """Serve until a server dies or Ctrl-C; always stop everything."""
        try:
            if self.stack.wait() is not None:  # a server exited (None: a stop was requested, e.g. `gym down`)
                self.poll()
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()


def _record_addresses(config: DictConfig, stack: Stack) -> None:
    """Write each started server's real host and port into its block of the global config."""
    started = server_instances(config)
    with open_dict(config):
        for name, server in stack.servers.items():
            if name in started and server.url:
                parts = urlsplit(server.url)
                block = started[name][2]
                block["host"], block["port"] = parts.hostname, parts.port
