import json
import math

import numpy as np
import pytest
import torch

from deepcluster.evaluate.results import dumps_json, format_table, to_jsonable, write_json
from deepcluster.models.checkpoint_import import ImportReport


def test_format_table_aligns_columns():
    rows = [
        {"layer": "conv1", "top1": 0.5, "dims": 9600},
        {"layer": "fc", "top1": 0.71234, "dims": None},
    ]
    text = format_table(rows, ["layer", ("top1", "top-1"), "dims"], float_format=".3f")
    assert text.splitlines() == [
        "layer  top-1  dims",
        "-----  -----  ----",
        "conv1  0.500  9600",
        "fc     0.712     -",
    ]


def test_format_table_sequence_rows_title_and_errors():
    text = format_table([("a", 1), ("bbbb", 22)], ["name", "n"], title="Counts")
    assert text.splitlines() == ["Counts", "name   n", "----  --", "a      1", "bbbb  22"]
    assert format_table([{"x": float("nan")}]).splitlines()[-1] == "-"
    with pytest.raises(ValueError, match="columns"):
        format_table([("a", 1)])
    with pytest.raises(ValueError, match="2 values but there are 3 columns"):
        format_table([("a", 1)], ["x", "y", "z"])


def test_to_jsonable_converts_numpy_torch_and_dataclasses(tmp_path):
    value = {
        1: np.int64(3),
        "arr": np.arange(3),
        "t": torch.tensor([1.5]),
        "nan": float("nan"),
        "tuple": (np.float32(0.5), None),
        "report": ImportReport(source="x.pth", missing=["a"]),
    }
    out = to_jsonable(value)
    assert out["1"] == 3 and type(out["1"]) is int
    assert out["arr"] == [0, 1, 2] and out["t"] == [1.5] and out["nan"] is None
    assert out["tuple"] == [0.5, None]
    assert out["report"]["missing"] == ["a"] and out["report"]["ok"] is False
    assert json.loads(dumps_json(value)) == out
    path = write_json(tmp_path / "sub" / "result.json", {"acc": np.float64(0.25)})
    assert json.loads(path.read_text()) == {"acc": 0.25}
    with pytest.raises(TypeError, match="object"):
        to_jsonable(object())
    assert not math.isnan(to_jsonable([np.float16(1.0)])[0])
