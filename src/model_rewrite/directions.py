"""Pure math for context directions: ZCA whitening of keys and their top singular directions."""

from __future__ import annotations

import torch


def zca_whitener(cov: torch.Tensor, eig_floor: float = 1e-6) -> torch.Tensor:
    """Z = C^(-1/2), symmetric (C_in, C_in), with eigenvalues floored at `eig_floor * max eigenvalue`.

    cov: (C_in, C_in) symmetric positive semi-definite. Computed in float64.
    """
    c = cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    floor = eig_floor * float(evals.max().clamp_min(1e-300))
    inv_sqrt = evals.clamp_min(floor).rsqrt()
    return (evecs * inv_sqrt) @ evecs.T


def solve_cov(cov: torch.Tensor, rhs: torch.Tensor, eig_floor: float = 1e-6) -> torch.Tensor:
    """C^-1 rhs with the same eigenvalue floor as `zca_whitener`. cov (C, C), rhs (C, ...) -> (C, ...)."""
    c = cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    floor = eig_floor * float(evals.max().clamp_min(1e-300))
    r = rhs.to(torch.float64)
    flat = r.reshape(r.shape[0], -1)  # (C, k): a batched matmul would not contract a (C, a, b) right-hand side
    return (evecs @ ((evecs.T @ flat) / evals.clamp_min(floor)[:, None])).reshape(r.shape)


def key_directions(
    keys: torch.Tensor,
    weights: torch.Tensor,
    cov: torch.Tensor,
    rank: int = 1,
    eig_floor: float = 1e-6,
    whitener: torch.Tensor | None = None,
) -> torch.Tensor:
    """Orthonormal context directions D (r, C_in) for keys selected by soft mask weights.

    keys: (N, C_in) keys under the context masks; weights: (N,) mask values in [0, 1].
    Keys are whitened with Z = C^(-1/2), weighted, and the top-r right singular vectors q of
    the stack give d = Z q (so a single key k gives d ~ C^-1 k). The rows are orthonormalised
    (QR) and signed so that each agrees with the mean key's C^-1 image. `whitener`: zca_whitener(cov,
    eig_floor), when the caller has it already (many rules at one layer).
    """
    if keys.dim() != 2 or weights.shape != keys.shape[:1]:
        raise ValueError(f"keys (N, C) and weights (N,) expected, got {tuple(keys.shape)} and {tuple(weights.shape)}")
    w = weights.to(keys.device, torch.float64)
    if not (w > 0).any():
        raise ValueError("no key has positive weight: the context selection is empty")
    rank = min(rank, int((w > 0).sum()), keys.shape[1])
    z = zca_whitener(cov.to(keys.device), eig_floor) if whitener is None else whitener.to(keys.device, torch.float64)
    white = (keys.to(torch.float64) @ z) * w[:, None]  # (N, C_in), Z symmetric
    _, _, vh = torch.linalg.svd(white, full_matrices=False)
    dirs = vh[:rank] @ z  # rows d = Z q
    q, _ = torch.linalg.qr(dirs.T)  # (C_in, r) orthonormal columns spanning the same space
    dirs = q.T[:rank]
    mean_key = (keys.to(torch.float64) * w[:, None]).sum(0) / w.sum()
    reference = z @ (z @ mean_key)  # C^-1 mean key
    signs = torch.sign(dirs @ reference)
    signs[signs == 0] = 1
    return (dirs * signs[:, None]).to(keys.dtype)


def key_spectrum(keys: torch.Tensor, weights: torch.Tensor, cov: torch.Tensor, eig_floor: float = 1e-6) -> torch.Tensor:
    """Singular values of the whitened, weighted keys that `key_directions` takes its directions from, largest
    first, divided by the largest: how many directions a context really spans (the paper's UI printed them)."""
    w = weights.to(keys.device, torch.float64)
    if not (w > 0).any():
        raise ValueError("no key has positive weight: the context selection is empty")
    white = (keys.to(torch.float64) @ zca_whitener(cov.to(keys.device), eig_floor)) * w[:, None]
    s = torch.linalg.svdvals(white)
    return s / s[0].clamp_min(1e-300)


def response_overlap(a: torch.Tensor, b: torch.Tensor, cov: torch.Tensor, eig_floor: float = 1e-9) -> float:
    """How much two rules respond to the same keys, in [0, 1]: the largest canonical correlation between the
    responses a k and b k over keys with second moment `cov` (uncentred, as the directions are found).

    a (r_a, C_in), b (r_b, C_in): two rules' context directions; cov (C_in, C_in). For single directions it is
    |a C b| / sqrt(a C a  b C b). 1: some mix of one rule's responses is a multiple of the other's on every key
    (a change along one rule's directions cannot avoid the other's context); 0: no mix of them is correlated.
    Computed in float64; directions along which no key responds (below `eig_floor` of the largest) are left out.
    """
    c = cov.to(torch.float64)
    mats = []
    for d in (a, b):
        d = d.to(torch.float64).reshape(-1, c.shape[0])
        g = d @ c @ d.T
        evals, evecs = torch.linalg.eigh((g + g.T) / 2)
        keep = evals > eig_floor * float(evals.max().clamp_min(1e-300))
        if not keep.any():
            return 0.0
        mats.append(d.T @ (evecs[:, keep] * evals[keep].rsqrt()))  # (C_in, r'): responses with unit second moment
    (ua, ub) = mats
    return float(torch.linalg.svdvals(ua.T @ c @ ub).max().clamp(0.0, 1.0))
