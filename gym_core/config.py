"""The launch config: one YAML file (plus includes and `key=value` overrides) declaring every server.

```yaml
include: [common.yaml]                       # resolved relative to this file; this file wins
policy_url: ${env:POLICY_URL,http://127.0.0.1:8000/v1}
servers:
  policy:  {kind: policy, engine: openai, base_url: ${policy_url}}
  weather: {kind: resources, env: weather}   # environments/weather/app.py
  agent:   {kind: agent, impl: tool_calling, policy: policy, resources: weather, max_steps: 8}
```

Loading order: included files (earlier ones lose to later ones), then the file itself, then command-line
overrides, then `${...}` interpolation, then validation. Every error names the file (or override) and the
dotted key it is about, in one readable line per problem.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError

from gym_core.datasets import DatasetSpec, anchor_paths

Kind = Literal["policy", "resources", "agent", "external"]
KINDS: tuple[str, ...] = ("policy", "resources", "agent", "external")

# Fields of a server block that name another server, and the kind that server must have.
REFERENCE_KINDS: dict[str, str] = {"policy": "policy", "judge": "policy", "resources": "resources", "agent": "agent"}

INCLUDE_KEY = "include"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_OVERRIDE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_INTERP_RE = re.compile(r"\$\{([^${}]*)\}")
_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
# Keys whose values are credentials: kept off command lines, and the variables that fed them out of children.
_SECRET_KEY_RE = re.compile(r"(^|[_-])(api_?key|key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)

Path_ = tuple[str, ...]


class ConfigError(ValueError):
    """A config problem, reported as `file: key: what is wrong` lines."""


class RestartPolicy(BaseModel):
    """When the launcher restarts a server that exited (`restart:` in the server's block; gym_core/supervisor.py)."""

    model_config = ConfigDict(extra="forbid")

    # on-failure: a non-zero exit code or a signal (kill -9, OOM); a clean exit (code 0) stops the stack.
    when: Literal["on-failure", "always", "never"] = "on-failure"
    max_restarts: int = Field(5, ge=0)  # within window_s; one more exit gives up and stops the stack
    window_s: float = Field(600.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)  # before the first restart; doubles with each restart in the window
    max_backoff_s: float = Field(30.0, ge=0)

    def covers(self, exit_code: int) -> bool:
        """Whether an exit with this code is one to restart after."""
        return self.when == "always" or (self.when == "on-failure" and exit_code != 0)


class ServerSpec(BaseModel):
    """One server block. Fields beyond these are the server's own settings, passed to it verbatim."""

    model_config = ConfigDict(extra="allow")

    kind: Kind
    entrypoint: str | None = None  # "module:Class", or "module" holding exactly one GymServer subclass
    restart: RestartPolicy = Field(default_factory=RestartPolicy)  # the launcher's, not passed to the server
    datasets: list[DatasetSpec] | None = None  # task data of this server (gym_core/datasets.py)

    def block(self) -> dict[str, Any]:
        """The resolved config block handed to the server process."""
        return self.model_dump(exclude_none=True, exclude={"restart"})


class GymConfig(BaseModel):
    """A whole launch config. Top-level keys other than these are free variables for `${...}`."""

    model_config = ConfigDict(extra="allow")

    servers: dict[str, ServerSpec]
    # admin: the stack token guards the admin routes (registry changes, weight updates); required: every route
    # of every server but /health.
    auth: Literal["admin", "required"] = "admin"
    auth_token: SecretStr | None = None  # default: $GYM_AUTH_TOKEN, else a random token per `gym up`
    _secret_env: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def secret_env_vars(self) -> frozenset[str]:
        """Environment variables whose values went into a secret-looking key (`${env:VAR}` in `api_key:`...)."""
        return self._secret_env

    def of_kind(self, kind: str) -> list[str]:
        """Names of the servers of one kind, in config order (an external server counts as the kind it serves)."""
        return [name for name, spec in self.servers.items() if _serves(spec) == kind]


def load_config(source: str | Path | Mapping[str, Any] | GymConfig, overrides: Sequence[str] = ()) -> GymConfig:
    """Load, merge, override, interpolate and validate a config; raises ConfigError."""
    origins: dict[Path_, str] = {}
    if isinstance(source, GymConfig):
        data = source.model_dump(exclude_none=True)
        _record_origins(data, (), "<config object>", origins)
    elif isinstance(source, Mapping):
        data = _merge({}, dict(source), (), "<config dict>", origins)
    else:
        parsed = [parse_override(text) for text in overrides]
        variables = {keys[0]: value for keys, value in parsed if len(keys) == 1 and _is_scalar(value)}
        data = _load_file(Path(source), [], origins, variables)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, keys, value, f"override '{text}'", origins)
    interpolator = _Interpolator(data, origins)
    data = interpolator.resolve()
    config = _validate(data, origins)
    inherited = source.secret_env_vars if isinstance(source, GymConfig) else frozenset()
    config._secret_env = inherited | {var for path, var in interpolator.env_refs if looks_secret(path[-1])}
    return config


