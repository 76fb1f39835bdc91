"""Tests of bootkit/metrics.py's Frechet distance and feature statistics against closed forms."""
import numpy as np
import pytest
import torch

from bootkit import metrics



def _covariance(dim, seed):
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_identical_gaussians_are_at_distance_zero():
    mu, cov = torch.randn(32, dtype=torch.float64), _covariance(32, 0)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-9


def test_diagonal_gaussians_match_the_closed_form():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    var1, var2 = torch.rand(8, generator=g, dtype=torch.float64) + 0.1, torch.rand(8, generator=g, dtype=torch.float64) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum()
    assert metrics.frechet_distance(mu1, var1.diag(), mu2, var2.diag()) == pytest.approx(expected.item(), rel=1e-10)


def test_general_gaussians_match_scipys_matrix_square_root_and_are_symmetric():
    from scipy.linalg import sqrtm
    mu1, mu2 = np.zeros(16), np.ones(16)
    c1, c2 = _covariance(16, 2).numpy(), _covariance(16, 3).numpy()
    expected = 16 + np.trace(c1) + np.trace(c2) - 2 * np.trace(sqrtm(c1 @ c2).real)  # the textbook formula
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-8)


def test_a_singular_covariance_gives_a_finite_non_negative_distance():
    low_rank = torch.zeros(4, 4, dtype=torch.float64)
    low_rank[0, 0] = 1.0  # features that never fire: zero variance
    assert metrics.frechet_distance(torch.zeros(4), low_rank, torch.zeros(4), low_rank) == pytest.approx(0, abs=1e-9)
    assert 0 < metrics.frechet_distance(torch.zeros(4), low_rank, torch.ones(4), _covariance(4, 4)) < float("inf")


def test_feature_stats_are_the_float64_mean_and_unbiased_covariance():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(5))
    mean, cov = metrics.feature_stats(x)
    assert mean.dtype == cov.dtype == torch.float64 and cov.shape == (5, 5)
    assert np.allclose(mean.numpy(), x.double().numpy().mean(0)) and np.allclose(cov.numpy(), np.cov(x.double().numpy().T))
