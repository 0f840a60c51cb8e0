"""Context directions (directions.py) against hand-computed cases and a float64 NumPy re-implementation of the
documented rule written here (whiten by C^-1/2 with the eigenvalue floor, weight the keys by their soft mask
values, top-r right singular vectors q, d = Z q, orthonormalised and signed by C^-1 mean key)."""

import numpy as np
import pytest
import torch

from model_rewrite.directions import key_directions, response_overlap, solve_cov, zca_whitener


def _cov(dim: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(200, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a.T @ a / 200


def _np_whitener(cov: np.ndarray, floor: float) -> np.ndarray:
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, floor * evals.max())
    return evecs @ np.diag(evals**-0.5) @ evecs.T


def _np_directions(keys: np.ndarray, w: np.ndarray, cov: np.ndarray, rank: int, floor: float) -> np.ndarray:
    """Rows spanning the context directions (not yet orthonormal), in order of strength."""
    z = _np_whitener(cov, floor)
    _, _, vh = np.linalg.svd((keys @ z) * w[:, None])
    return vh[:rank] @ z


def test_zca_whitener_whitens():
    c = _cov(6)
    z = zca_whitener(c)
    torch.testing.assert_close(z @ c @ z, torch.eye(6, dtype=torch.float64), rtol=1e-8, atol=1e-8)


def test_whitener_by_hand_with_the_eigenvalue_floor_on_singular_and_rescaled_statistics():
    d64 = torch.float64
    c = torch.diag(torch.tensor([4.0, 1.0], dtype=d64))
    torch.testing.assert_close(zca_whitener(c), torch.diag(torch.tensor([0.5, 1.0], dtype=d64)), rtol=1e-14, atol=0)
    # singular C: the zero eigenvalue is floored at eig_floor * max eigenvalue = 1e-3 * 4
    sing = torch.diag(torch.tensor([4.0, 0.0], dtype=d64))
    torch.testing.assert_close(zca_whitener(sing, 1e-3), torch.diag(torch.tensor([0.5, 0.004**-0.5], dtype=d64)),
                               rtol=1e-12, atol=0)
    # the floor is relative: statistics scaled by s (here s < 1, a max eigenvalue below 1) whiten as Z / sqrt(s)
    c2 = torch.diag(torch.tensor([1.0, 1e-4, 1e-9], dtype=d64))
    for s in (1e-6, 1e-2, 1e3):
        torch.testing.assert_close(zca_whitener(c2 * s, 1e-6), zca_whitener(c2, 1e-6) / s**0.5, rtol=1e-10, atol=0)
    torch.testing.assert_close(zca_whitener(c2, 1e-6), torch.diag(torch.tensor([1.0, 100.0, 1e3], dtype=d64)),
                               rtol=1e-12, atol=0)
    # float32 statistics are whitened in float64 (the result is float64)
    z32 = zca_whitener(c2.float() * 1e-2, 1e-6)
    assert z32.dtype == d64
    torch.testing.assert_close(z32, torch.diag(torch.tensor([10.0, 1e3, 1e4], dtype=d64)), rtol=1e-6, atol=0)


def test_solve_cov_is_the_floored_inverse_by_hand_for_any_right_hand_side():
    d64 = torch.float64
    c = torch.diag(torch.tensor([4.0, 0.0, 0.5], dtype=d64))  # singular; floor 1e-3 * 4 = 4e-3
    inv = torch.tensor([0.25, 250.0, 2.0], dtype=d64)
    rhs = torch.arange(1.0, 4.0, dtype=d64)
    torch.testing.assert_close(solve_cov(c, rhs, 1e-3), inv * rhs, rtol=1e-12, atol=0)
    mat = torch.arange(12.0, dtype=d64).reshape(3, 4)  # (C, k) with k != C
    torch.testing.assert_close(solve_cov(c, mat, 1e-3), inv[:, None] * mat, rtol=1e-12, atol=0)
    cube = torch.arange(18.0, dtype=d64).reshape(3, 2, 3)  # (C, a, b)
    torch.testing.assert_close(solve_cov(c, cube, 1e-3), inv[:, None, None] * cube, rtol=1e-12, atol=0)
    # a full C against NumPy, with float32 inputs computed in float64, and a max eigenvalue below 1
    full = _cov(5, 3) * 1e-2
    r = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=d64)
    want = np.linalg.solve(full.numpy(), r.numpy())
    torch.testing.assert_close(solve_cov(full, r, 0.0), torch.from_numpy(want), rtol=1e-9, atol=1e-12)
    got32 = solve_cov(full.float(), r.float(), 0.0)
    assert got32.dtype == d64
    torch.testing.assert_close(got32, torch.from_numpy(want), rtol=1e-4, atol=1e-6)
    small = torch.diag(torch.tensor([1e-2, 1e-9], dtype=d64))  # floor 1e-6 * 1e-2 = 1e-8 applies to the second
    torch.testing.assert_close(solve_cov(small, torch.ones(2, dtype=d64), 1e-6), torch.tensor([100.0, 1e8], dtype=d64),
                               rtol=1e-12, atol=0)


