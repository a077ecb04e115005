"""Tests for deepcluster.cluster.preprocess: PCA-whitening (faiss) and L2-normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcluster.cluster import PCAWhitening, l2_normalize, pca_whiten, preprocess


def _correlated_gaussian(n: int = 2000, d: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d))
    return (rng.standard_normal((n, d)) @ mixing + 5.0).astype(np.float32)


def _structured(n: int = 4000, d: int = 64, k: int = 16, seed: int = 0) -> np.ndarray:
    """k strong directions (std 10 down to 3) in a random basis, plus weak noise (std 0.1) elsewhere."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    std = np.concatenate([np.linspace(10.0, 3.0, k), np.full(d - k, 0.1)])
    return ((rng.standard_normal((n, d)) * std) @ basis.T + 3.0).astype(np.float32)


def _projector(pca: PCAWhitening) -> np.ndarray:
    assert pca.matrix is not None
    q = np.linalg.qr(pca.matrix.T.astype(np.float64))[0]
    return q @ q.T


def test_whitening_statistics_match_numpy_pca() -> None:
    x = _correlated_gaussian()
    pca = PCAWhitening(dim=16, l2_normalize=False).fit(x)
    y = pca.apply(x)
    assert y.shape == (2000, 16) and y.dtype == np.float32 and y.flags.c_contiguous
    # Fitted and applied on the same rows, the whitened output has identity (population) covariance exactly,
    # up to float32 rounding (~1e-6 relative); 1e-3 leaves room for that and nothing else.
    cov = np.cov(y.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=1e-3)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-3)
    # Reference in float64: variances along principal axes and the axes themselves (up to sign).
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    evals, evecs = np.linalg.eigh(xc.T @ xc / len(x))
    order = np.argsort(evals)[::-1][:16]
    assert pca.eigenvalues is not None
    np.testing.assert_allclose(pca.eigenvalues, evals[order], rtol=1e-3)
    reference = xc @ evecs[:, order] / np.sqrt(evals[order])
    corr = np.abs((reference * y).mean(axis=0))  # both columns have unit variance: |correlation|
    np.testing.assert_allclose(corr, 1.0, atol=1e-3)


def test_pca_whiten_rows_have_unit_norm() -> None:
    y = pca_whiten(_correlated_gaussian(), dim=16)
    assert y.shape == (2000, 16) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_accepts_float64_and_non_contiguous_input() -> None:
    x = _correlated_gaussian(n=500, d=64)
    wide = np.repeat(x.astype(np.float64), 2, axis=1)[:, ::2]  # float64 view with stride 2: not contiguous
    assert not wide.flags.c_contiguous
    expected = pca_whiten(x, dim=8)
    np.testing.assert_allclose(pca_whiten(wide, dim=8), expected, atol=1e-6)
    np.testing.assert_allclose(pca_whiten(np.asfortranarray(x), dim=8), expected, atol=1e-6)


def test_fit_on_sample_is_close_to_fit_on_all_rows() -> None:
    x = _structured()
    full = PCAWhitening(dim=16).fit(x)
    sampled = PCAWhitening(dim=16).fit(x, sample_size=1000, seed=1)
    # The 16-D principal subspace is well separated (variance >= 9 vs 0.01), so 1000 rows pin it down:
    # spectral distance between the projectors is ~noise/gap ~ 1e-2 at most.
    assert np.linalg.norm(_projector(full) - _projector(sampled), 2) < 0.05
    # Variance estimates from 1000 Gaussian rows have ~4.5% relative std: 20% is > 4 sigma.
    assert full.eigenvalues is not None and sampled.eigenvalues is not None
    np.testing.assert_allclose(sampled.eigenvalues, full.eigenvalues, rtol=0.2)
    # Same geometry after whitening + L2: pairwise cosine similarities nearly agree.
    a, b = full.apply(x[:300]), sampled.apply(x[:300])
    assert np.abs(a @ a.T - b @ b.T).mean() < 0.06
    # And a PCA fitted on unrelated data does not (the check above can fail).
    other = PCAWhitening(dim=16).fit(_correlated_gaussian(n=4000, seed=3)).apply(x[:300])
    assert np.abs(a @ a.T - other @ other.T).mean() > 0.1


