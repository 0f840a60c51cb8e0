import torch

from model_rewrite.directions import key_directions, solve_cov, zca_whitener


def _cov(dim: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(200, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a.T @ a / 200


def test_zca_whitener_whitens():
    c = _cov(6)
    z = zca_whitener(c)
    torch.testing.assert_close(z @ c @ z, torch.eye(6, dtype=torch.float64), rtol=1e-8, atol=1e-8)


def test_single_key_direction_is_inverse_covariance_times_key():
    c = _cov(5)
    k = torch.randn(1, 5, dtype=torch.float64)
    d = key_directions(k, torch.ones(1, dtype=torch.float64), c, rank=1)
    expected = solve_cov(c, k[0])
    expected = expected / expected.norm()
    torch.testing.assert_close(d[0], expected, rtol=1e-8, atol=1e-8)


def test_directions_are_orthonormal_and_signed_by_the_mean():
    c = _cov(8, 1)
    keys = torch.randn(40, 8, dtype=torch.float64) + 1.0
    d = key_directions(keys, torch.rand(40, dtype=torch.float64) + 0.1, c, rank=3)
    torch.testing.assert_close(d @ d.T, torch.eye(3, dtype=torch.float64), rtol=1e-8, atol=1e-8)
    assert float(d[0] @ solve_cov(c, keys.mean(0))) > 0


def test_rank_is_capped_by_the_number_of_keys():
    d = key_directions(torch.randn(2, 6, dtype=torch.float64), torch.ones(2, dtype=torch.float64), _cov(6), rank=4)
    assert d.shape == (2, 6)