def looks_secret(key: str) -> bool:
    """Whether a config key names a credential (api_key, auth_token, password, ...)."""
    return bool(_SECRET_KEY_RE.search(key))


def secret_overrides(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of overrides that put a literal credential on the command line (not `${env:VAR}`)."""
    found = []
    for text in overrides:
        keys, value = parse_override(text)
        if not looks_secret(keys[-1]) or value in (None, ""):
            continue
        if isinstance(value, str) and _INTERP_RE.fullmatch(value.strip()):
            continue
        found.append(".".join(keys))
    return found


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML); a leading `+`/`++` (Hydra habit) is accepted."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not _OVERRIDE_KEY_RE.match(key):
        raise ConfigError(f"override '{text}': expected key.sub=value (e.g. servers.agent.max_steps=4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({_yaml_problem(exc)})") from None
    return key.split("."), value


# ---------------------------------------------------------------- files, includes, merging


def _label(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _load_file(path: Path, chain: list[Path], origins: dict[Path_, str],
               variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one YAML file and its includes (depth first); the including file overrides what it includes.

    An include may name a top-level value, `include: [../environments/${environment}/config.yaml]`: it is read
    from the overrides, then the including files, then this file (the same order in which they win).
    """
    resolved = path.resolve()
    label = _label(path)
    if resolved in chain:
        cycle = " -> ".join(_label(p) for p in [*chain, resolved])
        raise ConfigError(f"{label}: include cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        where = f" (included from {_label(chain[-1])})" if chain else ""
        raise ConfigError(f"{label}: config file not found{where}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: top level must be a mapping of keys, got {type(raw).__name__}")
    includes = raw.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{label}: {INCLUDE_KEY}: expected a file name or a list of file names")
    anchor_paths(raw.get("servers"), resolved.parent)
    scope = {**{k: v for k, v in raw.items() if _is_scalar(v)}, **(variables or {})}
    merged: dict[str, Any] = {}
    for name in includes:
        included = _load_file(resolved.parent / _include_path(name, scope, label), [*chain, resolved], origins, scope)
        merged = _merge(merged, included, (), None, origins)
    return _merge(merged, raw, (), label, origins)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _include_path(name: str, scope: dict[str, Any], label: str) -> str:
    """An include's file name with `${key}` (a top-level value) and `${env:VAR,default}` filled in."""

    def fill(match: re.Match) -> str:
        expr = match.group(1).strip()
        scheme, colon, rest = expr.partition(":")
        if colon and scheme == "env":
            var, comma, default = rest.partition(",")
            if var.strip() in os.environ or comma:
                return os.environ.get(var.strip(), default.strip())
            raise ConfigError(f"{label}: include '{name}': environment variable {var.strip()} is not set")
        if expr in scope:
            return str(scope[expr])
        raise ConfigError(f"{label}: include '{name}': '{expr}' is not a top-level value of this file, of a file "
                          f"including it, or an override (e.g. {expr}=...)")

    return _INTERP_RE.sub(fill, name)


def _merge(base: dict, extra: dict, prefix: Path_, label: str | None, origins: dict[Path_, str]) -> dict:
    """Deep-merge `extra` into `base` (mappings merge, anything else replaces); record where keys came from."""
    for key, value in extra.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value, path, label, origins)
            if label is not None:
                origins.setdefault(path, label)
            continue
        base[key] = value
        if label is not None:
            _record_origins(value, path, label, origins)
    return base


def _record_origins(value: Any, path: Path_, label: str, origins: dict[Path_, str]) -> None:
    """Mark `path` and everything below it as coming from `label`."""
    origins[path] = label
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origins(sub, (*path, str(key)), label, origins)


def _set_path(data: dict, keys: list[str], value: Any, label: str, origins: dict[Path_, str]) -> None:
    """Apply one override, creating intermediate mappings as needed."""
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"{label}: '{where}' is a {type(child).__name__}, not a mapping, so it has no keys")
        node = child
    node[keys[-1]] = value
    _record_origins(value, tuple(keys), label, origins)


