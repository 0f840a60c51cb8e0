"""The joint closed form: least squares for the factor L of W0 + L D over every rule's paste image at once.

Unknowns: L (C_out, k, T taps); the change of the layer's linear output at value position p of rule i's paste
image is sum_{r,t} L[c, r, t] a_ip[r, t], with a_ip[r, t] = (D k_i)[r] at the key that tap t reads for p
(`tap_table`, found by probing the module, checked on random weights). Output channels share the design, so
the normal equations are one (k T) x (k T) system G x = g with C_out right-hand sides:

    G = sum_i sum_p w_i(p) a_ip a_ip^T + ridge' I,     g = sum_i sum_{p in box_i} w_in_i(p) a_ip b_i(p)^T

where w_i is 1/n_in in the rule's box and preserve/n_keep where it keeps its image (`joint.weight_maps`), and b
is the goal's residual. This is exactly the single solve's least squares (scaled by 1/n_in), so one rule
solves as `solve_update`'s closed form does.

Cost. The outside weight of a rule is one constant c_i over its image, so that part of G is, for the tap pair
(t, t') whose keys lie a fixed offset s apart, sum_q m_tt'(q) Y_q Y_{q+s}^T with Y_q the (k x N) matrix of
sqrt(c_i) (D k_i)(q): one batched product per offset s (9 for a 4x4 stride-2 kernel) instead of one per value
position. Only the positions of the boxes (a few per rule) are added row by row, grouped by the taps they read.
Memory: the rules' key maps (N x key map), the (k T)^2 system and a float64 working set of one batch of rules
(all of them up to ONE_CHUNK, else CHUNK at a time); the systems of taps that never share a
position (the four phases of a stride-2 kernel) are solved apart. Modules whose output is not a plain
convolution of the keys fall back to the generic design (`update.linear_design`) per rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .hooks import call_with_weight
from .layers import LayerSpec
from .update import linear_design

if TYPE_CHECKING:  # pragma: no cover
    from .joint import JointRule

ONE_CHUNK = 128  # up to this many rules are assembled in one batch (fastest)
CHUNK = 32  # beyond, batches of this many: the float64 working set stays ~100 MB at a 128-wide, 16x16 key grid


def tap_table(weight_module: nn.Module, spec: LayerSpec, w0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
    """(T, P): the flat index of the key that kernel tap t reads for value position p (-1: none), or None when
    the module's output is not such a gather (checked on a random weight and `keys`)."""
    try:
        grid = tuple(keys.shape[2:])
        n_keys = int(torch.tensor(grid).prod()) if grid else 1
        out_axis = 1 - spec.key_axis
        c_out, tap_shape = w0.shape[out_axis], tuple(w0.shape[2:])
        taps = int(torch.tensor(tap_shape).prod()) if tap_shape else 1
        index = torch.arange(1, n_keys + 1, dtype=w0.dtype, device=w0.device).reshape(1, 1, *grid)
        shape = list(w0.shape)
        shape[spec.key_axis] = 1
        base = call_with_weight(weight_module, spec.param_name, w0.new_zeros(shape), index)
        rows = []
        for start in range(0, taps, c_out):
            n = min(c_out, taps - start)
            probe = torch.zeros(c_out, 1, taps, dtype=w0.dtype, device=w0.device)
            probe[torch.arange(n), 0, start + torch.arange(n)] = 1.0
            probe = probe.reshape(c_out, 1, *tap_shape)
            probe = probe.transpose(0, 1) if out_axis == 1 else probe
            out = call_with_weight(weight_module, spec.param_name, probe, index) - base
            rows.append(out[0, :n].reshape(n, -1))
        found = torch.cat(rows)
        table = found.round()
        if float((found - table).abs().max()) > 1e-3 or table.min() < 0 or table.max() > n_keys:
            return None
        table = table.long() - 1
        # check: a random weight's output equals the gathered sum
        w = torch.randn(w0.shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype).to(w0.device)
        want = (call_with_weight(weight_module, spec.param_name, w, keys)
                - call_with_weight(weight_module, spec.param_name, torch.zeros_like(w), keys))[0].reshape(c_out, -1)
        gathered = _gather(keys[0].reshape(keys.shape[1], -1), table)  # (C_in, T, P)
        got = torch.einsum("oct,ctp->op", w.movedim(spec.key_axis, 1).reshape(c_out, keys.shape[1], taps), gathered)
        if want.shape != got.shape or float((want - got).abs().max()) > 1e-4 * float(want.abs().max()) + 1e-6:
            return None
        return table
    except Exception:  # noqa: BLE001  any module that cannot be probed this way takes the generic path
        return None