def test_sample_size_is_honoured_and_seeded() -> None:
    x = _structured(n=1000)
    # Only 10 rows are used, so a 16-D PCA is impossible: the error proves the sample was drawn.
    with pytest.raises(ValueError, match="pca_dim=16"):
        PCAWhitening(dim=16).fit(x, sample_size=10)
    a = PCAWhitening(dim=4).fit(x, sample_size=50, seed=7).apply(x)
    b = PCAWhitening(dim=4).fit(x, sample_size=50, seed=7).apply(x)
    c = PCAWhitening(dim=4).fit(x, sample_size=50, seed=8).apply(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.abs(a), np.abs(c), atol=1e-4)


def test_state_dict_round_trip_is_exact() -> None:
    x = _correlated_gaussian(n=600)
    pca = PCAWhitening(dim=12, eigen_power=-0.5).fit(x)
    state = pca.state_dict()
    assert state["dim"] == 12 and state["input_dim"] == 64
    rebuilt = PCAWhitening.from_state_dict(state)
    np.testing.assert_array_equal(rebuilt.apply(x), pca.apply(x))
    # state arrays are copies: mutating them does not change the fitted transform
    state["matrix"][...] = 0.0  # type: ignore[index]
    np.testing.assert_array_equal(rebuilt.apply(x), pca.apply(x))
    with pytest.raises(ValueError, match="missing keys"):
        PCAWhitening.from_state_dict({"dim": 12})


def test_dim_larger_than_features_or_rows_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"pca_dim=128 .*lower pca_dim to at most 64"):
        PCAWhitening(dim=128).fit(_correlated_gaussian(n=500, d=64))
    with pytest.raises(ValueError, match=r"pca_dim=32 .*min\(20, 64\).*more images"):
        PCAWhitening(dim=32).fit(_correlated_gaussian(n=20, d=64))


def test_non_finite_rows_are_counted_in_the_error() -> None:
    x = _correlated_gaussian(n=100, d=8)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    x[7, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf\) in 2 of 100 rows"):
        pca_whiten(x, dim=4)
    pca = PCAWhitening(dim=4).fit(_correlated_gaussian(n=100, d=8))
    with pytest.raises(ValueError, match="in 1 of 1 rows"):
        pca.apply(np.full((1, 8), -np.inf, dtype=np.float32))


def test_wrong_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"2-D array \[N, D\]; got shape \(10,\)"):
        PCAWhitening(dim=2).fit(np.ones(10, dtype=np.float32))
    with pytest.raises(ValueError, match="2-D array"):
        pca_whiten(np.ones((4, 5, 6), dtype=np.float32), dim=2)
    pca = PCAWhitening(dim=4).fit(_correlated_gaussian(n=100, d=8))
    with pytest.raises(ValueError, match="dimension 9 but the PCA was fitted on dimension 8"):
        pca.apply(np.ones((3, 9), dtype=np.float32))
    with pytest.raises(RuntimeError, match="before fit"):
        PCAWhitening(dim=4).apply(np.ones((3, 8), dtype=np.float32))


def test_dim_zero_only_normalises() -> None:
    x = _correlated_gaussian(n=50, d=8)
    pca = PCAWhitening(dim=0).fit(x)
    y = pca.apply(x)
    np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(PCAWhitening.from_state_dict(pca.state_dict()).apply(x), y)
    raw = PCAWhitening(dim=-1, l2_normalize=False).fit(x).apply(x)
    np.testing.assert_array_equal(raw, x)


def test_rank_deficient_features_stay_finite() -> None:
    # 10 distinct rows (rank <= 9 after centring) asked for 30 whitened dims: tiny eigenvalues are clamped.
    x = np.repeat(_correlated_gaussian(n=10, d=64), 4, axis=0)
    y = pca_whiten(x, dim=30)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(y[0], y[1])  # duplicates stay duplicates


def test_l2_normalize() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float64)
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert x[0, 0] == 3.0  # input untouched


