"""A time budget the schedule fits (`run.max_minutes`, engine/budget.py): the plan's arithmetic, a planned run
that trains its whole plan, and the plan kept by config.yaml and by a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.api import resume, train
from deepcluster.config import ConfigError, load_config
from deepcluster.engine.budget import MARGIN, Costs, Plan, plan_budget
from deepcluster.engine.loop import Trainer
from deepcluster.methods import METHODS
from deepcluster.storage import epoch_label_files, load_checkpoint
from synthetic import small_config, write_pattern_npz


def per_epoch(steps_per_epoch: int, epochs: int) -> int:
    """Labels at every epoch start (after the first: epochs - 1) and the final assignment."""
    return epochs


def test_the_plan_fills_the_budget_with_whole_epochs_of_about_a_pass() -> None:
    costs = Costs(spent=10.0, step=1.0, update=5.0, epoch_end=1.0)
    # 200 s x 0.9 - 10 s = 170 s; a pass of 20 steps costs 20 + 1 + 5 = 26 s: 7 epochs (170 / 26 = 6.54), then
    # 7 x (s + 6) <= 170 gives 18 steps each.
    plan = plan_budget(200.0, costs, steps_per_pass=20, updates_after_first=per_epoch)
    assert MARGIN == 0.9
    assert plan == Plan(epochs=7, steps_per_epoch=18, steps=126, updates=7, seconds=10.0 + 7 * 24)
    # Fewer steps than a pass fit: one epoch, as many steps as fit (0.9 x 30 - 10 = 17 >= s + 6: 11).
    assert plan_budget(30.0, costs, 20, per_epoch) == Plan(1, 11, 11, 1, 10.0 + 17)
    # Labels every third epoch (DeeperCluster): fewer updates leave room for more steps.
    every_third = lambda spe, epochs: len(range(3, epochs, 3)) + 1  # noqa: E731
    third = plan_budget(200.0, costs, 20, every_third)
    assert third.epochs == 7 and third.updates == 3 and 7 * (third.steps_per_epoch + 1) + 3 * 5 <= 170
    assert 7 * (third.steps_per_epoch + 2) + 3 * 5 > 170  # and one more step each would not fit
    assert third.steps_per_epoch == 21


def test_a_budget_smaller_than_a_step_still_trains_one() -> None:
    plan = plan_budget(1.0, Costs(spent=10.0, step=1.0, update=5.0, epoch_end=1.0), 20, per_epoch)
    assert (plan.epochs, plan.steps_per_epoch, plan.steps) == (1, 1, 1)


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("budget-data") / "patterns.npz")


V2 = {"n_sets": 2, "n_small": 2, "hidden": 32, "out_dim": 16}


def _config(data: Path, out: Path, **run: object):
    return small_config(
        data, out, method="deepcluster-v2", deepcluster_v2=V2, run={"checkpoint_every": 0, "epochs": 2, **run}
    )


@pytest.fixture(scope="module")
def planned(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planned") / "run"
    train(_config(npz_data, out, max_minutes=0.15))
    return out


def _steps(history: list[dict]) -> list[int]:
    return [record["epoch"] for record in history]


def test_a_planned_run_records_its_plan_and_trains_all_of_it(planned: Path) -> None:
    config = load_config(planned / "config.yaml", METHODS)
    line = config.run.budget_plan
    assert line and line.startswith("0.15 minutes: ")
    steps_per_epoch = config.optim.epoch_size // config.optim.batch_size
    assert (
        f"{config.run.epochs * steps_per_epoch} steps ({config.run.epochs} epoch(s) of {steps_per_epoch})"
        in line
    )
    expected = float(line.rsplit("end at ", 1)[1].split()[0])
    assert expected <= 0.15 * MARGIN + 0.005  # the plan's own arithmetic keeps it inside the budget
    checkpoint = load_checkpoint(planned / "checkpoints" / "last.pt")
    history = checkpoint["loop"]["history"]
    assert _steps(history) == list(range(config.run.epochs))  # every planned epoch ran, none was cut
    assert checkpoint["config"]["run"]["budget_plan"] == line  # the checkpoint carries the plan too
    labels = epoch_label_files(planned)
    assert [epoch for epoch, _ in labels] == list(range(config.run.epochs))  # labels at every epoch start
    assert (planned / "labels.csv").is_file()


def _same(a: Path, b: Path) -> None:
    state_a, state_b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (a, b))
    assert state_a["model"].keys() == state_b["model"].keys()
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), key
    files_a, files_b = epoch_label_files(a), epoch_label_files(b)
    assert [e for e, _ in files_a] == [e for e, _ in files_b]
    for (_, path_a), (_, path_b) in zip(files_a, files_b, strict=True):
        assert np.array_equal(np.load(path_a), np.load(path_b))
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()


class Interrupt(Exception):
    """Stands for a kill."""


def test_config_yaml_replays_the_planned_run_and_a_resume_keeps_the_plan(
    planned: Path, tmp_path: Path
) -> None:
    config = load_config(planned / "config.yaml", METHODS)  # the recorded plan: not timed again
    config.run.out = str(tmp_path / "killed")
    last_epoch = config.run.epochs - 1

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (last_epoch, 1):
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(config, on_step=kill).fit()
    assert load_config(tmp_path / "killed" / "config.yaml", METHODS).run.budget_plan == config.run.budget_plan
    resume(tmp_path / "killed")
    _same(planned, tmp_path / "killed")  # the replay of config.yaml, killed and resumed, is the planned run


def test_a_budget_must_be_positive(npz_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run.max_minutes"):
        train(small_config(npz_data, tmp_path / "other", run={"max_minutes": 0}))
