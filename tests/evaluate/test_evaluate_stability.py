import numpy as np
import pytest

from deepcluster.evaluate.stability import epoch_label_files, epoch_stability


def _write(folder, epoch, labels):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"epoch_{epoch:03d}.npy", np.asarray(labels, dtype=np.int64))


def test_consecutive_epoch_nmi(tmp_path):
    labels = tmp_path / "labels"
    _write(labels, 0, [0, 0, 1, 1])
    _write(labels, 1, [1, 1, 0, 0])  # same partition, renamed: NMI 1
    _write(labels, 2, [0, 1, 0, 1])  # independent of epoch 1: NMI 0
    (labels / "epoch_003.npy.tmp").write_text("partial write, must be ignored")
    result = epoch_stability(tmp_path)
    assert [epoch for epoch, _ in result] == [1, 2]
    assert result[0][1] == pytest.approx(1.0)
    assert result[1][1] == pytest.approx(0.0)
    # the labels folder itself is accepted too
    assert epoch_stability(labels) == result


def test_missing_epoch_pairs_with_previous_file(tmp_path):
    _write(tmp_path / "labels", 0, [0, 0, 1, 1, 2, 2])
    _write(tmp_path / "labels", 2, [0, 0, 1, 1, 1, 1])
    _write(tmp_path / "labels", 10, [5, 5, 3, 3, 3, 3])
    assert [e for e, _ in epoch_label_files(tmp_path)] == [0, 2, 10]
    result = epoch_stability(tmp_path)
    assert [e for e, _ in result] == [2, 10]
    assert result[1][1] == pytest.approx(1.0)
    assert 0.0 < result[0][1] < 1.0


def test_no_label_files_names_the_folder(tmp_path):
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "labels")):
        epoch_stability(tmp_path)
    with pytest.raises(FileNotFoundError, match="no per-epoch label files"):
        epoch_stability(tmp_path / "does_not_exist")


def test_single_epoch_gives_no_pairs_and_length_mismatch_raises(tmp_path):
    _write(tmp_path / "labels", 0, [0, 1, 1])
    assert epoch_stability(tmp_path) == []
    _write(tmp_path / "labels", 1, [0, 1])
    with pytest.raises(ValueError, match="epoch_001.npy holds 2 labels but epoch_000.npy holds 3"):
        epoch_stability(tmp_path)


def test_several_heads_compare_the_first_head(tmp_path):
    _write(tmp_path / "labels", 0, [[0, 0], [0, 1], [1, 0], [1, 1]])
    _write(
        tmp_path / "labels", 1, [[1, 0], [1, 0], [0, 1], [0, 1]]
    )  # head 0 renamed (NMI 1), head 1 unrelated
    assert epoch_stability(tmp_path)[0][1] == pytest.approx(1.0)
