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


@pytest.mark.parametrize("n", [65, 100, 129, 1000, 1023])
def test_two_level_permutation_is_a_bijection_per_epoch(n):
    s = Schedule([3 * n], [n], seed=9, block=16, window_blocks=4)  # windows of 64 records
    for epoch in range(3):
        out = s.permutation(0, epoch, np.arange(n))
        assert sorted(out.tolist()) == list(range(n))
    # any slice of positions gives the same records as the whole (seeking needs no state)
    assert (
        s.permutation(0, 1, np.arange(37, 61)).tolist() == s.permutation(0, 1, np.arange(n))[37:61].tolist()
    )


def test_two_level_stream_keeps_its_guarantees_and_bounds_what_a_window_reads():
    """Component 0 (1000 records, 2500 draws) is larger than one window (4 blocks of 16):
    counts stay exact, each epoch is a permutation, readers stay disjoint, a resumed
    stream continues exactly; and any 64 consecutive draws of it touch at most 12 blocks
    (three windows), where a uniform shuffle touches ~40. Component 1 (64 records) is one window."""
    s = Schedule([2500, 700], [1000, 64], seed=4, window=97, block=16, window_blocks=4)
    pos, comp, rec = collect(s)
    assert pos.tolist() == list(range(3200))
    assert np.bincount(comp).tolist() == [2500, 700]
    r0 = rec[comp == 0]
    for e in range(2):
        assert sorted(r0[e * 1000 : (e + 1) * 1000].tolist()) == list(range(1000))
    assert len(set(r0[2000:].tolist())) == 500
    assert r0[:1000].tolist() != r0[1000:2000].tolist()  # a fresh order every epoch
    touched = [len(set((r0[k : k + 64] // 16).tolist())) for k in range(0, 1000 - 64)]
    assert max(touched) <= 12  # two full windows, or three when the one with the short block is between
    assert len(set((r0[:64] // 16).tolist())) <= 4  # the first window: exactly its 4 blocks
    # component 1 fits in one window: a uniform permutation, exactly as permute() gives it
    r1 = rec[comp == 1]
    assert sorted(r1[:64].tolist()) == list(range(64))
    # readers: disjoint slices whose union is the stream
    parts = [collect(s, rank=r, world=3) for r in range(3)]
    assert sorted(np.concatenate([p[0] for p in parts]).tolist()) == list(range(3200))
    assert all(np.all(p[0] % 3 == r) for r, p in enumerate(parts))
    # resume from any position: the same suffix
    pos2, comp2, rec2 = collect(s, start=1234)
    assert pos2.tolist() == list(range(1234, 3200))
    assert rec2.tolist() == rec[1234:].tolist() and comp2.tolist() == comp[1234:].tolist()
    # a uniform shuffle of the same component would touch many more blocks per 64 draws
    uniform = permute(np.arange(1000), 1000, 4)
    assert len(set((uniform[:64] // 16).tolist())) > 30
