"""Preference training (train/preference.py): forge's DPO and ORPO losses, and their gradients
on the LoRA weights, equal TRL's on the same batch; pairs stream, batch and train end to end."""

from types import SimpleNamespace

import pytest
import torch

from forge.train.data import IGNORE
from forge.train.preference import completion_logps, dpo_loss, orpo_loss, preference_loss

PAIRS = [
    {"prompt": "Question: is 3 odd?\n", "chosen": "Yes, it is.", "rejected": "No."},
    {"prompt": "Say hi to me", "chosen": "Hi there, friend", "rejected": "Bye"},
    {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "I would rather not say anything"},
]
BETA = 0.1


@pytest.fixture(scope="module")
def trl_dpo(tiny_model, tmp_path_factory):
    """TRL's DPOTrainer on the tiny model with a LoRA adapter whose B is not zero (so the policy
    differs from the reference), and one TRL-collated batch of the pairs (chosen rows first)."""
    pytest.importorskip("trl")
    import peft
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    model = peft.get_peft_model(base, lora)
    out = tmp_path_factory.mktemp("trl")
    cfg = DPOConfig(
        output_dir=str(out),
        beta=BETA,
        report_to=[],
        use_cpu=True,
        max_length=None,
        per_device_train_batch_size=3,
    )
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
    # TRL copies an adapter it is handed as "ref" (re-training an existing adapter); without that
    # copy its reference is the adapter disabled, which is forge's reference
    trainer.model.delete_adapter("ref")
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    return trainer, batch


def _forge_batch(batch: dict) -> dict:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def _lora_grads(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {
        n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None
    }


def test_dpo_equals_trl(trl_dpo):
    trainer, batch = trl_dpo
    model = trainer.model
    trainer._metrics["train"].clear()
    trl_loss = trainer.compute_loss(model, batch)
    trl_grads = _lora_grads(model, trl_loss)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    loss, metrics = preference_loss(model, _forge_batch(batch), "dpo", BETA)
    grads = _lora_grads(model, loss)

    assert abs(trl_metrics["rewards/margins"]) > 1e-4  # the policy is not the reference: a real check
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert set(grads) == set(trl_grads) and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    pairs = {
        "reward_margin": "rewards/margins",
        "preference_accuracy": "rewards/accuracies",
        "chosen_rewards": "rewards/chosen",
        "rejected_rewards": "rewards/rejected",
        "chosen_logps": "logps/chosen",
        "rejected_logps": "logps/rejected",
    }
    for ours, theirs in pairs.items():
        assert metrics[ours].item() == pytest.approx(trl_metrics[theirs], abs=1e-4), ours


def test_orpo_equals_trl(trl_dpo):
    """TRL's ORPOTrainer pieces (get_batch_logps, odds_ratio_loss) on the same logits. TRL's NLL
    term also counts the prompt tokens; forge's, like its SFT loss, counts the chosen answer only:
    the NLL is compared on the completion tokens."""
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    trainer, batch = trl_dpo
    model = trainer.model
    fb = _forge_batch(batch)
    n = len(PAIRS)

    logits = model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits
    mean = orpo.ORPOTrainer.get_batch_logps(logits, fb["labels"], average_log_prob=True)
    this = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=logits.device))
    losses, chosen_r, rejected_r, _, _ = orpo.ORPOTrainer.odds_ratio_loss(this, mean[:n], mean[n:])
    targets = fb["labels"][:n, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:n, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE
    )
    trl_loss = nll - losses.mean()
    trl_grads = _lora_grads(model, trl_loss)

    loss, metrics = preference_loss(model, fb, "orpo", BETA)
    grads = _lora_grads(model, loss)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert metrics["reward_margin"].item() == pytest.approx((chosen_r - rejected_r).mean().item(), abs=1e-6)


def test_loss_by_hand():
    """DPO and ORPO on hand-picked log-probs, against the formulas."""
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    loss, m = dpo_loss(c, r, rc, rr, beta=0.5)
    z = 0.5 * ((c - rc) - (r - rr))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(-z)).mean().item(), abs=1e-6)
    assert m["preference_accuracy"].item() == 0.5
    assert m["reward_margin"].item() == pytest.approx(z.mean().item(), abs=1e-6)
    cm, rm = torch.tensor([-0.2, -1.5]), torch.tensor([-0.9, -0.1])
    loss, m = orpo_loss(cm, rm, torch.tensor(0.7), beta=0.2)
    odds = lambda x: x - torch.log(1 - torch.exp(x))  # noqa: E731
    ratio = torch.nn.functional.logsigmoid(odds(cm) - odds(rm))
    assert loss.item() == pytest.approx(0.7 - 0.2 * ratio.mean().item(), abs=1e-6)


def test_completion_logps_masks_the_prompt():
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 3, 4]])
    total, count = completion_logps(logits, labels)
    logp = logits.log_softmax(-1)
    assert count.tolist() == [2, 4]
    assert total[0].item() == pytest.approx((logp[0, 1, 3] + logp[0, 2, 4]).item(), abs=1e-5)
