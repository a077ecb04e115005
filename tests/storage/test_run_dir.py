"""`storage.open_run_dir` and `open_run_or_checkpoint`: the one check that a path is a run directory, whose
errors name the flag or command, the path, what is missing and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepcluster.config import ConfigError
from deepcluster.storage import RunDir, open_run_dir, open_run_or_checkpoint


def _run(root: Path, config: bool = True, checkpoint: bool = True) -> Path:
    root.mkdir()
    if config:
        (root / "config.yaml").write_text("method: deepcluster\n")
    if checkpoint:
        (root / "checkpoints").mkdir()
        (root / "checkpoints" / "last.pt").write_bytes(b"")
    return root


def test_a_missing_folder_is_named_with_what_gave_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"^--resume .*nowhere: no such run directory \(.*train command\)$"):
        open_run_dir(missing, "--resume")
    with pytest.raises(ConfigError, match=r"^/.*nowhere: no such run directory"):
        open_run_dir(missing)


def test_a_folder_without_config_yaml_is_not_a_run(tmp_path: Path) -> None:
    bare = _run(tmp_path / "bare", config=False)
    with pytest.raises(ConfigError, match=r"^report .*bare: no config.yaml there; is it a run directory\?"):
        open_run_dir(bare, "report")


def test_a_run_without_a_checkpoint_is_refused_only_when_one_is_needed(tmp_path: Path) -> None:
    fresh = _run(tmp_path / "fresh", checkpoint=False)
    assert open_run_dir(fresh, "report").root == fresh  # curves need no checkpoint
    with pytest.raises(ConfigError) as refused:
        open_run_dir(fresh, "RUN", needs_checkpoint=True)
    message = str(refused.value)
    assert message.startswith(f"RUN {fresh}: the run has no checkpoint yet")
    assert str(RunDir(fresh).checkpoint) in message and f"--resume {fresh}" in message


def test_a_run_with_its_checkpoint_opens(tmp_path: Path) -> None:
    run = open_run_dir(_run(tmp_path / "run"), needs_checkpoint=True)
    assert isinstance(run, RunDir) and run.config.is_file()


def test_a_run_or_a_checkpoint_file(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    assert open_run_or_checkpoint(run).root == run  # type: ignore[union-attr]
    assert open_run_or_checkpoint(run / "checkpoints" / "last.pt") is None  # a file: the caller loads it
    with pytest.raises(ConfigError, match=r"^RUN .*nothing: no such run directory or checkpoint file$"):
        open_run_or_checkpoint(tmp_path / "nothing", "RUN")
    with pytest.raises(ConfigError, match=r"bare: the run has no checkpoint yet"):
        open_run_or_checkpoint(_run(tmp_path / "bare", checkpoint=False))
