"""forge.train.threads: torch's thread count per command, the OpenMP wait policy set before torch
loads, the user's own settings winning, and a served model reporting what applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from forge.train import threads
from tests.serving import forge_serve

THREAD_VARS = ("FORGE_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RAYON_NUM_THREADS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 4)
    return monkeypatch


def test_serving_leaves_a_core_and_eval_and_train_take_them_all(clean_env):
    roles = ("serve", "chat", "predict", "eval", "train")
    assert [threads.torch_threads(r) for r in roles] == [3, 3, 3, 4, 4]
    clean_env.setattr(threads, "cores", lambda: 1)
    assert threads.torch_threads("serve") == 1  # never 0


def test_a_prefill_takes_every_core_when_serving_unless_the_user_chose(clean_env):
    assert [threads.prefill_threads(r) for r in ("serve", "chat", "predict", "eval", "train")] == [
        4, 4, 4, None, None
    ]  # fmt: skip
    clean_env.setenv("OMP_NUM_THREADS", "1")
    assert threads.prefill_threads("serve") is None
    clean_env.delenv("OMP_NUM_THREADS")
    clean_env.setenv("FORGE_THREADS", "1")
    assert threads.prefill_threads("serve") is None


def test_prefill_raises_torchs_threads_for_the_block_and_puts_them_back(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(threads, "_prefill_threads", 2)
        with threads.prefill():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError), threads.prefill():
            raise RuntimeError("a failed forward")
        assert torch.get_num_threads() == 1  # put back on the error path too
        monkeypatch.setattr(threads, "_prefill_threads", None)  # eval, train, a user's count
        with threads.prefill():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_tokenizer_gets_half_the_cores_beside_training(clean_env):
    assert threads.tokenizer_threads() == 2
    clean_env.setattr(threads, "cores", lambda: 1)
    assert threads.tokenizer_threads() == 1


def test_forge_threads_then_omp_num_threads_win(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "2")
    assert threads.torch_threads("train") == 2
    clean_env.setenv("FORGE_THREADS", "5")
    assert threads.torch_threads("serve") == 5


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_forge_threads_is_one_line_naming_it(clean_env, value):
    clean_env.setenv("FORGE_THREADS", value)
    with pytest.raises(
        ValueError, match=f"FORGE_THREADS='{value}': give a whole number of threads, 1 or more"
    ):
        threads.torch_threads("serve")


def test_the_users_wait_policy_wins(clean_env):
    threads.before_torch()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.before_torch()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    clean_env.delenv("OMP_WAIT_POLICY")
    clean_env.setenv("GOMP_SPINCOUNT", "1000")  # a user tuning the spin keeps libgomp's policy
    threads.before_torch()
    assert "OMP_WAIT_POLICY" not in os.environ


# torch must see the policy when it loads libgomp: record it at the moment `import torch` starts
SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Spy())
import forge.train.serve, forge.train.recipe
print(seen[0])
"""


def test_the_wait_policy_is_set_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", SPY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PASSIVE"]


def test_forge_serve_applies_and_reports_its_threads(tiny_model, monkeypatch):
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    with forge_serve(tiny_model, env={"FORGE_THREADS": "3"}) as base:
        state = json.load(urllib.request.urlopen(base + "/health", timeout=10))
    # FORGE_THREADS chose the count: prefill keeps it too
    assert (state["torch_threads"], state["prefill_threads"], state["omp_wait_policy"]) == (3, 3, "PASSIVE")
    with forge_serve(tiny_model) as base:  # forge's choice: a core left for decoding, all for prefill
        state = json.load(urllib.request.urlopen(base + "/health", timeout=10))
    assert (state["torch_threads"], state["prefill_threads"]) == (
        max(1, threads.cores() - 1),
        threads.cores(),
    )
