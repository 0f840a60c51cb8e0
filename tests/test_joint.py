"""The joint solve (joint.py, jointform.py) on small models, against answers found without the code under test:
rules whose keys live in separate channels solve jointly exactly as alone; the key-space closed form equals a
float64 least squares built here position by position; overlapping rules both meet their goals better jointly
than stacked; undo, redo and member removal are exact to the bit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from helpers import box_mask

from model_rewrite import KeyConfig, Rewriter, Selection, StatsConfig, UpdateConfig
from model_rewrite.errors import InvalidEdit
from model_rewrite.interference import Overlap, batch_overlaps, stack_overlaps
from model_rewrite.joint import joint_directions
from model_rewrite.latents import latent_from_seed
from model_rewrite.layers import LayerSpec
from model_rewrite.update import delta_from_factors


class SplitKeys(nn.Module):
    """z (16,) -> a key map (8, 8, 8) whose channels 0-3 are live when z[0] > 0 and 4-7 otherwise; a 3x3
    convolution and tanh draw the image. Two images of opposite sign share no key direction, so rules pasted
    on them are independent: their joint solve must equal the two solved alone."""

    resolution = 8
    latent_shape = (16,)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.keys = nn.Linear(16, 8 * 64, bias=False)
        self.draw = nn.Sequential(nn.Conv2d(8, 3, 3, padding=1), nn.Tanh())
        with torch.no_grad():
            self.keys.weight.copy_(torch.randn(8 * 64, 16, generator=g) / 4)
            self.draw[0].weight.copy_(torch.randn(3, 8, 3, 3, generator=g) * 0.3)
            self.draw[0].bias.copy_(torch.randn(3, generator=g) * 0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(-1, 16)
        k = self.keys(z).reshape(-1, 8, 8, 8)
        gate = (z[:, :1] > 0).to(k.dtype)[:, :, None, None]
        return self.draw(torch.cat([k[:, :4] * gate, k[:, 4:] * (1 - gate)], 1))

    def editable_layers(self) -> list[LayerSpec]:
        return [LayerSpec("draw", "draw.0", key_axis=1)]


def _seeds(sign: int, n: int) -> list[int]:
    return [s for s in range(200) if (latent_from_seed(s, (16,))[0] > 0) == (sign > 0)][:n]


def _split_rules(rw: Rewriter, update: UpdateConfig) -> tuple:
    (pa, ca), (pb, cb) = _seeds(1, 2), _seeds(-1, 2)
    stats = StatsConfig(num_samples=300)
    a = rw.new_edit("draw", paste=Selection(pa, box_mask(8, 1, 4, 1, 4)), copy=Selection(ca, box_mask(8, 4, 7, 4, 7)),
                    update=update, stats=stats, name="a", keys=KeyConfig(rank=2))
    b = rw.new_edit("draw", paste=Selection(pb, box_mask(8, 3, 6, 2, 5)), copy=Selection(cb, box_mask(8, 0, 3, 5, 8)),
                    update=update, stats=stats, name="b")
    return a, b


def test_rules_with_separate_keys_solve_jointly_as_alone(tmp_path):
    rw = Rewriter(SplitKeys(), cache_dir=tmp_path / "c")
    a, b = _split_rules(rw, UpdateConfig(method="closed_form", ridge=0.0))
    alone = rw.solve(a).delta.dense() + rw.solve(b).delta.dense()
    (joint,) = rw.solve_many([a, b])
    assert joint.delta.rank == 3 == joint.requested_rank
    torch.testing.assert_close(joint.delta.dense(), alone, rtol=1e-5, atol=1e-6)
    # refined (Adam): each rule's gradient comes from its own image only, so the joint loss curve is the sum of
    # the two curves; the joint keeps its best total, where each rule has its own curve's value
    a2, b2 = _split_rules(rw, UpdateConfig(steps=25))
    ra, rb = rw.solve(a2), rw.solve(b2)
    (j2,) = rw.solve_many([a2, b2])
    assert j2.losses == pytest.approx([x + y for x, y in zip(ra.losses, rb.losses)], rel=1e-3)
    best = min(range(len(j2.losses)), key=j2.losses.__getitem__)
    assert j2.rule_losses == pytest.approx([ra.losses[best], rb.losses[best]], rel=1e-3)


def _float64_joint_closed_form(rw: Rewriter, edits, dirs: torch.Tensor, protect: str) -> torch.Tensor:
    """The joint least squares built row by row in float64 for the tiny model's b16 block (a ConvTranspose2d,
    4x4 kernel, stride 2, padding 1): one column per (direction, tap), its output found by running the
    convolution on a one-hot factor. Box rows fit the goal; the other rows of a paste image (less other rules'
    boxes on it) ask for no change along its own rule's directions (protect="own": the directions D P_i,
    P_i = D_i^T D_i) or along all of them ("all")."""
    w = rw.model.b16.conv.weight.detach().to(torch.float64)  # (C_in, C_out, 4, 4)
    k, c_out = dirs.shape[0], w.shape[1]
    d = dirs.to(torch.float64)

    def design(keys: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        cols = []
        for r in range(k):
            for t in range(16):
                factor = torch.zeros(k, 1, 4, 4, dtype=torch.float64)
                factor[r, 0, t // 4, t % 4] = 1.0
                delta = torch.einsum("rc,rohw->cohw", basis, factor)  # (C_in, 1, 4, 4)
                cols.append(F.conv_transpose2d(keys, delta, stride=2, padding=1)[0, 0].reshape(-1))
        return torch.stack(cols, 1)  # (P, k * 16)

    gram = torch.zeros(16 * k, 16 * k, dtype=torch.float64)
    rhs = torch.zeros(16 * k, c_out, dtype=torch.float64)
    goals = [rw.edit_goal(e)[1:] for e in edits]
    for i, (e, (own_dirs, goal)) in enumerate(zip(edits, goals)):
        keys = goal.obs.keys.to(torch.float64)
        a = design(keys, d)
        own = own_dirs.to(torch.float64)
        held = design(keys, d @ own.T @ own) if protect == "own" else a
        hv, wv = goal.values.shape[2:]
        inside = torch.zeros(hv, wv, dtype=torch.bool)
        y0, y1, x0, x1 = goal.box
        inside[y0:y1, x0:x1] = True
        keep = ~inside
        for j, (o, (_, og)) in enumerate(zip(edits, goals)):
            if j != i and o.paste.seed == e.paste.seed:
                b0, b1, c0, c1 = og.box
                keep[b0:b1, c0:c1] = False
        w_in = inside.reshape(-1).to(torch.float64) / inside.sum()
        w_out = keep.reshape(-1).to(torch.float64) * e.update.preserve / keep.sum()
        residual = (goal.linear - goal.obs.linear)[0].to(torch.float64).reshape(c_out, -1).T
        gram += (a * w_in[:, None]).T @ a + (held * w_out[:, None]).T @ held
        rhs += (a * w_in[:, None]).T @ residual
    lam = edits[0].update.ridge * float(gram.diagonal().mean())
    x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), rhs)
    factor = x.T.reshape(c_out, k, 4, 4).transpose(0, 1)  # (k, C_out, 4, 4): the key axis of a ConvTranspose2d
    return delta_from_factors(factor, d, 0)


@pytest.mark.parametrize("protect,chunked", [("own", False), ("all", False), ("own", True)])
def test_key_space_closed_form_equals_a_float64_least_squares(tmp_path, monkeypatch, protect, chunked):
    if chunked:  # the rules assembled in batches of 2 and 1, as large batches are
        from model_rewrite import jointform

        monkeypatch.setattr(jointform, "ONE_CHUNK", 1)
        monkeypatch.setattr(jointform, "CHUNK", 2)
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    stats, cfg = StatsConfig(num_samples=200), UpdateConfig(method="closed_form", preserve=0.7)
    m1, m2, m3 = box_mask(32, 8, 16, 8, 16), box_mask(32, 16, 28, 4, 12), box_mask(32, 0, 8, 20, 32)
    edits = [rw.new_edit("b16", paste=Selection(3, m1), copy=Selection(1, m2), context=[Selection(3, m1), Selection(4, m1)],
                         update=cfg, stats=stats, name="a", keys=KeyConfig(rank=2)),
             rw.new_edit("b16", paste=Selection(3, m3), copy=Selection(2, m1), update=cfg, stats=stats, name="b"),  # same image
             rw.new_edit("b16", paste=Selection(5, m2), copy=Selection(6, m3), update=cfg, stats=stats, name="c")]
    (joint,) = rw.solve_many(edits, protect=protect)
    dirs, kept = joint_directions([rw.edit_directions(e) for e in edits], rw.stats("b16", stats).moment)
    assert kept == [0, 1, 2, 3]
    torch.testing.assert_close(joint.delta.dirs, dirs)
    want = _float64_joint_closed_form(rw, edits, dirs, protect)
    torch.testing.assert_close(joint.delta.dense().to(torch.float64), want, rtol=2e-4, atol=2e-6)


def test_joint_directions_drop_what_adds_nothing_in_the_whitened_metric():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov = basis @ basis.T + 0.1 * torch.eye(6, dtype=torch.float64)
    d1 = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0].T
    d2 = torch.stack([d1[0] + 1e-6 * torch.randn(6, generator=g, dtype=torch.float64), torch.eye(6, dtype=torch.float64)[5]])
    d2 = d2 / d2.norm(dim=1, keepdim=True)
    dirs, kept = joint_directions([d1, d2], cov)
    assert kept == [0, 1, 3]  # the near copy of d1[0] adds nothing
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(dirs[:2], d1)  # the first rule's directions are kept as they were
    # the span holds every kept input row
    for row in (d1[0], d1[1], d2[1]):
        torch.testing.assert_close(dirs.T @ (dirs @ row), row)


def _block_loss(rw: Rewriter, seed: int, goal, preserve: float) -> float:
    """The single solve's L1 loss of the live model on a goal, recomputed here from the block's output."""
    from model_rewrite.goals import observe

    z = rw.latents([seed])
    v = observe(rw.model, rw.spec("b16"), z).values.to(torch.float64)
    y0, y1, x0, x1 = goal.box
    inside = (v - goal.values)[..., y0:y1, x0:x1].abs().mean()
    outside_mask = torch.ones(v.shape[2:], dtype=torch.bool)
    outside_mask[y0:y1, x0:x1] = False
    outside = (v - goal.obs.values).abs()[..., outside_mask].mean()
    return float(inside + preserve * outside)


@pytest.mark.parametrize("method", ["closed_form", "optimize"])
@pytest.mark.parametrize("contexts,rank", [((3, 4), 2), ((3, 4), 1)], ids=["overlapping", "shared"])
def test_overlapping_rules_meet_their_goals_better_jointly_than_stacked(tmp_path, method, contexts, rank):
    """Rule a's context is images 3 and 4, rule b's images 4 and 5 (overlapping: rank 2) or 3 and 4 too (shared:
    one direction, the copy dropped). Stacked, b's change undoes a's on image 3; jointly both goals count."""
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    box = box_mask(32, 8, 20, 8, 20)
    cfg, stats = UpdateConfig(method=method, steps=60), StatsConfig(num_samples=200)
    b_ctx = (4, 5) if rank == 2 else contexts
    a = rw.new_edit("b16", paste=Selection(3, box), copy=Selection(1, box_mask(32, 2, 14, 2, 14)),
                    context=[Selection(s, box) for s in contexts], update=cfg, stats=stats, name="a")
    b = rw.new_edit("b16", paste=Selection(4, box), copy=Selection(2, box_mask(32, 16, 28, 16, 28)),
                    context=[Selection(s, box) for s in b_ctx], update=cfg, stats=stats, name="b")
    goals = [(e.paste.seed, rw.edit_goal(e)[2]) for e in (a, b)]
    entries = rw.apply_many([a, b])
    joint = [_block_loss(rw, seed, g, cfg.preserve) for seed, g in goals]
    rw.stack.undo()
    rw.apply(a)
    rw.apply(b)
    stacked = [_block_loss(rw, seed, g, cfg.preserve) for seed, g in goals]
    assert entries[0].delta.rank == rank
    assert joint[0] < stacked[0] and joint[1] < stacked[1], (joint, stacked)


def test_overlaps_find_the_rules_that_share_keys(tmp_path):
    # SplitKeys: a and b sit on images whose keys live in separate channels, so no mix of their responses is
    # correlated (0); a2 takes its context from a's paste region at rank 1, a direction inside a's rank-2 span (1)
    rw = Rewriter(SplitKeys(), cache_dir=tmp_path / "c")
    a, b = _split_rules(rw, UpdateConfig(method="closed_form"))
    a2 = replace(a, copy=Selection(_seeds(1, 3)[2], box_mask(8, 0, 3, 0, 3)), keys=KeyConfig(rank=1), name="a2")
    found = {(o.a, o.b): o for o in batch_overlaps(rw, [a, b, a2])}
    assert list(found) == [("a", "b"), ("a", "a2"), ("b", "a2")]
    assert found["a", "b"].value < 1e-6 and found["b", "a2"].value < 1e-6
    assert found["a", "a2"].value == pytest.approx(1.0, abs=1e-6)
    assert [o.warns for o in found.values()] == [False, True, False]
    text = found["a", "a2"].warning(joint=True)
    assert text.startswith("overlap: 'a' and 'a2' respond to the same keys at draw (overlap 1.00") and "solved together" in text
    # stacked: a2 against what is active before it, each member of a joint entry apart
    rw.apply_many([a, b])
    entry = rw.apply(a2)
    got = [(o.a, o.b, o.value) for o in stack_overlaps(rw, entry.id)]
    assert [g[:2] for g in got] == [("a", "a2"), ("b", "a2")]
    assert got[0][2] == pytest.approx(1.0, abs=1e-6) and got[1][2] < 1e-6
    assert "stacked" in Overlap("a", "a2", "draw", got[0][2]).warning(joint=False)
    rw.stack.undo()
    rw.stack.undo()
    assert stack_overlaps(rw, rw.apply(b).id) == []  # nothing before it


def test_undo_redo_and_member_removal_are_exact(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    stats, cfg = StatsConfig(num_samples=100), UpdateConfig(method="closed_form")
    m = box_mask(32, 8, 20, 8, 20)
    first = rw.new_edit("b16", paste=Selection(7, m), copy=Selection(8, m), update=cfg, stats=stats, name="first")
    a = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), update=cfg, stats=stats, name="a")
    b = rw.new_edit("b16", paste=Selection(4, m), copy=Selection(2, m), update=cfg, stats=stats, name="b")
    c = rw.new_edit("b8", paste=Selection(5, m), copy=Selection(6, m), update=cfg, stats=stats, name="c")
    w16, w8 = rw.model.b16.conv.weight.detach().clone(), rw.model.b8.conv.weight.detach().clone()
    e_first = rw.apply(first)
    after_first = rw.model.b16.conv.weight.detach().clone()
    entries = rw.apply_many([a, b, c])
    assert [e.delta.param_path for e in entries] == ["b8.conv.weight", "b16.conv.weight"]  # upstream first
    entries = entries[::-1]
    assert [len(e.members) for e in entries] == [2, 1] and entries[0].batch == entries[1].batch != 0
    assert torch.equal(rw.model.b16.conv.weight, w16 + e_first.delta.dense() + entries[0].delta.dense())
    assert torch.equal(rw.model.b8.conv.weight, w8 + entries[1].delta.dense())
    applied16, applied8 = rw.model.b16.conv.weight.detach().clone(), rw.model.b8.conv.weight.detach().clone()
    rw.stack.undo()  # the batch goes as one: both layers
    assert torch.equal(rw.model.b16.conv.weight, after_first) and torch.equal(rw.model.b8.conv.weight, w8)
    assert [e.name for e in rw.stack.entries] == ["first"]
    rw.stack.redo()
    assert torch.equal(rw.model.b16.conv.weight, applied16) and torch.equal(rw.model.b8.conv.weight, applied8)
    # removing member a re-solves b against the model without the joint entry (W0 + first, and c upstream)
    new = rw.remove_member(entries[0].id, 0)
    assert [m.spec.name for m in new.members] == ["b"] and rw.stack.entries[2] is new
    fresh = Rewriter("tiny", cache_dir=tmp_path / "c")
    fresh.apply(first)
    fresh.stack.push(entries[1].delta)
    (alone_b,) = fresh.solve_many([b])
    assert torch.equal(new.delta.factor, alone_b.delta.factor)
    assert torch.equal(rw.model.b16.conv.weight, w16 + e_first.delta.dense() + alone_b.delta.dense())
    assert rw.remove_member(new.id, 0) is None  # the last member: the entry goes
    assert torch.equal(rw.model.b16.conv.weight, after_first)
    rw.stack.revert_all()
    assert torch.equal(rw.model.b16.conv.weight, w16) and torch.equal(rw.model.b8.conv.weight, w8)


def test_bad_batches_are_refused_in_one_line(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    a = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), name="a", stats=StatsConfig(num_samples=100))
    import dataclasses

    for edits, words in [([a, dataclasses.replace(a, name="again")], "same rule"),
                         ([a, dataclasses.replace(a, paste=Selection(4, m), update=UpdateConfig(steps=3))], "steps"),
                         ([a, dataclasses.replace(a, paste=Selection(4, m), update=UpdateConfig(method="reference"))], "reference"),
                         ([], "at least one")]:
        with pytest.raises(InvalidEdit) as exc:
            rw.solve_many(edits)
        assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_members_quality_report_uses_its_own_selections_and_directions(tmp_path):
    """b is listed first, so the joint entry's first direction is b's; rule a's report inside the entry must
    read a's paste image and a's directions. On images where a fires, b (other key channels) changes
    nothing, so a's fidelity, transfer and firing equal a's alone."""
    from model_rewrite.config import RenderConfig
    from model_rewrite.quality import quality_report

    rw = Rewriter(SplitKeys(), cache_dir=tmp_path / "c")
    a, b = _split_rules(rw, UpdateConfig(method="closed_form", ridge=0.0))
    seeds, cfg = list(range(300, 340)), RenderConfig(fire_quantile=0.9)
    alone = rw.apply(a)
    want = quality_report(rw, alone.id, seeds, cfg)
    rw.stack.undo()
    (entry,) = rw.apply_many([b, a])
    got = quality_report(rw, entry.id, seeds, cfg, member=1)
    assert got.name == "a" and got.fires_on == want.fires_on > 0
    assert got.paste_fidelity == pytest.approx(want.paste_fidelity, abs=1e-4)
    assert got.transfer == pytest.approx(want.transfer, abs=1e-4)
    with pytest.raises(InvalidEdit, match="member 2 does not exist"):
        quality_report(rw, entry.id, seeds, cfg, member=2)
