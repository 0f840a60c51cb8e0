import torch

from model_rewrite import Rewriter, StatsConfig
from model_rewrite.cache import Store, load_tensors


def test_stats_are_cached_and_reused(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path)
    cfg = StatsConfig(num_samples=20)
    a = rw.stats("b16", cfg)
    files = list((tmp_path / "stats").glob("*.safetensors"))
    assert len(files) == 1 and "b16" in files[0].name
    rw2 = Rewriter("tiny", cache_dir=tmp_path)
    calls = []
    b = rw2.stats("b16", cfg, progress=lambda d, t: calls.append(d))
    assert calls == [] and torch.equal(a.moment, b.moment)
    # another sample count or seed is another entry
    rw2.stats("b16", StatsConfig(num_samples=21))
    assert len(list((tmp_path / "stats").glob("*.safetensors"))) == 2



def test_known_stats_never_computes(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path)
    cfg = StatsConfig(num_samples=20)
    assert rw.known_stats("b16", cfg) is None and not (tmp_path / "stats").exists()
    a = rw.stats("b16", cfg)
    assert rw.known_stats("b16", cfg) is a  # from memory
    fresh = Rewriter("tiny", cache_dir=tmp_path)
    assert torch.equal(fresh.known_stats("b16", cfg).moment, a.moment)  # from the disk cache
    assert fresh.known_stats("b16", StatsConfig(num_samples=21)) is None
    assert len(list((tmp_path / "stats").glob("*.safetensors"))) == 1


def test_corrupt_cache_is_detected_and_recomputed(tmp_path, caplog):
    rw = Rewriter("tiny", cache_dir=tmp_path)
    cfg = StatsConfig(num_samples=20)
    good = rw.stats("b16", cfg).moment
    path = next((tmp_path / "stats").glob("*.safetensors"))
    path.write_bytes(b"garbage" * 10)
    rw2 = Rewriter("tiny", cache_dir=tmp_path)
    again = rw2.stats("b16", cfg).moment
    assert torch.equal(good, again)
    assert "rejected" in caplog.text
    load_tensors(path)  # replaced by a readable file


def test_stale_or_nonfinite_entries_are_not_used(tmp_path):
    store = Store(tmp_path)
    key = {"a": 1}
    store.get_or_compute("x", "t", key, lambda: ({"m": torch.ones(2)}, {"n": 1}))
    path = store.path_for("x", "t", key)
    # overwrite with an entry that claims another key
    from model_rewrite.cache import save_tensors

    save_tensors(path, {"m": torch.zeros(2)}, {"key": {"format": 1, "a": 2}, "info": {"n": 9}})
    t, info = store.get_or_compute("x", "t", key, lambda: ({"m": torch.full((2,), 3.0)}, {"n": 3}))
    assert info == {"n": 3} and torch.equal(t["m"], torch.full((2,), 3.0))
    save_tensors(path, {"m": torch.tensor([float("nan"), 1.0])}, {"key": {"format": 1, "a": 1}, "info": {"n": 4}})
    t, info = store.get_or_compute("x", "t", key, lambda: ({"m": torch.full((2,), 5.0)}, {"n": 5}))
    assert info == {"n": 5}
    assert not list(path.parent.glob("*.tmp"))
