"""Datasets: the `datasets:` block of a server, `gym dataset check`, `gym dataset download` and `--split`.

```yaml
servers:
  weather:
    kind: resources
    env: weather
    datasets:                                  # NeMo Gym's shape; a relative path is relative to this file
      - {name: weather_example, type: example, jsonl_fpath: data/example.jsonl}
      - name: weather_train
        type: train
        jsonl_fpath: data/train.jsonl
        license: Apache 2.0
        source: {type: huggingface, repo_id: my-org/weather-tasks, artifact_fpath: train.jsonl}
```

A dataset on a resources server belongs to the agent that uses that server (or, when several do, to the agent
each row names in `agent_ref`); one on an agent belongs to that agent. A Hugging Face source is fetched only
by `gym dataset download`, into the Hugging Face cache and then to `jsonl_fpath`; nothing is downloaded on
import, on `gym up` or by a rollout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gym_core.protocol import TaskRow

if TYPE_CHECKING:
    from gym_core.config import GymConfig

SPLITS = ("example", "train", "validation", "benchmark")
MAX_PROBLEMS_SHOWN = 10


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; the message says what to do."""


class HuggingFaceSource(BaseModel):
    """Where `gym dataset download` fetches a dataset file from."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["huggingface"] = "huggingface"
    repo_id: str  # a dataset repository, e.g. my-org/weather-tasks
    artifact_fpath: str  # the JSONL file inside it
    revision: str | None = None  # a branch, tag or commit; default: the main branch


class DatasetSpec(BaseModel):
    """One entry of a `datasets:` block."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["example", "train", "validation", "benchmark"]
    jsonl_fpath: str
    num_repeats: int = Field(1, ge=1)
    license: str | None = None
    source: HuggingFaceSource | None = None
    huggingface_identifier: HuggingFaceSource | None = None  # NeMo Gym's older spelling of `source`

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if self.huggingface_identifier is not None:
            if self.source is not None:
                raise ValueError("give `source:` or the older `huggingface_identifier:`, not both")
            self.source, self.huggingface_identifier = self.huggingface_identifier, None
        return self

    @property
    def path(self) -> Path:
        """The local JSONL file."""
        return Path(self.jsonl_fpath)


@dataclass
class Dataset:
    """A dataset of a loaded config: its spec, the server declaring it, and the agents its rows go to."""

    spec: DatasetSpec
    server: str
    agents: list[str]  # the default agents: rows without `agent_ref` go to the only one


@dataclass
class CheckReport:
    """What `gym dataset check` found in one dataset."""

    dataset: Dataset
    rows: int = 0
    agents: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def anchor_paths(servers: Any, base: Path) -> None:
    """Make relative `jsonl_fpath`s of the `datasets:` blocks in `servers` relative to `base` (in place)."""
    if not isinstance(servers, dict):
        return
    for block in servers.values():
        entries = block.get("datasets") if isinstance(block, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            fpath = entry.get("jsonl_fpath") if isinstance(entry, dict) else None
            if isinstance(fpath, str) and fpath and "${" not in fpath and not Path(fpath).is_absolute():
                entry["jsonl_fpath"] = str(base / fpath)


def datasets_of(config: GymConfig, split: str | None = None, agent: str | None = None) -> list[Dataset]:
    """The datasets of a config (of one split, of one agent), in config order."""
    found = []
    for name, spec in config.servers.items():
        for entry in spec.datasets or []:
            agents = [name] if spec.kind == "agent" else _agents_using(config, name)
            if split is not None and entry.type != split:
                continue
            if agent is not None and agent not in agents:
                continue
            found.append(Dataset(entry, name, agents))
    return found


def split_rows(config: GymConfig, agent: str, split: str) -> list[Path]:
    """The local files of an agent's datasets of one split; DatasetError when there are none or one is missing."""
    chosen = datasets_of(config, split, agent)
    if not chosen:
        have = sorted({d.spec.type for d in datasets_of(config, agent=agent)})
        raise DatasetError(f"agent '{agent}' has no '{split}' dataset (its splits: {', '.join(have) or 'none'}); "
                           "declare one in the `datasets:` block of the agent or of its resources server")
    for dataset in chosen:
        _require_file(dataset)
    return [d.spec.path for d in chosen]


def check(config: GymConfig, split: str | None = None) -> list[CheckReport]:
    """Read every row of every dataset (of a split): it must parse as a task row and go to an existing agent."""
    agents = set(config.of_kind("agent"))
    reports = []
    for dataset in datasets_of(config, split):
        report = CheckReport(dataset)
        reports.append(report)
        try:
            _require_file(dataset)
        except DatasetError as exc:
            report.problems.append(str(exc))
            continue
        for number, row in _numbered_rows(dataset.spec.path, report):
            report.rows += 1
            target, problem = _agent_of(row, dataset, agents)
            if problem:
                report.problems.append(f"{dataset.spec.path}:{number}: {problem}")
            else:
                report.agents.add(target)
    return reports


def download(config: GymConfig, split: str | None = None, force: bool = False) -> list[tuple[Dataset, str]]:
    """Fetch the Hugging Face datasets (of a split) whose file is missing; returns (dataset, what happened)."""
    done = []
    for dataset in datasets_of(config, split):
        source, target = dataset.spec.source, dataset.spec.path
        if source is None:
            done.append((dataset, "local file, nothing to download"))
        elif target.is_file() and not force:
            done.append((dataset, f"already at {target}"))
        else:
            cached = _hf_hub_download()(source.repo_id, source.artifact_fpath, repo_type="dataset",
                                     revision=source.revision)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, target)
            done.append((dataset, f"downloaded {source.repo_id}/{source.artifact_fpath} -> {target}"))
    return done


