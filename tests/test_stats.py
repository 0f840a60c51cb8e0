import pytest
import torch
from torch import nn

from model_rewrite.config import StatsConfig
from helpers import KeysAreTheLatent, hook_count
from model_rewrite.layers import LayerSpec
from model_rewrite.stats import SecondMoment, collect_key_stats, row_blocks, rows_from_map


@pytest.mark.parametrize("splits", [[100], [1, 99], [37, 63], [10] * 10, [3, 3, 94]])
def test_streaming_second_moment_equals_batch_for_any_split(splits):
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(100, 7, generator=g) + 0.5
    exact = (keys.double().T @ keys.double()) / 100
    acc = SecondMoment(7)
    start = 0
    for n in splits:
        acc.add(keys[start : start + n])
        start += n
    assert acc.count == 100
    torch.testing.assert_close(acc.moment(), exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wide_keys_use_the_block_product_and_still_equal_the_full_product(dtype):
    # 301 wide: row blocks of 64 (the last 45 rows high); only the block upper triangle is formed and mirrored
    keys = torch.randn(900, 301, generator=torch.Generator().manual_seed(4)) + 0.3
    acc = SecondMoment(301, product_dtype=dtype)
    assert acc._blocks == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 301)]
    for chunk in keys.split(250):
        acc.add(chunk)
    exact = keys.double().T @ keys.double()
    tol = dict(rtol=1e-12, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(acc.sum, exact, **tol)
    torch.testing.assert_close(acc.moment(), exact / 900, **tol)
    assert torch.equal(acc.moment(), acc.moment().T)


@pytest.mark.parametrize("shape", [(6, 8, 4, 4), (6, 40, 3, 2), (5, 24, 7), (3, 300, 2, 2), (2, 130, 5, 3), (4, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_key_maps_accumulate_to_the_sum_of_every_location_s_outer_product(shape, dtype):
    # narrow keys (one block), wide keys in row blocks (uneven last block), a 1-D map, rows
    maps = torch.randn(*shape, generator=torch.Generator().manual_seed(7)) + 0.2
    acc = SecondMoment(shape[1], product_dtype=dtype)
    acc.add_map(maps[:2])
    acc.add_map(maps[2:])
    vecs = maps.double().movedim(1, -1).reshape(-1, shape[1])  # every location's key, as rows
    exact = sum(torch.outer(v, v) for v in vecs)
    tol = dict(rtol=1e-12, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(acc.sum, exact, **tol)
    assert acc.count == vecs.shape[0]


def test_float32_products_stay_close_to_float64():
    keys = torch.randn(5000, 16, generator=torch.Generator().manual_seed(2)).abs()
    a, b = SecondMoment(16, product_dtype=torch.float32), SecondMoment(16)
    for chunk in keys.split(700):
        a.add(chunk)
        b.add(chunk)
    torch.testing.assert_close(a.moment(), b.moment(), rtol=1e-5, atol=1e-6)


def test_merge_equals_single_accumulator():
    keys = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    a, b, c = SecondMoment(4), SecondMoment(4), SecondMoment(4)
    a.add(keys[:20]); b.add(keys[20:]); c.add(keys)  # noqa: E702
    a.merge(b)
    torch.testing.assert_close(a.moment(), c.moment(), rtol=1e-12, atol=1e-12)


def test_statistics_memory_does_not_grow_with_samples():
    acc = SecondMoment(8)
    sizes = set()
    for _ in range(20):
        acc.add(torch.randn(256, 8))
        sizes.add(acc.sum.numel())
    assert sizes == {64}


def _stream(seed: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The documented statistics stream, written out: one generator seeded seed + 0x5EED0000, drawn in
    chunks of 1024 latents (here a single chunk)."""
    assert count <= 1024
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed + 0x5EED0000))


def test_collect_key_stats_equals_a_float64_moment_computed_here_and_leaves_model_intact():
    model = KeysAreTheLatent(3, 4, (2, 5), tail=nn.Tanh()).eval()
    spec = LayerSpec("body", "body.0", key_axis=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    cfg = StatsConfig(num_samples=30, batch_size=7, stats_seed=7, product_dtype="float64")
    st = collect_key_stats(model, spec, cfg, latent_shape=model.latent_shape, progress=lambda d, t: calls.append((d, t)))
    z = _stream(7, 30, model.latent_shape).double()  # keys = the latent: (30, 3, 2, 5)
    rows = z.permute(0, 2, 3, 1).reshape(-1, 3)  # one row per image and location, channels as columns
    torch.testing.assert_close(st.moment, rows.T @ rows / 300, rtol=1e-12, atol=1e-14)
    assert (st.count, st.num_samples, st.seed, st.layer, st.dim) == (300, 30, 7, "body", 3)
    assert st.moment.dtype == torch.float64
    assert calls == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert hook_count(model) == 0
    # the batch size does not change the result; float32 products stay within float32 rounding of it
    st2 = collect_key_stats(model, spec, StatsConfig(num_samples=30, batch_size=30, stats_seed=7), latent_shape=model.latent_shape)
    torch.testing.assert_close(st2.moment, st.moment, rtol=1e-6, atol=1e-6)
    st3 = collect_key_stats(model, spec, StatsConfig(num_samples=30, batch_size=30, stats_seed=7, product_dtype="float64"),
                            latent_shape=model.latent_shape)
    assert not torch.equal(st2.moment, st3.moment), "float32 products (the default) differ in the last bits"


def test_rows_from_map_puts_one_location_per_row_in_image_then_row_then_column_order():
    keys = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)  # (B=2, C=3, H=2, W=2)
    rows = rows_from_map(keys)
    assert rows.shape == (8, 3)
    # row index = b * H * W + y * W + x; column = channel
    for b in range(2):
        for y in range(2):
            for x in range(2):
                assert rows[b * 4 + y * 2 + x].tolist() == keys[b, :, y, x].tolist()
    flat = torch.arange(6.0).reshape(2, 3)
    assert rows_from_map(flat) is flat  # a key batch (B, C) is already rows
    line = torch.arange(12.0).reshape(1, 3, 4)  # (B, C, L)
    assert rows_from_map(line).tolist() == line[0].T.tolist()


def test_the_block_product_starts_at_128_wide_keys_and_moments_check_their_input():
    assert row_blocks(127) == [(0, 127)] and row_blocks(128) == [(0, 64), (64, 128)]
    assert row_blocks(130) == [(0, 64), (64, 128), (128, 130)]
    with pytest.raises(ValueError, match="^no keys were added$"):
        SecondMoment(3).moment()
    a = SecondMoment(3)
    with pytest.raises(ValueError, match=r"cannot merge a \(4, 4\) moment into a \(3, 3\) one"):
        a.merge(SecondMoment(4))
    a.add(torch.ones(2, 3))
    s = a.sum
    s += 1  # a new tensor: changing it leaves the accumulator alone
    assert torch.equal(a.sum, torch.full((3, 3), 2.0, dtype=torch.float64)) and a.count == 2
    torch.testing.assert_close(a.moment(), torch.ones(3, 3, dtype=torch.float64))


class _NeverRun(nn.Conv2d):
    def forward(self, x):
        raise RuntimeError("statistics must stop before the layer itself runs")


def test_statistics_stop_before_the_layer_runs():
    model = KeysAreTheLatent(3, 4, (2, 5)).eval()
    model.body[0] = _NeverRun(3, 4, 1)
    st = collect_key_stats(model, LayerSpec("body", "body.0", key_axis=1), StatsConfig(num_samples=4, product_dtype="float64"),
                           latent_shape=model.latent_shape)
    rows = _stream(0, 4, model.latent_shape).double().permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(st.moment, rows.T @ rows / 40, rtol=1e-12, atol=1e-14)
