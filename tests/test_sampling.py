import numpy as np
import pytest

from forge.sampling import Schedule, largest_remainder, permute


def collect(schedule, start=0, rank=0, world=1):
    blocks = list(schedule.iter_blocks(start, rank, world))
    if not blocks:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return tuple(
        np.concatenate([getattr(b, k) for b in blocks]) for k in ("positions", "components", "records")
    )


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=123)
    assert sorted(out.tolist()) == list(range(n))


def test_permute_depends_on_key():
    assert permute(np.arange(100), 100, 1).tolist() != permute(np.arange(100), 100, 2).tolist()


def test_largest_remainder_sums_and_bounds():
    counts = largest_remainder(1000, np.array([1, 2, 3.5]))
    assert counts.sum() == 1000
    assert np.all(np.abs(counts - 1000 * np.array([1, 2, 3.5]) / 6.5) < 1)


def test_stream_is_exact_and_without_replacement():
    s = Schedule([300, 100, 600], [300, 50, 1000], seed=3, window=64)
    pos, comp, rec = collect(s)
    assert pos.tolist() == list(range(1000))
    assert np.bincount(comp).tolist() == [300, 100, 600]
    # component 0: every record once
    assert sorted(rec[comp == 0].tolist()) == list(range(300))
    # component 1 (50 records, 100 draws): two full passes, each a permutation, in a different order
    first, second = rec[comp == 1][:50], rec[comp == 1][50:]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert first.tolist() != second.tolist()
    # component 2 (1000 records, 600 draws): no repeats
    assert len(set(rec[comp == 2].tolist())) == 600


def test_prefix_deviation_is_bounded():
    counts = np.array([5000, 3000, 1500, 500])
    s = Schedule(counts.tolist(), counts.tolist(), seed=0, window=777)
    _, comp, _ = collect(s)
    L = np.arange(1, len(comp) + 1)
    for i, c in enumerate(counts):
        dev = np.abs(np.cumsum(comp == i) - L * c / counts.sum())
        assert dev.max() < 2.0


def test_same_seed_same_stream_different_seed_different_stream():
    a = collect(Schedule([100, 200], [100, 200], seed=7))
    b = collect(Schedule([100, 200], [100, 200], seed=7))
    c = collect(Schedule([100, 200], [100, 200], seed=8))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[2] == c[2]).all()


@pytest.mark.parametrize("world", [1, 2, 8])
def test_world_sizes_partition_the_same_stream(world):
    s = Schedule([400, 250, 350], [400, 100, 1000], seed=11, window=100)
    _, comp_all, rec_all = collect(s)
    seen = {}
    for rank in range(world):
        pos, comp, rec = collect(s, rank=rank, world=world)
        assert np.all(pos % world == rank)
        for p, c, r in zip(pos, comp, rec, strict=True):
            assert p not in seen
            seen[int(p)] = (int(c), int(r))
    assert sorted(seen) == list(range(1000))
    assert [seen[p] for p in range(1000)] == list(zip(comp_all.tolist(), rec_all.tolist(), strict=True))


def test_resume_from_any_position():
    s = Schedule([500, 300], [200, 300], seed=5, window=64)
    pos, comp, rec = collect(s)
    for start in (0, 1, 63, 64, 65, 399, 799):
        p2, c2, r2 = collect(s, start=start)
        assert p2.tolist() == pos[start:].tolist()
        assert c2.tolist() == comp[start:].tolist() and r2.tolist() == rec[start:].tolist()