def _hf_hub_download() -> Any:
    """huggingface_hub's downloader (only `gym dataset download` needs it)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DatasetError("downloading from Hugging Face needs huggingface_hub: pip install 'gym-rl[hf]'") from None
    return hf_hub_download


def _agents_using(config: GymConfig, server: str) -> list[str]:
    """The agents whose `resources:` names this server."""
    users = []
    for name in config.of_kind("agent"):
        resources = getattr(config.servers[name], "resources", None)
        if server == resources or (isinstance(resources, list) and server in resources):
            users.append(name)
    return users


def _require_file(dataset: Dataset) -> None:
    path = dataset.spec.path
    if path.is_file():
        return
    if dataset.spec.source is not None:
        raise DatasetError(f"dataset '{dataset.spec.name}': {path} is not downloaded yet; run "
                           f"`gym dataset download CONFIG --split {dataset.spec.type}`")
    generator = path.parent.parent / "generate.py"  # a synthetic environment's splits are written on demand
    hint = f"; write it with `python {generator}`" if generator.is_file() else ""
    raise DatasetError(f"dataset '{dataset.spec.name}' of server '{dataset.server}': {path} does not exist{hint}")


def _numbered_rows(path: Path, report: CheckReport) -> Any:
    """(line number, row) of each JSON-object line that parses as a task row; problems go to the report."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                TaskRow.model_validate(row)
            except orjson.JSONDecodeError as exc:
                report.problems.append(f"{path}:{number}: not valid JSON ({exc})")
                continue
            except ValidationError as exc:
                from gym_core.server import describe_validation_error

                report.problems.append(f"{path}:{number}: not a task row: {describe_validation_error(exc)}")
                continue
            yield number, row


def _agent_of(row: dict[str, Any], dataset: Dataset, agents: set[str]) -> tuple[str, str | None]:
    """(the agent a row goes to, None), or ("", what is wrong)."""
    ref = row.get("agent_ref")
    if ref is not None:
        name = ref.get("name") if isinstance(ref, dict) else None
        if not isinstance(name, str):
            return "", 'agent_ref must be {"type": "responses_api_agents", "name": "<agent>"}'
        if name not in agents:
            return "", f"agent_ref names '{name}', which is not an agent of this config " \
                       f"(agents: {', '.join(sorted(agents)) or 'none'})"
        return name, None
    if len(dataset.agents) == 1:
        return dataset.agents[0], None
    if not dataset.agents:
        return "", f"no agent uses server '{dataset.server}', and the row has no agent_ref"
    return "", f"agents {', '.join(dataset.agents)} all use server '{dataset.server}'; the row needs an agent_ref"