def test_fewer_rows_than_dimensions_whitens_through_the_gram_matrix() -> None:
    # N < D takes the N x N route; the result must be the same PCA as the covariance route would give.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((60, 12)) @ rng.standard_normal((12, 300)) * 3.0 + 1.0).astype(np.float32)
    pca = PCAWhitening(dim=8, l2_normalize=False).fit(x)
    y = pca.apply(x)
    cov = np.cov(y.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(cov, np.eye(8), atol=2e-3)
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    evals = np.sort(np.linalg.eigvalsh(xc.T @ xc / len(x)))[::-1][:8]
    assert pca.eigenvalues is not None
    np.testing.assert_allclose(pca.eigenvalues, evals, rtol=1e-3)
    assert pca.matrix is not None
    np.testing.assert_allclose(np.linalg.norm(pca.matrix, axis=1) ** 2 * evals, 1.0, rtol=1e-3)


# ---------------------------------------------------------------- the torch path (on the CPU here)

CPU = torch.device("cpu")


def _agree_up_to_sign(numpy_out: np.ndarray, torch_out: np.ndarray) -> None:
    """The two whitenings give the same columns up to each column's sign (eigenvector signs are arbitrary)."""
    signs = np.sign((numpy_out.astype(np.float64) * torch_out).sum(axis=0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(torch_out * signs, numpy_out, atol=1e-4)


@pytest.mark.parametrize(
    "n, d, sample_size",
    [(3000, 64, None), (3000, 64, 1200), (60, 300, None), (90, 300, 70)],
    ids=["rows>dims", "rows>dims-sampled", "rows<dims", "rows<dims-sampled"],
)
def test_torch_path_matches_the_numpy_path(
    n: int, d: int, sample_size: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(9)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    std = np.concatenate([np.linspace(10.0, 3.0, 20), np.full(d - 20, 0.1)])  # distinct leading variances
    x = ((rng.standard_normal((n, d)) * std) @ basis.T + 3.0).astype(np.float32)
    for l2 in (False, True):
        reference = PCAWhitening(dim=12, l2_normalize=l2).fit(x, sample_size=sample_size, seed=4)
        with monkeypatch.context() as patch:  # several row (or column) blocks on the torch path
            patch.setattr(preprocess, "_APPLY_CHUNK_ROWS", 37)
            on_torch = PCAWhitening(dim=12, l2_normalize=l2).fit(
                x, sample_size=sample_size, seed=4, device=CPU
            )
            torch_out = on_torch.apply(x, device=CPU)
        assert torch_out.shape == (n, 12) and torch_out.dtype == np.float32 and torch_out.flags.c_contiguous
        assert reference.eigenvalues is not None and on_torch.eigenvalues is not None
        np.testing.assert_allclose(on_torch.eigenvalues, reference.eigenvalues, rtol=1e-4)
        np.testing.assert_allclose(on_torch.mean, reference.mean)  # the same training rows: the same mean
        _agree_up_to_sign(reference.apply(x), torch_out)
        # The torch projection of a fitted PCA equals the NumPy one; the state round trip keeps the fit.
        np.testing.assert_allclose(torch_out, on_torch.apply(x), atol=1e-5)
        rebuilt = PCAWhitening.from_state_dict(on_torch.state_dict())
        np.testing.assert_array_equal(rebuilt.apply(x), on_torch.apply(x))
        np.testing.assert_allclose(rebuilt.apply(x, device="cpu"), torch_out, atol=1e-6)


def test_torch_path_fixes_each_axis_sign_and_keeps_the_numpy_path_unchanged() -> None:
    x = _structured(n=1500, d=48)
    before = PCAWhitening(dim=8).fit(x).state_dict()
    on_torch = PCAWhitening(dim=8).fit(x, device=CPU)
    assert on_torch.matrix is not None
    rows = np.arange(8)
    assert np.all(on_torch.matrix[rows, np.abs(on_torch.matrix).argmax(axis=1)] > 0)
    after = PCAWhitening(dim=8).fit(x).state_dict()  # the NumPy path is deterministic and untouched
    for key in ("mean", "matrix", "eigenvalues"):
        np.testing.assert_array_equal(after[key], before[key])
