"""Files on disk (ground floor): atomic writes, checkpoint files that load without running code, the run
directory's lock, and a run directory's layout, writers and readers. Everything that reads what a run wrote goes
through `RunDir`."""

from deepcluster.storage.checkpoints import (
    CheckpointError,
    DamagedCheckpoint,
    NoCheckpoint,
    UntrustedCheckpoint,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from deepcluster.storage.files import (
    DISK_FULL_ERRNOS,
    WRITE_ERRNOS,
    WriteFailed,
    atomic_save_numpy,
    atomic_write,
    atomic_write_text,
)
from deepcluster.storage.lock import RunInUse, RunLock
from deepcluster.storage.run_dir import (
    LabelsTable,
    RunDir,
    epoch_label_files,
    open_run_dir,
    open_run_or_checkpoint,
    read_labels_csv,
)

__all__ = [
    "DISK_FULL_ERRNOS",
    "WRITE_ERRNOS",
    "CheckpointError",
    "DamagedCheckpoint",
    "LabelsTable",
    "NoCheckpoint",
    "RunDir",
    "RunInUse",
    "RunLock",
    "UntrustedCheckpoint",
    "WriteFailed",
    "atomic_save_numpy",
    "atomic_write",
    "atomic_write_text",
    "epoch_label_files",
    "load_checkpoint",
    "open_run_dir",
    "open_run_or_checkpoint",
    "read_header",
    "read_labels_csv",
    "save_checkpoint",
]
