"""`datasets:` blocks, `gym dataset check` / `download`, `gym rollout --split`, and includes that name a value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gym_core.cli import main as gym
from gym_core.config import ConfigError, load_config
from gym_core.datasets import DatasetError, check, datasets_of, download, split_rows

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
ROW = {"responses_create_params": {"input": [{"role": "user", "content": "hi"}]}, "target": 1}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    """A config with two agents on one resources server, datasets on both, and data files next to it."""
    write_jsonl(tmp_path / "data" / "example.jsonl", [ROW, {**ROW, "agent_ref": {"name": "second"}}])
    write_jsonl(tmp_path / "data" / "train.jsonl", [
        {**ROW, "agent_ref": {"type": "responses_api_agents", "name": "first"}},
        "{not json",
        {"no_params": True, "agent_ref": {"name": "first"}},
        {**ROW, "agent_ref": {"name": "nobody"}},
        ROW,  # two agents use the server: a row without agent_ref is ambiguous
    ])
    write_jsonl(tmp_path / "agent_data.jsonl", [ROW, ROW, ROW])
    (tmp_path / "env.yaml").write_text("""
servers:
  counter:
    kind: resources
    env: counter
    datasets:
      - {name: c_example, type: example, jsonl_fpath: data/example.jsonl}
      - {name: c_train, type: train, jsonl_fpath: data/train.jsonl}
      - name: c_validation
        type: validation
        jsonl_fpath: data/validation.jsonl
        source: {type: huggingface, repo_id: some-org/counter-tasks, artifact_fpath: validation.jsonl}
""")
    (tmp_path / "stack.yaml").write_text("""
include: [env.yaml]
servers:
  policy: {kind: policy, engine: scripted}
  first: {kind: agent, impl: tool_calling, policy: policy, resources: counter}
  second:
    kind: agent
    impl: tool_calling
    policy: policy
    resources: counter
    datasets: [{name: second_train, type: train, jsonl_fpath: agent_data.jsonl}]
