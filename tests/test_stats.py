import pytest
import torch

from model_rewrite.config import StatsConfig
from model_rewrite.hooks import run_until
from model_rewrite.latents import latent_stream
from model_rewrite.layers import resolve_layer
from model_rewrite.stats import SecondMoment, collect_key_stats, rows_from_map


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
    # 301 >= the split width: the accumulator forms only the block upper triangle and mirrors it
    keys = torch.randn(900, 301, generator=torch.Generator().manual_seed(4)) + 0.3
    acc = SecondMoment(301, product_dtype=dtype)
    assert acc._split == 150
    for chunk in keys.split(250):
        acc.add(chunk)
    exact = keys.double().T @ keys.double()
    tol = dict(rtol=1e-12, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(acc.sum, exact, **tol)
    torch.testing.assert_close(acc.moment(), exact / 900, **tol)
    assert torch.equal(acc.moment(), acc.moment().T)


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


def test_collect_key_stats_matches_direct_computation_and_leaves_model_intact(tiny):
    spec = resolve_layer(tiny, "b16")
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    cfg = StatsConfig(num_samples=30, batch_size=7, product_dtype="float64")
    st = collect_key_stats(tiny, spec, cfg, latent_shape=tiny.latent_shape)
    z = torch.cat(list(latent_stream(cfg.stats_seed, 30, tiny.latent_shape, 30)))
    with torch.no_grad():
        rows = rows_from_map(run_until(tiny, "b16.conv", z).input).double()
    torch.testing.assert_close(st.moment, rows.T @ rows / rows.shape[0], rtol=1e-10, atol=1e-12)
    assert st.count == 30 * 8 * 8
    assert all(torch.equal(state[k], v) for k, v in tiny.state_dict().items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.modules()) == 0
    # the batch size does not change the result
    st2 = collect_key_stats(tiny, spec, StatsConfig(num_samples=30, batch_size=30, product_dtype="float64"), latent_shape=tiny.latent_shape)
    torch.testing.assert_close(st.moment, st2.moment, rtol=1e-10, atol=1e-12)