def test_single_key_direction_is_inverse_covariance_times_key():
    c = _cov(5)
    k = torch.randn(1, 5, dtype=torch.float64)
    d = key_directions(k, torch.ones(1, dtype=torch.float64), c, rank=1)
    expected = torch.from_numpy(np.linalg.solve(c.numpy(), k[0].numpy()))
    torch.testing.assert_close(d[0], expected / expected.norm(), rtol=1e-8, atol=1e-8)
    # by hand: C = diag(4, 1), k = (2, 1): C^-1 k = (0.5, 1), so d = (1, 2) / sqrt(5)
    d = key_directions(torch.tensor([[2.0, 1.0]]), torch.ones(1), torch.diag(torch.tensor([4.0, 1.0])))
    assert d.dtype == torch.float32 and d.shape == (1, 2)
    torch.testing.assert_close(d[0], torch.tensor([1.0, 2.0]) / 5**0.5)
    # the default rank is 1, however many keys; the default floor (1e-6) leaves a well-conditioned C exact
    assert key_directions(torch.eye(3), torch.ones(3), torch.eye(3)).shape == (1, 3)
    torch.testing.assert_close(solve_cov(torch.diag(torch.tensor([4.0, 0.5])), torch.ones(2)),
                               torch.tensor([0.25, 2.0], dtype=torch.float64), rtol=1e-12, atol=0)


def test_soft_mask_weights_scale_the_whitened_keys():
    """Two keys along the axes with C = I: the heavier-weighted one is the first direction."""
    keys, c = torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    first = key_directions(keys, torch.tensor([1.0, 0.5], dtype=torch.float64), c, rank=1)
    second = key_directions(keys, torch.tensor([0.5, 1.0], dtype=torch.float64), c, rank=1)
    assert first[0].tolist() == [1.0, 0.0] and second[0].tolist() == [0.0, 1.0]


