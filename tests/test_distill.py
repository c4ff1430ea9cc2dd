"""STaR-GATE-D: the chunked distillation loss against the full-vocabulary one, and the whole training path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turnrl.algorithms.config import AlgoConfig
from turnrl.records import read_json, write_jsonl
from turnrl.train.config import OptimConfig
from turnrl.algorithms.star_gate_d import selected_examples
from turnrl.train.distill import DistillLM, distill_step_loss
from turnrl.train.weighted import tokenize_examples

from test_preference import FakeAccelerator, eot, reference_lm, traj  # noqa: F401 (reference_lm is a fixture)


def full_vocabulary_loss(student, teacher, tokenizer, trajectories, alpha, temperature) -> torch.Tensor:
    """The loss from both models' full logits, the KL by torch's kl_div, tokens found by rendering prefixes."""
    total = torch.zeros(())
    for t in trajectories:
        ids = tokenizer.apply_chat_template(t.messages, tokenize=True, return_dict=False)
        x = torch.tensor([ids])
        s = student(input_ids=x).logits[0, :-1].float()
        with torch.no_grad():
            te = teacher(input_ids=x).logits[0, :-1].float()
        mask = torch.zeros(len(ids), dtype=torch.bool)
        for i, m in enumerate(t.messages):
            if m["role"] == "assistant":
                start = len(tokenizer.apply_chat_template(t.messages[:i], tokenize=True, add_generation_prompt=True,
                                                          return_dict=False))
                end = start + len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
                mask[start: end + 1] = True
        rows = mask[1:]
        nll = F.cross_entropy(s[rows], torch.tensor(ids[1:])[rows], reduction="none")
        kl = F.kl_div(F.log_softmax(s[rows] / temperature, -1), F.log_softmax(te[rows] / temperature, -1),
                      log_target=True, reduction="none").sum(-1)
        total = total + (alpha * nll + (1 - alpha) * temperature ** 2 * kl).sum()
    return total / len(trajectories)


def logged():
    return [traj("a", 0, 0.9, "The answer is A. Alpha."), traj("a", 1, 0.1, "The answer is B."),
            traj("b", 0, 0.2, "The answer is C."), traj("b", 1, 0.8, "The answer is D, clearly.")]


def test_distill_loss_matches_full_vocabulary_kl(tiny_model, tokenizer, reference_lm):  # noqa: F811
    examples, diag = selected_examples(logged(), AlgoConfig(name="star-gate-d"))
    assert [e.trajectory.id for e in examples] == ["a#0", "b#1"]  # STaR-GATE's selection: the best of each group
    items, _ = tokenize_examples(examples, tokenizer, eot(tokenizer), OptimConfig())
    alpha, temperature = 0.3, 2.0
    model = DistillLM(tiny_model, reference_lm, temperature, chunk_tokens=5)  # many chunks, recomputed in backward
    metrics = distill_step_loss(alpha, temperature, "sum", 60, tokenizer.pad_token_id)(items, FakeAccelerator(),
                                                                                        model)
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    expected = full_vocabulary_loss(tiny_model, reference_lm, tokenizer, [e.trajectory for e in examples], alpha,
                                    temperature)
    expected.backward()
    assert metrics["kl_per_token"] > 1e-3
    assert metrics["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert not any(p.grad is not None for p in reference_lm.parameters())  # the teacher is frozen
    for name, p in tiny_model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))


def test_distilling_a_model_into_itself_leaves_only_the_nll(tiny_model, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    examples, _ = selected_examples(logged(), AlgoConfig(name="star-gate-d"))
    items, _ = tokenize_examples(examples, tokenizer, eot(tokenizer), OptimConfig())
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    metrics = distill_step_loss(0.5, 2.0, "mean", 4096, tokenizer.pad_token_id)(items, FakeAccelerator(),
                                                                                 DistillLM(tiny_model, teacher, 2.0))
    assert metrics["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["loss"] == pytest.approx(0.5 * metrics["nll_per_token"], rel=1e-6)


def test_star_gate_d_trains_its_teacher_first(tmp_path, tiny_model_dir):
    from turnrl.train import train

    trajectories = logged()
    for t in trajectories:
        t.policy = {"model": str(tiny_model_dir)}
    write_jsonl(tmp_path / "scored" / "trajectories.jsonl", trajectories)
    teacher_optim = OptimConfig(learning_rate=1e-3, epochs=2, batch_size=1, precision="fp32")
    optim = OptimConfig(lora=True, lora_r=4, lora_alpha=8, learning_rate=1e-3, batch_size=2, precision="fp32")
    checkpoint = train(str(tmp_path), "", AlgoConfig(name="star-gate-d"), optim, teacher_optim=teacher_optim)
    teacher = read_json(tmp_path / "train/star-gate/checkpoint/turnrl_train.json")
    # The teacher got its own settings: 4 logged trajectories (2 selected, the rest weight 0) x 2 epochs, batch 1.
    assert teacher["config"]["optim"]["epochs"] == 2 and teacher["summary"]["steps"] == 8
    student = read_json(checkpoint / "turnrl_train.json")
    assert (checkpoint / "adapter_config.json").exists()  # LoRA student, as in 000 Table 27
    assert student["diagnostics"]["teacher"] == str(tmp_path / "train/star-gate/checkpoint")
    assert student["summary"]["steps"] == 1 and student["summary"]["first_loss"] > 0