""")
    return tmp_path


def test_relative_paths_are_relative_to_the_file_declaring_them(stack_dir: Path) -> None:
    config = load_config(stack_dir / "stack.yaml")
    paths = {d.spec.name: d.spec.path for d in datasets_of(config)}
    assert paths["c_example"] == stack_dir / "data" / "example.jsonl"
    assert paths["second_train"] == stack_dir / "agent_data.jsonl"
    assert {d.spec.name: d.agents for d in datasets_of(config, "train")} == {
        "c_train": ["first", "second"], "second_train": ["second"]}


def test_check_reads_every_row_and_names_each_problem(stack_dir: Path) -> None:
    reports = {r.dataset.spec.name: r for r in check(load_config(stack_dir / "stack.yaml"))}
    assert reports["c_example"].problems == [f"{stack_dir / 'data' / 'example.jsonl'}:1: agents first, second all "
                                             "use server 'counter'; the row needs an agent_ref"]
    train = reports["c_train"]
    assert (train.rows, train.agents) == (3, {"first"})
    problems = "\n".join(train.problems)
    assert ":2: not valid JSON" in problems
    assert ":3: not a task row: responses_create_params: Field required" in problems
    assert ":4: agent_ref names 'nobody', which is not an agent" in problems and ":5: agents first, second" in problems
    assert reports["c_validation"].problems == [
        "dataset 'c_validation': " + str(stack_dir / "data" / "validation.jsonl") + " is not downloaded yet; run "
        "`gym dataset download CONFIG --split validation`"]
    assert reports["second_train"].problems == [] and reports["second_train"].rows == 3


def test_gym_dataset_check_prints_a_table_and_fails_on_problems(stack_dir: Path, capsys) -> None:
    assert gym(["dataset", "check", str(stack_dir / "stack.yaml"), "--split", "train"]) == 1
    out, err = capsys.readouterr()
    assert "second_train  train" in out and "c_train" in out and "agent_ref names 'nobody'" in err
    assert gym(["dataset", "check", str(QUICKSTART)]) == 0
    assert "weather_example  example  weather  8     agent   ok" in capsys.readouterr().out


def test_download_fetches_only_missing_hugging_face_files(stack_dir: Path, monkeypatch, capsys) -> None:
    fetched = []

    def fake_hf_hub_download(repo_id: str, filename: str, *, repo_type: str, revision: str | None) -> str:
        """Test double for huggingface_hub.hf_hub_download: a 'cached' local file, no network."""
        fetched.append((repo_id, filename, repo_type, revision))
        return str(write_jsonl(stack_dir / "hf_cache" / filename, [ROW, ROW]))

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)
    config = load_config(stack_dir / "stack.yaml")
    outcomes = {d.spec.name: text for d, text in download(config)}
    assert fetched == [("some-org/counter-tasks", "validation.jsonl", "dataset", None)]
    assert outcomes["c_example"] == "local file, nothing to download"
    assert outcomes["c_validation"].startswith("downloaded some-org/counter-tasks/validation.jsonl")
    assert len((stack_dir / "data" / "validation.jsonl").read_text().splitlines()) == 2
    assert gym(["dataset", "download", str(stack_dir / "stack.yaml"), "--split", "validation"]) == 0
    assert "already at" in capsys.readouterr().out and len(fetched) == 1
    assert gym(["dataset", "download", str(stack_dir / "stack.yaml"), "--split", "validation", "--force"]) == 0
    assert len(fetched) == 2


def test_split_rows_of_an_agent(stack_dir: Path) -> None:
    config = load_config(stack_dir / "stack.yaml")
    assert split_rows(config, "second", "train") == [stack_dir / "data" / "train.jsonl", stack_dir / "agent_data.jsonl"]
    with pytest.raises(DatasetError, match="agent 'first' has no 'benchmark' dataset .its splits: example, train, "
                                           "validation"):
        split_rows(config, "first", "benchmark")
    with pytest.raises(DatasetError, match="not downloaded yet"):
        split_rows(config, "first", "validation")


@pytest.mark.parametrize("block, message", [
    ({"name": "x", "type": "training", "jsonl_fpath": "a.jsonl"}, "datasets.0.type"),
    ({"name": "x", "type": "train"}, "datasets.0.jsonl_fpath: Field required"),
    ({"name": "x", "type": "train", "jsonl_fpath": "a", "num_repeats": 0}, "greater than or equal to 1"),
    ({"name": "x", "type": "train", "jsonl_fpath": "a", "source": {"type": "huggingface", "repo_id": "o/r",
                                                                    "artifact_fpath": "a"},
      "huggingface_identifier": {"repo_id": "o/r", "artifact_fpath": "a"}}, "not both"),
])
def test_bad_dataset_entries_are_config_errors(block: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"servers": {"env": {"kind": "resources", "env": "counter", "datasets": [block]}}})


def test_the_older_huggingface_identifier_is_a_source() -> None:
    entry = {"name": "x", "type": "train", "jsonl_fpath": "a", "huggingface_identifier": {"repo_id": "o/r",
                                                                                         "artifact_fpath": "t.jsonl"}}
    config = load_config({"servers": {"env": {"kind": "resources", "env": "counter", "datasets": [entry]}}})
    [dataset] = datasets_of(config)
    assert dataset.spec.source.repo_id == "o/r" and dataset.spec.huggingface_identifier is None


def test_rollout_split_needs_a_config_and_not_input_too(capsys) -> None:
    assert gym(["rollout", "--agent", "agent", "--split", "example", "--output", "x.jsonl"]) == 2
    assert gym(["rollout", "--agent", "agent", "--output", "x.jsonl"]) == 2
    assert "give --input FILE, or --split NAME with --config" in capsys.readouterr().err
    assert gym(["rollout", "--agent", "agent", "--split", "train", "--config", str(QUICKSTART),
                "--output", "x.jsonl"]) == 1
    assert "agent 'agent' has no 'train' dataset (its splits: example)" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_rollout_split_collects_the_datasets_rows(tmp_path: Path, capsys) -> None:
    output = tmp_path / "rollouts.jsonl"
    assert gym(["rollout", "--agent", "agent", "--split", "example", "--config", str(QUICKSTART),
                "environment=counter", "--output", str(output), "--no-progress"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 6 and {row["_ng_task_index"] for row in rows} == set(range(6))


# ------------------------------------------------------------------------------ includes naming a value


def test_an_include_may_name_a_top_level_value_or_an_override(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.yaml").write_text("servers: {ra: {kind: resources, env: counter}}\n")
    (tmp_path / "parts" / "b.yaml").write_text("servers: {rb: {kind: resources, env: weather}}\n")
    (tmp_path / "inner.yaml").write_text('include: ["parts/${pick}.yaml"]\n')
    (tmp_path / "main.yaml").write_text('pick: a\ninclude: ["inner.yaml", "parts/${env:GYM_TEST_PART,b}.yaml"]\n'
                                        "servers: {}\n")
    assert set(load_config(tmp_path / "main.yaml").servers) == {"ra", "rb"}  # the includer's value reaches inner
    assert set(load_config(tmp_path / "main.yaml", ["pick=b"]).servers) == {"rb"}
    monkeypatch.setenv("GYM_TEST_PART", "a")
    assert set(load_config(tmp_path / "main.yaml", ["pick=b"]).servers) == {"ra", "rb"}
    (tmp_path / "bad.yaml").write_text('include: ["parts/${nothing}.yaml"]\nservers: {}\n')
    with pytest.raises(ConfigError, match="'nothing' is not a top-level value of this file"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("env", sorted(p.parent.name for p in (ROOT / "environments").glob("*/app.py")))
def test_the_quickstart_points_at_any_environment_by_one_value(env: str) -> None:
    config = load_config(QUICKSTART, [f"environment={env}"])
    assert config.servers["agent"].resources == env
    assert config.servers[env].kind == "resources"
    assert any(d.spec.type == "example" for d in datasets_of(config, agent="agent"))