def test_directions_match_a_float64_reimplementation():
    g = torch.Generator().manual_seed(2)
    c = _cov(8, 1)
    keys = torch.randn(40, 8, dtype=torch.float64, generator=g) + 1.0
    w = torch.rand(40, dtype=torch.float64, generator=g) + 0.1
    for rank, floor in ((1, 1e-6), (3, 1e-6), (3, 0.7)):  # 0.7 of the largest eigenvalue floors most of them
        d = key_directions(keys, w, c, rank=rank, eig_floor=floor)
        ref = _np_directions(keys.numpy(), w.numpy(), c.numpy(), rank, floor)
        q = np.linalg.qr(ref.T)[0]  # orthonormal basis of the expected span
        torch.testing.assert_close(d @ d.T, torch.eye(rank, dtype=torch.float64), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(d.T @ d, torch.from_numpy(q @ q.T), rtol=1e-7, atol=1e-8)  # the same span
        # the first direction is the strongest one, signed towards C^-1 mean key
        first = ref[0] / np.linalg.norm(ref[0])
        mean = (keys.numpy() * w.numpy()[:, None]).sum(0) / w.numpy().sum()
        first *= np.sign(first @ np.linalg.solve(c.numpy(), mean))
        torch.testing.assert_close(d[0], torch.from_numpy(first), rtol=1e-7, atol=1e-8)
        for row in d:  # every direction agrees with C^-1 mean key (as computed here with the floor)
            z = _np_whitener(c.numpy(), floor)
            assert float(row.numpy() @ (z @ z @ mean)) > 0


def test_the_sign_follows_the_weighted_mean_key():
    """keys (1, 0) weighted 1 and (-0.5, 0) weighted 0.25: the weighted mean is +0.875 along x."""
    keys = torch.tensor([[1.0, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    d = key_directions(keys, torch.tensor([1.0, 0.25], dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    assert d[0].tolist() == [1.0, 0.0]
    # keys symmetric about zero: the mean is zero, the sign is +1 and the direction stays a unit vector
    sym = key_directions(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.ones(2), torch.eye(2))
    assert float(sym[0].norm()) == pytest.approx(1.0)


def test_rank_is_capped_by_the_number_of_keys_with_positive_weight():
    d = key_directions(torch.randn(2, 6, dtype=torch.float64), torch.ones(2, dtype=torch.float64), _cov(6), rank=4)
    assert d.shape == (2, 6)
    keys = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    d = key_directions(keys, torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64), _cov(6), rank=4)
    assert d.shape == (2, 6)
    # and only keys with positive weight span them
    ref = _np_directions(keys.numpy()[:2], np.array([1.0, 0.5]), _cov(6).numpy(), 2, 1e-6)
    q = np.linalg.qr(ref.T)[0]
    torch.testing.assert_close(d.T @ d, torch.from_numpy(q @ q.T), rtol=1e-7, atol=1e-8)
    assert key_directions(torch.randn(10, 3), torch.ones(10), torch.eye(3), rank=5).shape == (3, 3)


def test_float32_keys_give_float32_directions_computed_in_float64():
    keys = torch.randn(12, 4, generator=torch.Generator().manual_seed(5))
    w = torch.rand(12, generator=torch.Generator().manual_seed(6)) + 0.1
    d32 = key_directions(keys, w, _cov(4).float(), rank=2)
    d64 = key_directions(keys.double(), w.double(), _cov(4).float(), rank=2)
    assert d32.dtype == torch.float32 and d64.dtype == torch.float64
    torch.testing.assert_close(d32, d64.float(), rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_refused_with_their_shapes():
    with pytest.raises(ValueError, match=r"keys \(N, C\) and weights \(N,\) expected, got \(2, 3, 4\) and \(2,\)"):
        key_directions(torch.ones(2, 3, 4), torch.ones(2), torch.eye(3))
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(3,\)"):
        key_directions(torch.ones(2, 3), torch.ones(3), torch.eye(3))
    with pytest.raises(ValueError, match="^no key has positive weight: the context selection is empty$"):
        key_directions(torch.ones(2, 3), torch.zeros(2), torch.eye(3))


# --- response_overlap: how much two rules respond to the same keys ----------------------------------------------

def test_response_overlap_is_the_top_canonical_correlation_of_the_responses_over_keys():
    # independent route: the responses of real keys, their (uncentred) orthonormal bases by QR, and the largest
    # singular value of Qa^T Qb; the code under test sees only the second moment K^T K / N
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(10, 10))
    keys = rng.normal(size=(5000, 10)) @ mix  # correlated channels
    cov = keys.T @ keys / len(keys)
    a, b = rng.normal(size=(1, 10)), rng.normal(size=(3, 10))
    b[0] += 3 * a[0]  # so that b shares some of a's response
    qa, _ = np.linalg.qr(keys @ a.T)
    qb, _ = np.linalg.qr(keys @ b.T)
    want = np.linalg.svd(qa.T @ qb, compute_uv=False).max()
    got = response_overlap(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(cov))
    assert 0.3 < want < 0.99 and got == pytest.approx(want, abs=1e-9)
    # symmetric, and blind to the basis a rule's directions are written in
    mixed = torch.from_numpy(rng.normal(size=(3, 3)) @ b)
    assert response_overlap(torch.from_numpy(b), torch.from_numpy(a), torch.from_numpy(cov)) == pytest.approx(got, abs=1e-9)
    assert response_overlap(torch.from_numpy(a), mixed, torch.from_numpy(cov)) == pytest.approx(got, abs=1e-9)


def test_response_overlap_by_hand():
    eye = torch.eye(3, dtype=torch.float64)
    e1, e2, e3 = eye[:1], eye[1:2], eye[2:]
    assert response_overlap(e1, e2, eye) == pytest.approx(0.0, abs=1e-12)
    assert response_overlap(e1, torch.cat([e2, e1 + e2]), eye) == pytest.approx(1.0)  # b's span holds e1
    # single directions: |a C b| / sqrt(a C a b C b), with C = [[2, -1], [-1, 2]] and an idle third channel
    cov = torch.tensor([[2.0, -1.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert response_overlap(e1, e2, cov) == pytest.approx(0.5)  # |-1| / sqrt(2 * 2): a negative correlation counts
    assert response_overlap(e1, e1 + e2, cov) == pytest.approx(1 / np.sqrt(2 * 2))  # (2 - 1) / sqrt(2 * (2 - 2 + 2))
    assert response_overlap(e1, 3 * e1 - e2, cov) == pytest.approx(7 / np.sqrt(2 * 26))  # (6+1) / sqrt(2 * (18+6+2))
    # a direction no key responds to (channel 3 never carries anything) adds nothing and alone gives 0
    assert response_overlap(e1, e3, cov) == 0.0
    assert response_overlap(e1, torch.cat([e3, e2]), cov) == pytest.approx(0.5)
