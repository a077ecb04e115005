"""Files on disk (ground floor): atomic writes, checkpoint files, and a run directory's layout, writers and
readers. Everything that reads what a run wrote goes through `RunDir`."""

from deepcluster.storage.files import (
    atomic_save_numpy,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from deepcluster.storage.run_dir import LabelsTable, RunDir, epoch_label_files, read_labels_csv

__all__ = [
    "LabelsTable",
    "RunDir",
    "atomic_save_numpy",
    "atomic_write",
    "atomic_write_text",
    "epoch_label_files",
    "load_checkpoint",
    "read_labels_csv",
    "save_checkpoint",
]
