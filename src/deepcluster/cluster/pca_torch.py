"""The products and the eigenproblem of `PCAWhitening` on a torch device (a CUDA GPU in a run; the CPU in tests).

The features stay a NumPy array (possibly a memory map): blocks of rows (or, for the Gram matrix, of columns) are
moved to the device one at a time, centred there in float32, multiplied with float32 matmuls (full float32 on CUDA,
not TF32) and summed into a float64 product on the device, which `torch.linalg.eigh` solves in float64. The mean,
the training sample and the whitening (`PCAWhitening.set_axes`) are those of the NumPy path in `preprocess`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def full_fp32_matmul(device: torch.device) -> Iterator[None]:
    """Run CUDA matmuls in full float32 (not TF32), restoring the caller's setting afterwards (also used by the
    torch k-means)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _block(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 block of `x` as a tensor on `device` (read-only arrays, e.g. memory maps, are copied first)."""
    block = np.ascontiguousarray(x, dtype=np.float32)
    if not block.flags.writeable:
        block = block.copy()
    return torch.from_numpy(block).to(device)


def _leading(product: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `dim` largest eigenvalues (descending) of the symmetric float64 `product` and their eigenvectors
    (columns, same order)."""
    values, vectors = torch.linalg.eigh(product)
    return values.flip(0)[:dim], vectors.flip(1)[:, :dim]


def _fix_signs(axes: torch.Tensor) -> torch.Tensor:
    """`axes` [dim, D] with every row's largest-magnitude component positive: the same axes whatever signs the
    solver picked (they differ between devices and libraries)."""
    pivot = axes.gather(1, axes.abs().argmax(dim=1, keepdim=True))
    return torch.where(pivot < 0, -axes, axes)


def torch_principal_axes(
    x: np.ndarray, mean: np.ndarray, dim: int, device: str | torch.device, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `dim` leading principal axes [dim, D] (float64, unit rows) of `x` [N, D] float32 centred on `mean`
    [D] float64, and their population variances [dim] (descending): of the D x D scatter over blocks of
    `chunk_rows` rows when N >= D, else of the N x N Gram matrix over blocks of columns of the same size."""
    n, d = x.shape
    device = torch.device(device)
    mean32 = torch.from_numpy(mean.astype(np.float32)).to(device)
    with full_fp32_matmul(device):
        if n >= d:
            product = torch.zeros((d, d), dtype=torch.float64, device=device)
            for start in range(0, n, chunk_rows):
                block = _block(x[start : start + chunk_rows], device) - mean32
                product += block.T @ block
            values, vectors = _leading(product / n, dim)
            axes = vectors.T.contiguous()
        else:
            width = max(1, chunk_rows * d // n)  # as many values per block as chunk_rows rows
            gram = torch.zeros((n, n), dtype=torch.float64, device=device)
            for start in range(0, d, width):
                block = _block(x[:, start : start + width], device) - mean32[start : start + width]
                gram += block @ block.T
            values, vectors = _leading(gram / n, dim)
            vectors32 = vectors.float()
            axes = torch.empty((dim, d), dtype=torch.float64, device=device)
            for start in range(0, d, width):  # row i: X^T u_i, of norm sqrt(n * value_i)
                block = _block(x[:, start : start + width], device) - mean32[start : start + width]
                axes[:, start : start + width] = (block.T @ vectors32).T
            norms = torch.linalg.vector_norm(axes, dim=1, keepdim=True)
            axes /= torch.where(norms > 0, norms, 1.0)
    return _fix_signs(axes).cpu().numpy(), values.cpu().numpy()


def torch_project(
    x: np.ndarray, mean: np.ndarray, matrix: np.ndarray, device: str | torch.device, chunk_rows: int
) -> np.ndarray:
    """(x - mean) @ matrix.T, float32 [N, dim] NumPy, computed on `device` over blocks of `chunk_rows` rows."""
    device = torch.device(device)
    mean32 = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)).to(device)
    matrix_t = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(device).T
    out = np.empty((x.shape[0], matrix.shape[0]), dtype=np.float32)
    with full_fp32_matmul(device):
        for start in range(0, x.shape[0], chunk_rows):
            block = _block(x[start : start + chunk_rows], device) - mean32
            out[start : start + chunk_rows] = (block @ matrix_t).cpu().numpy()
    return out