def _gather(flat: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """flat (..., Q) at the table's indices (T, P), zero where the index is -1 -> (..., T, P)."""
    padded = torch.cat([flat, flat.new_zeros(*flat.shape[:-1], 1)], -1)
    return padded[..., table.where(table >= 0, flat.shape[-1])]


def _shift_pairs(table: torch.Tensor, n_keys: int) -> dict[int, list[tuple[int, int, torch.Tensor]]] | None:
    """Tap pairs (t, t', m) grouped by the key offset s between them (m: how often each key q is read by t with
    q + s read by t' at one position), or None when a pair has no fixed offset."""
    valid = table >= 0
    pairs: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for t in range(table.shape[0]):
        for u in range(table.shape[0]):
            both = valid[t] & valid[u]
            if not both.any():
                continue
            offsets = table[u, both] - table[t, both]
            if bool((offsets != offsets[0]).any()):
                return None
            m = torch.bincount(table[t, both], minlength=n_keys).to(torch.float64)
            pairs.setdefault(int(offsets[0]), []).append((t, u, m))
    return pairs  # (t, u) at offset s and (u, t) at -s read the same positions: _add_uniform uses s >= 0


def _components(table: torch.Tensor) -> list[list[int]]:
    """Taps grouped so that no value position reads taps of two groups (their systems are independent)."""
    valid = table >= 0
    parent = list(range(table.shape[0]))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for pattern in torch.unique(valid.T, dim=0):  # the distinct sets of taps a position reads
        taps = torch.nonzero(pattern).flatten().tolist()
        for t in taps[1:]:
            parent[root(t)] = root(taps[0])
    groups: dict[int, list[int]] = {}
    for t in range(table.shape[0]):
        groups.setdefault(root(t), []).append(t)
    return list(groups.values())


def _cols(taps: Sequence[int], k: int, n_taps: int) -> torch.Tensor:
    """Flat (r, t) column indices of taps `taps` for every direction r."""
    return (torch.arange(k)[:, None] * n_taps + torch.tensor(list(taps))[None, :]).reshape(-1)


def own_projectors(dirs: torch.Tensor, rules: Sequence["JointRule"]) -> torch.Tensor:
    """Per rule (n, k, C_in): D P_i with P_i = D_i^T D_i, so that (D P_i) k are the coordinates of the change
    along rule i's own directions (what its paste image is held against with protect="own")."""
    return torch.stack([dirs @ r.dirs.to(dirs).T @ r.dirs.to(dirs) for r in rules])


def held_keys(dirs: torch.Tensor, rules: Sequence["JointRule"], keys: torch.Tensor) -> torch.Tensor:
    """(D P_i) k_i for each rule's key map keys[i] (n, C_in, ...), through the rule's own rank r_i:
    (D D_i^T)(D_i k_i) costs k r_i Q instead of k C_in Q."""
    out = []
    for r, k in zip(rules, keys):
        own = r.dirs.to(dirs)
        out.append(torch.einsum("kr,r...->k...", dirs @ own.T, torch.einsum("rc,c...->r...", own, k)))
    return torch.stack(out)


def holds_own(protect: str, n_rules: int) -> bool:
    """Whether paste images are held against their own rule's directions only (one rule: the same thing)."""
    if protect not in ("own", "all"):
        raise ValueError(f"protect must be 'own' or 'all', got {protect!r}")
    return protect == "own" and n_rules > 1


def closed_form_factor(weight_module: nn.Module, spec: LayerSpec, w0: torch.Tensor, dirs: torch.Tensor,
                       rules: Sequence["JointRule"], w_in: torch.Tensor, w_out: torch.Tensor, ridge: float,
                       protect: str = "own") -> torch.Tensor:
    """The factor (weight-shaped, key axis k) minimising the joint least squares (see the module's docstring)."""
    k, out_axis = dirs.shape[0], 1 - spec.key_axis
    c_out, tap_shape = w0.shape[out_axis], tuple(w0.shape[2:])
    n_taps = int(torch.tensor(tap_shape).prod()) if tap_shape else 1
    table = tap_table(weight_module, spec, w0, rules[0].keys)
    n_keys = rules[0].keys[0, 0].numel()
    pairs = _shift_pairs(table, n_keys) if table is not None else None
    gram = torch.zeros(k * n_taps, k * n_taps, dtype=torch.float64)
    rhs = torch.zeros(k * n_taps, c_out, dtype=torch.float64)
    d64 = dirs.to(torch.float64)
    if table is None or pairs is None:
        _generic(weight_module, spec, w0, dirs, rules, w_in, w_out, gram, rhs, protect)
        components = [list(range(n_taps))]
    else:
        components = _components(table)
        size = len(rules) if len(rules) <= ONE_CHUNK else CHUNK
        for lo in range(0, len(rules), size):
            chunk = rules[lo:lo + size]
            keys = torch.cat([r.keys for r in chunk]).to(torch.float64).flatten(2)  # (n, C_in, Q)
            proj = torch.einsum("kc,ncq->nkq", d64, keys)  # (n, k, Q)
            held = held_keys(d64, chunk, keys) if holds_own(protect, len(rules)) else proj  # what each image is held against
            const = w_out[lo:lo + size].flatten(1).amax(1)  # the outside weight, one value per rule
            _add_uniform(gram, held * const.sqrt()[:, None, None], pairs, k, n_taps)
            _add_rows(gram, rhs, proj, held, chunk, table, w_in[lo:lo + size], w_out[lo:lo + size], const, k, n_taps)
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    x = torch.zeros_like(rhs)
    for taps in components:
        idx = _cols(taps, k, n_taps)
        a = gram[idx[:, None], idx[None, :]]
        x[idx] = torch.linalg.solve(a + lam * torch.eye(len(idx), dtype=a.dtype), rhs[idx])
    factor = x.T.reshape(c_out, k, *tap_shape)
    return (factor.transpose(0, 1) if out_axis == 1 else factor).to(w0.dtype).contiguous()


def _add_uniform(gram: torch.Tensor, y: torch.Tensor, pairs: dict, k: int, n_taps: int) -> None:
    """gram += sum_i c_i sum_p a_ip a_ip^T over every position, by key offsets; y = sqrt(c_i) D k_i (n, k, Q).
    The pairs at offset -s are the transposes of those at +s, so only s >= 0 is multiplied."""
    yq = y.permute(2, 1, 0).contiguous()  # (Q, k, n): Y_q
    n_keys = yq.shape[0]
    g4 = gram.view(k, n_taps, k, n_taps)
    for s in sorted(o for o in pairs if o >= 0):
        z = torch.bmm(yq[: n_keys - s], yq[s:].transpose(1, 2)).reshape(n_keys - s, k * k)  # Y_q Y_{q+s}^T
        masks = torch.stack([m[: n_keys - s] for _, _, m in pairs[s]])  # (pairs, q)
        for (t, u, _), block in zip(pairs[s], (masks @ z).reshape(len(pairs[s]), k, k)):
            g4[:, t, :, u] += block
            if s > 0:  # the pair (u, t) reads its keys -s apart: the same products, transposed
                g4[:, u, :, t] += block.T


def _add_rows(gram: torch.Tensor, rhs: torch.Tensor, proj: torch.Tensor, held: torch.Tensor,
              rules: Sequence["JointRule"], table: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
              const: torch.Tensor, k: int, n_taps: int) -> None:
    """Row by row: each rule's box positions with its goal (weight 1/n_in, all directions), and the positions
    where its outside weight is not the constant the uniform part added (its box, other rules' boxes on its
    image: weight -c_i, on what the image is held against)."""
    hv, wv = rules[0].grid
    goal_rows: list[list[torch.Tensor]] = [[], [], [], []]  # rule, position, weight, residual
    fix_rows: list[list[torch.Tensor]] = [[], [], []]
    for i, r in enumerate(rules):
        inside = torch.nonzero(w_in[i].flatten() > 0).flatten()
        b = torch.zeros(hv, wv, r.residual.shape[0], dtype=torch.float64)
        y0, y1, x0, x1 = r.box
        b[y0:y1, x0:x1] = r.residual.to(torch.float64).permute(1, 2, 0)
        for lst, v in zip(goal_rows, (torch.full((len(inside),), i), inside, w_in[i].flatten()[inside],
                                      b.reshape(hv * wv, -1)[inside])):
            lst.append(v)
        if const[i] > 0:
            off = torch.nonzero(w_out[i].flatten() != const[i]).flatten()
            for lst, v in zip(fix_rows, (torch.full((len(off),), i), off, torch.full((len(off),), -float(const[i]),
                                                                                     dtype=torch.float64))):
                lst.append(v)
    ri, pos, wt, res = (torch.cat(v) for v in goal_rows)
    _add_row_set(gram, rhs, proj, ri, pos, wt, res, table, k, n_taps)
    if fix_rows[0]:
        ri, pos, wt = (torch.cat(v) for v in fix_rows)
        _add_row_set(gram, None, held, ri, pos, wt, None, table, k, n_taps)


def _add_row_set(gram: torch.Tensor, rhs: torch.Tensor | None, proj: torch.Tensor, ri: torch.Tensor, pos: torch.Tensor,
                 wt: torch.Tensor, res: torch.Tensor | None, table: torch.Tensor, k: int, n_taps: int) -> None:
    """gram += sum w a a^T (and rhs += sum w a b^T) over rows (rule ri, value position pos), a gathered from
    proj (n, k, Q); rows that read the same taps share one product (a position's taps as a bit pattern; one
    group past 62 taps)."""
    valid = table >= 0
    pattern = (valid.long() << torch.arange(table.shape[0])[:, None]).sum(0) if table.shape[0] < 62 else None
    group = pattern[pos] if pattern is not None else torch.zeros_like(pos)
    pq = proj.permute(0, 2, 1)  # (n, Q, k)
    padded = torch.cat([pq, pq.new_zeros(pq.shape[0], 1, k)], 1)
    for key in torch.unique(group).tolist():
        sel = group == key
        taps = torch.nonzero(valid[:, pos[sel][0]]).flatten().tolist() if pattern is not None else list(range(table.shape[0]))
        if not taps:
            continue
        q = table[taps][:, pos[sel]]  # (s, rows)
        x = padded[ri[sel][None, :], q.where(q >= 0, pq.shape[1])]  # (s, rows, k)
        x = x.permute(1, 2, 0).reshape(int(sel.sum()), -1)  # (rows, k * s), columns (r, t)
        idx = _cols(taps, k, n_taps)
        gram[idx[:, None], idx[None, :]] += (x * wt[sel][:, None]).T @ x
        if rhs is not None and res is not None:
            rhs[idx] += (x * wt[sel][:, None]).T @ res[sel]


def _generic(weight_module: nn.Module, spec: LayerSpec, w0: torch.Tensor, dirs: torch.Tensor,
             rules: Sequence["JointRule"], w_in: torch.Tensor, w_out: torch.Tensor, gram: torch.Tensor,
             rhs: torch.Tensor, protect: str) -> None:
    """Any module: each rule's design by `update.linear_design`, weighted rows added to the normal equations."""
    own = own_projectors(dirs, rules) if holds_own(protect, len(rules)) else None
    for i, r in enumerate(rules):
        zero = torch.zeros_like(w0)

        def change(delta: torch.Tensor, keys: torch.Tensor = r.keys) -> torch.Tensor:
            return (call_with_weight(weight_module, spec.param_name, delta, keys)
                    - call_with_weight(weight_module, spec.param_name, zero, keys))

        with torch.no_grad():
            a = linear_design(change, dirs, tuple(w0.shape), spec.key_axis).to(torch.float64)  # (P, k T)
            held = a if own is None else linear_design(change, own[i], tuple(w0.shape), spec.key_axis).to(torch.float64)
        b = torch.zeros(*r.grid, r.residual.shape[0], dtype=torch.float64)
        y0, y1, x0, x1 = r.box
        b[y0:y1, x0:x1] = r.residual.to(torch.float64).permute(1, 2, 0)
        gram += (a * w_in[i].flatten()[:, None]).T @ a + (held * w_out[i].flatten()[:, None]).T @ held
        rhs += (a * w_in[i].flatten()[:, None]).T @ b.reshape(-1, b.shape[-1])
