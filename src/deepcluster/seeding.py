"""Seeds derived from the run's seed, and the global RNG states a checkpoint must carry."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed fixed by the run's seed and a path of keys, e.g. ("kmeans", epoch) or ("batch", epoch, step).

    Counter-based: any batch's randomness can be rebuilt from its coordinates alone, which makes resuming exact.
    """
    words = [int(seed)]
    for key in keys:
        if isinstance(key, str):
            words.extend(key.encode())
        else:
            words.append(int(key))
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (dropout draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (and CUDA when present)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