def _origin(path: Path_, origins: dict[Path_, str]) -> str:
    """The file (or override) that set `path` or its nearest parent."""
    for end in range(len(path), -1, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return "<config>"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L, column C: problem` instead of PyYAML's multi-line dump with snippets."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return _one_line(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- interpolation


class _Interpolator:
    """Resolves `${dotted.path}` (into the merged config) and `${env:VAR,default}` in every string."""

    def __init__(self, data: dict, origins: dict[Path_, str]) -> None:
        self.data = data
        self.origins = origins
        self.active: list[Path_] = []  # references being resolved right now, to report cycles
        self.env_refs: list[tuple[Path_, str]] = []  # (key, variable) of each ${env:VAR} resolved

    def resolve(self) -> dict:
        """Return a copy of the data with every interpolation replaced."""
        return self._walk(self.data, ())

    def _walk(self, value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: self._walk(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, (*path, str(i))) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._string(value, path)
        return value

    def _fail(self, path: Path_, message: str) -> ConfigError:
        return ConfigError(f"{_origin(path, self.origins)}: {'.'.join(path)}: {message}")

    def _string(self, text: str, path: Path_) -> Any:
        leftover = _INTERP_RE.sub("", text)
        if "${" in leftover:
            raise self._fail(path, f"unterminated or nested interpolation in '{text}'")
        whole = _INTERP_RE.fullmatch(text)
        if whole:  # "${x}" alone keeps the referenced value's type
            return self._expr(whole.group(1).strip(), text, path)
        return _INTERP_RE.sub(lambda m: str(self._expr(m.group(1).strip(), text, path)), text)

    def _expr(self, expr: str, text: str, path: Path_) -> Any:
        scheme, colon, rest = expr.partition(":")
        if colon and scheme == "env":
            var, comma, default = rest.partition(",")
            var = var.strip()
            if path:
                self.env_refs.append((path, var))
            if var in os.environ:
                return os.environ[var]
            if comma:
                return default.strip()
            hint = f"set it, or give a default: ${{env:{var},default}}"
            raise self._fail(path, f"environment variable {var} is not set ({hint})")
        if colon or not _OVERRIDE_KEY_RE.match(expr):
            raise self._fail(path, f"cannot interpolate '{text}': use ${{dotted.key}} or ${{env:VAR,default}}")
        return self._reference(tuple(expr.split(".")), text, path)

    def _reference(self, target: Path_, text: str, path: Path_) -> Any:
        if target in self.active:
            chain = " -> ".join(".".join(p) for p in [*self.active, target])
            raise self._fail(path, f"interpolation cycle: {chain}")
        node: Any = self.data
        for depth, key in enumerate(target):
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                keys = [str(k) for k in node] if isinstance(node, dict) else []
                hint = _did_you_mean(key, keys)
                raise self._fail(path, f"'{text}' refers to missing key '{'.'.join(target[: depth + 1])}'{hint}")
        self.active.append(target)
        try:
            return self._walk(node, target)
        finally:
            self.active.pop()


# ---------------------------------------------------------------- validation


def _validate(data: dict, origins: dict[Path_, str]) -> GymConfig:
    """Check the shape, kinds, implementations and cross-server references; one error lists every problem."""
    servers = data.get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ConfigError(f"{_origin(('servers',), origins)}: servers: expected a mapping of server name -> block")
    errors: list[str] = []
    for name, block in servers.items():
        errors.extend(_check_block(str(name), block, origins))
    if errors:
        raise ConfigError("\n".join(errors))
    try:
        config = GymConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_pydantic_lines(exc, origins))) from None
    errors = [e for name, spec in config.servers.items() for e in _check_references(name, spec, config, origins)]
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _check_block(name: str, block: Any, origins: dict[Path_, str]) -> list[str]:
    """Problems with one server block that are worth a clearer message than pydantic's."""
    path = ("servers", name)

    def err(key: str | None, message: str) -> str:
        full = (*path, key) if key else path
        return f"{_origin(full, origins)}: {'.'.join(full)}: {message}"

    if not _NAME_RE.match(name):
        return [err(None, "server names may use only letters, digits, '_' and '-'")]
    if not isinstance(block, dict):
        return [err(None, f"expected a mapping with at least `kind:`, got {type(block).__name__}")]
    kind = block.get("kind")
    if kind is None:
        return [err(None, f"missing `kind:` (one of {', '.join(KINDS)})")]
    if kind not in KINDS:
        hint = _did_you_mean(str(kind), KINDS)
        return [err("kind", f"unknown kind '{kind}'{hint}; expected one of {', '.join(KINDS)}")]
    if kind == "external":
        return _check_external(block, err)
    entrypoint = block.get("entrypoint")
    if entrypoint is not None:
        if not isinstance(entrypoint, str) or not _ENTRYPOINT_RE.match(entrypoint):
            return [err("entrypoint", f"'{entrypoint}' is not 'package.module:Class' or 'package.module'")]
        return []
    return _check_implementation(block, err)


def _check_implementation(block: dict, err: Any) -> list[str]:
    """Without an entrypoint, the block's `env:` / `impl:` must name code that exists in this install."""
    kind = block["kind"]
    if kind == "resources":
        key, package, what = "env", "environments", "environment"
    elif kind == "agent":
        key, package, what = "impl", "servers.agents", "agent implementation"
    else:
        return []
    value = block.get(key)
    if not isinstance(value, str) or not value:
        return [err(None, f"a server of kind {kind} needs `{key}:` (the {what}) or `entrypoint: module:Class`")]
    available = _modules_in(package, want_package=kind == "resources")
    if available is not None and value not in available:
        known = ", ".join(sorted(available)) or "none"
        return [err(key, f"no {what} '{value}'{_did_you_mean(value, sorted(available))}; available: {known}")]
    return []


def _check_external(block: dict, err: Any) -> list[str]:
    """A `kind: external` block must be what gym_core/external.py can start."""
    from gym_core.external import ExternalSpec  # a small module; imported only for configs that use it

    try:
        ExternalSpec.model_validate(block)
    except ValidationError as exc:
        return [err(".".join(map(str, e["loc"])) or None, str(e["msg"]).removeprefix("Value error, "))
                for e in exc.errors()]
    return []


def _serves(spec: ServerSpec) -> str:
    """The kind a server answers as: its own, or for an external server the kind it `serves`."""
    return str(getattr(spec, "serves", "other")) if spec.kind == "external" else spec.kind


def _modules_in(package: str, want_package: bool) -> set[str] | None:
    """Names of the environment folders (with app.py) or agent modules shipped in `package`; None if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    names: set[str] = set()
    for location in spec.submodule_search_locations:
        for entry in Path(location).iterdir():
            if want_package and (entry / "app.py").is_file():
                names.add(entry.name)
            elif not want_package and entry.suffix == ".py" and entry.stem != "__init__":
                names.add(entry.stem)
    return names


def _check_references(name: str, spec: ServerSpec, config: GymConfig, origins: dict[Path_, str]) -> list[str]:
    """Every reference field must name a defined server of the right kind (URLs are taken as they are)."""
    errors = []
    for key, want in REFERENCE_KINDS.items():
        value = getattr(spec, key, None)
        if value is None:
            continue
        path = ("servers", name, key)
        where = f"{_origin(path, origins)}: {'.'.join(path)}"
        for target in value if isinstance(value, list) else [value]:
            if not isinstance(target, str):
                errors.append(f"{where}: expected a server name, got {type(target).__name__}")
            elif target.startswith(("http://", "https://")):
                continue
            elif target not in config.servers:
                hint = _did_you_mean(target, config.of_kind(want) or list(config.servers))
                errors.append(f"{where}: no server named '{target}'{hint}; {want} servers: "
                              f"{', '.join(config.of_kind(want)) or 'none'}")
            elif _serves(config.servers[target]) != want:
                errors.append(f"{where}: '{target}' is of kind {config.servers[target].kind}, expected kind {want}"
                              + (f" (an external server names its kind with `serves: {want}`)"
                                 if config.servers[target].kind == "external" else ""))
    return errors


def _pydantic_lines(exc: ValidationError, origins: dict[Path_, str]) -> list[str]:
    """Turn a pydantic error into `file: key: message` lines."""
    lines = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"])
        lines.append(f"{_origin(path, origins)}: {'.'.join(path)}: {error['msg']}")
    return lines
