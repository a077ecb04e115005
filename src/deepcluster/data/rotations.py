"""Quarter-turn rotations of image batches and DeeperCluster's (rotation, cluster) targets.

A DeeperCluster target is a pair: the super-class ``super_cluster * n_rotations + turn`` and the sub-class
``cluster % k_sub`` (the cluster's local id inside its super-cluster). With rotations off, n_rotations = 1 and
every turn is 0.
"""

from __future__ import annotations

import torch

N_ROTATIONS = 4
"""0, 90, 180 and 270 degrees."""


def rotate_quarter_turns(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image i rotated by ``turns[i] * 90`` degrees counter-clockwise, for square images [B, C, H, W].

    `turns` (int [B], taken modulo 4) may live on any device; one `torch.rot90` per group of equal turns.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_quarter_turns: need square images [B, C, S, S], got {tuple(images.shape)}")
    if turns.shape != images.shape[:1]:
        raise ValueError(
            f"rotate_quarter_turns: turns {tuple(turns.shape)} must have one entry per image ({images.shape[0]})"
        )
    turns = turns.to(images.device).remainder(N_ROTATIONS)
    out = torch.empty_like(images)
    for turn in range(N_ROTATIONS):
        rows = torch.nonzero(turns == turn).squeeze(1)
        if rows.numel():
            out[rows] = torch.rot90(images[rows], turn, dims=(-2, -1))
    return out


def encode_targets(
    clusters: torch.Tensor, turns: torch.Tensor, k_sub: int, n_rotations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(super_class, sub_class) of images with global cluster ids `clusters` shown rotated by `turns`:
    super_class = (clusters // k_sub) * n_rotations + turns, sub_class = clusters % k_sub."""
    return (clusters // k_sub) * n_rotations + turns, clusters % k_sub


def decode_targets(
    super_class: torch.Tensor, sub_class: torch.Tensor, k_sub: int, n_rotations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(global cluster, turn) back from `encode_targets`' (super_class, sub_class)."""
    return (super_class // n_rotations) * k_sub + sub_class, super_class % n_rotations
