"""The weighted fine-tuning objective and the algorithms' weights, against values computed independently."""

from __future__ import annotations

import json
import math

import pytest
import torch

from turnrl.algorithms.config import AlgoConfig
from turnrl.algorithms.weighted import build_weighted_examples
from turnrl.algorithms.refit import RefitParams
from turnrl.algorithms.star_gate import StarGateParams
from turnrl.algorithms.swift import SwiftParams
from turnrl.errors import ConfigError
from turnrl.records import Trajectory, TurnInfo
from turnrl.train.config import OptimConfig
from turnrl.train.logprobs import MaskedLogprobLM
from turnrl.train.weighted import tokenize_examples, weighted_step_loss


def traj(task: str, sample: int, reward: float, answer: str = "The answer is A.", truncated=(False, False)):
    return Trajectory(
        id=f"{task}#{sample}", task_id=task, group_id=task, sample=sample, reward=reward,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": f"Question {task}: pick A or B."},
                  {"role": "assistant", "content": f"Thinking about {task}, sample {sample}."},
                  {"role": "user", "content": "Final answer?"},
                  {"role": "assistant", "content": answer}],
        turns=[TurnInfo(tokens=8, truncated=truncated[0]), TurnInfo(tokens=5, truncated=truncated[1])],
    )


def FakeAccelerator():
    """accelerate on one CPU process in fp32: plain backward, no autocast."""
    from accelerate import Accelerator

    return Accelerator(cpu=True, mixed_precision="no")


def independent_loss(model, tokenizer, trajectories, weights, normalization: str) -> torch.Tensor:
    """The objective from full-vocabulary logits, assistant tokens found by rendering prefixes by hand."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    total, tokens = torch.zeros(()), 0
    for t, w in zip(trajectories, weights):
        text_ids = tokenizer.apply_chat_template(t.messages, tokenize=True, return_dict=False)
        ids = torch.tensor([text_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        mask = torch.zeros(len(text_ids), dtype=torch.bool)
        for i, m in enumerate(t.messages):
            if m["role"] != "assistant":
                continue
            start = len(tokenizer.apply_chat_template(t.messages[:i], tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
            end = start + len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
            assert text_ids[end] == eot
            mask[start: end + 1] = True
        picked = logp[torch.arange(len(targets)), targets][mask[1:]]
        total = total + w * picked.sum()
        tokens += int(mask.sum())
    return -total / (len(trajectories) if normalization == "sum" else tokens)


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_weighted_loss_matches_full_logits(tiny_model, tokenizer, normalization):
    trajectories = [traj("t1", 0, 0.9), traj("t1", 1, 0.2), traj("t2", 0, 0.0), traj("t2", 1, 0.5)]
    examples, _ = build_weighted_examples(trajectories, AlgoConfig(name="refit"))
    items, dropped = tokenize_examples(examples, tokenizer, [tokenizer.convert_tokens_to_ids("<|im_end|>")],
                                       OptimConfig())
    assert dropped == {"too_long": 0, "truncated": 0, "no_tokens": 0}
    wrapped = MaskedLogprobLM(tiny_model, chunk_tokens=7)  # several head chunks, exercised with checkpointing
    step = weighted_step_loss(normalization, micro_batch_tokens=60, pad_id=tokenizer.pad_token_id)
    metrics = step(items, FakeAccelerator(), wrapped)
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    expected = independent_loss(tiny_model, tokenizer, trajectories, [0.9, 0.2, 0.0, 0.5], normalization)
    expected.backward()
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["active"] == 3  # the zero-weight trajectory is not run, but it counts in the normaliser
    for name, p in tiny_model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))


def test_refit_with_unit_rewards_is_sft(tiny_model, tokenizer):
    trajectories = [traj("t1", 0, 1.0), traj("t1", 1, 1.0), traj("t2", 0, 1.0)]
    eot = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    losses = {}
    for name in ("refit", "sft"):
        items, _ = tokenize_examples(build_weighted_examples(trajectories, AlgoConfig(name=name))[0], tokenizer,
                                     eot, OptimConfig())
        losses[name] = weighted_step_loss("sum", 4096, tokenizer.pad_token_id)(
            items, FakeAccelerator(), MaskedLogprobLM(tiny_model))["loss"]
        tiny_model.zero_grad()
    assert losses["refit"] == pytest.approx(losses["sft"], rel=1e-6)


def test_swift_weights_by_hand():
    # Group a: rewards 1, 0, 0.5 -> mean 0.5, std (ddof 1) = 0.5 -> weights 1, -1, 0.
    # Group b: all equal -> no signal, weights 0, counted.
    # Group c: 0.2, 0.8 -> mean 0.5, std = sqrt(0.18) -> weights -0.3/0.4243, +0.3/0.4243.
    trajectories = [traj("a", 0, 1.0), traj("a", 1, 0.0), traj("a", 2, 0.5),
                    traj("b", 0, 0.3), traj("b", 1, 0.3), traj("b", 2, 0.3),
                    traj("c", 0, 0.2), traj("c", 1, 0.8)]
    examples, diag = build_weighted_examples(trajectories, AlgoConfig(name="swift-literal"))
    s = math.sqrt(0.18)
    assert [e.weight for e in examples] == pytest.approx([1.0, -1.0, 0.0, 0, 0, 0, -0.3 / s, 0.3 / s])
    assert diag["zero_signal_groups"] == 1
    assert diag["negative"] == 2 and diag["positive"] == 2
    # Swift by default is the same with its negative weights floored at 0; an explicit floor overrides it.
    floored, diag = build_weighted_examples(trajectories, AlgoConfig(name="swift"))
    assert [e.weight for e in floored] == pytest.approx([1.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.3 / s])
    assert diag["floored"] == 2 and diag["negative"] == 0
    unfloored, _ = build_weighted_examples(trajectories, AlgoConfig(name="swift", swift=SwiftParams(floor=-10.0)))
    assert [e.weight for e in unfloored] == pytest.approx([e.weight for e in examples])


def test_swift_floor_and_kl_anchor():
    trajectories = [traj("a", 0, 1.0), traj("a", 1, 0.0), traj("a", 2, 0.5)]
    examples, diag = build_weighted_examples(trajectories, AlgoConfig(name="swift", swift=SwiftParams(floor=-0.5), kl_coef=0.1))
    assert [e.weight for e in examples] == pytest.approx([1.1, -0.4, 0.1])
    assert diag["floored"] == 1


def test_star_gate_keeps_the_best_of_each_group():
    trajectories = [traj("a", 0, 0.2), traj("a", 1, 0.9), traj("a", 2, 0.9),  # tie: the earlier sample wins
                    traj("b", 0, 0.0), traj("b", 1, 0.0),  # nothing earned: nothing to imitate
                    traj("c", 0, 0.3), traj("c", 1, 0.1)]
    weights, diag = build_weighted_examples(trajectories, AlgoConfig(name="star-gate"))
    assert [e.weight for e in weights] == [0, 1, 0, 0, 0, 1, 0]
    assert diag["groups_without_selection"] == 1
    thresholded, diag = build_weighted_examples(trajectories, AlgoConfig(name="star-gate", star_gate=StarGateParams(min_reward=0.5)))
    assert [e.weight for e in thresholded] == [0, 1, 0, 0, 0, 0, 0]
    assert diag["groups_without_selection"] == 2


def test_refit_refuses_negative_rewards():
    trajectories = [traj("a", 0, 0.5), traj("a", 1, -0.25)]
    with pytest.raises(ConfigError, match=r"refit needs rewards >= 0.*a#1.*-0.25"):
        build_weighted_examples(trajectories, AlgoConfig(name="refit"))
    shifted, diag = build_weighted_examples(trajectories, AlgoConfig(name="refit", refit=RefitParams(shift_negative=True)))
    assert [e.weight for e in shifted] == pytest.approx([0.75, 0.0])


def test_truncated_turn_end_token_is_not_trained(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    t = traj("a", 0, 1.0, truncated=(True, False))
    items, _ = tokenize_examples([build_weighted_examples([t], AlgoConfig(name="sft"))[0][0]], tokenizer, [eot],
                                 OptimConfig())
    trained = [i for i, m in zip(items[0].seq.input_ids, items[0].seq.label_mask) if m]
    assert trained.count(eot) == 1  # only the final turn's
    dropped = tokenize_examples(build_weighted_examples([t], AlgoConfig(name="sft"))[0], tokenizer, [eot],
                                OptimConfig(truncated_turns="drop"))[1]
    assert dropped["truncated"] == 1


def test_one_refit_step_favours_high_reward(tiny_model, tokenizer):
    """After one SGD step, the high-reward trajectory's log-probability rises more than the low-reward one's."""
    good, bad = traj("a", 0, 1.0, "The answer is A. Alpha."), traj("a", 1, 0.1, "The answer is B. Beta.")
    eot = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    items, _ = tokenize_examples(build_weighted_examples([good, bad], AlgoConfig(name="refit"))[0], tokenizer, eot,
                                 OptimConfig())
    wrapped = MaskedLogprobLM(tiny_model)

    def seq_logps():
        with torch.no_grad():
            from turnrl.train.data import pad_batch
            from turnrl.train.logprobs import sequence_logprobs

            batch = pad_batch([it.seq for it in items], tokenizer.pad_token_id, "cpu")
            logp, rows = wrapped(**batch)
            return sequence_logprobs(logp, rows, len(items))

    before = seq_logps()
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    weighted_step_loss("sum", 4096, tokenizer.pad_token_id)(items, FakeAccelerator(), wrapped)
    opt.step()
    gain = seq_logps() - before
    assert gain[0] > 0 and gain[0] > gain[1]


def test_the_headline_is_nll_per_token_and_the_objective_is_labelled():
    from turnrl.train.loop import headline, summarise_history, summary_line

    # A token-sum objective that grows while NLL per token falls: the demo's "loss 83.07 -> 120.6".
    history = [{"loss": 83.07, "nll_per_token": 1.021, "grad_norm": 231.0, "seconds": 1.0},
               {"loss": 120.6, "nll_per_token": 0.968, "grad_norm": 250.0, "seconds": 1.0}]
    line = summary_line("sft", summarise_history(history), "ck")
    assert line == "train sft: done, NLL per token 1.021 -> 0.968 (objective 83.07 -> 120.6); checkpoint ck"
    assert list(headline(history[0])) == ["nll/tok", "objective", "gnorm"]
    # A last step whose trajectories all have weight 0 trains nothing: the summary ends at the step before it.
    idle = {"loss": 0.0, "nll_per_token": float("nan"), "grad_norm": float("nan"), "seconds": 1.0, "active": 0}
    line = summary_line("refit", summarise_history([{**history[0], "active": 3}, {**history[1], "active": 2}, idle]),
                        "ck")
    assert line == "train refit: done, NLL per token 1.021 -> 0.968 (objective 83.07 -> 120.6); checkpoint ck"
    # Preference losses have no NLL: their loss is the headline.
    assert summary_line("dpo", summarise_history([{"loss": 0.6931, "grad_norm": 1.0, "seconds": 1.0}]), "ck") == \
        "train dpo: done, loss 0.6931 -> 0.6931; checkpoint ck"


def test_a_non_finite_loss_stops_training_before_the_update(tiny_model, tokenizer, tmp_path):
    from turnrl.errors import TrainingDiverged
    from turnrl.train.loop import TrainLoop

    before = [p.detach().clone() for p in tiny_model.parameters()]
    loop = TrainLoop(tiny_model, tokenizer, OptimConfig(precision="fp32"), tmp_path, "tiny", [[0]], MaskedLogprobLM)

    def nan_loss(items, accelerator, model):
        loss = sum(p.sum() for p in model.parameters()) * float("nan")
        accelerator.backward(loss)
        return {"loss": float(loss)}

    with pytest.raises(TrainingDiverged, match="step 1: loss nan"):
        loop.run(nan_loss, steps_per_epoch=1)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, tiny_model.parameters()))


def test_registering_an_algorithm_is_one_function():
    """docs/design.md section 7's example: one decorated function makes an algorithm that training, the tables
    and the error messages know; its weights and diagnostics are the ones computed by hand."""
    from turnrl.algorithms.registry import get_algorithm, register_algorithm, unregister_algorithm
    from turnrl.stages.comparison import baseline_methods, default_order, display_name

    @register_algorithm("refit-correct", family="weighted", display="Refit (correct only)", paper="000 eq. 5")
    def refit_correct_weights(trajectories, cfg, diag):
        weights = [float(t.reward) if t.rewards.get("accuracy") == 1.0 else 0.0 for t in trajectories]
        diag["kept"] = sum(w > 0 for w in weights)
        return weights

    try:
        log = [traj("q1", 0, 0.9), traj("q1", 1, 0.4), traj("q2", 0, 0.7)]
        for t, accuracy in zip(log, (1.0, 0.0, 1.0)):
            t.rewards = {"accuracy": accuracy}
        examples, diag = build_weighted_examples(log, AlgoConfig(name="refit-correct"))
        assert [e.weight for e in examples] == [0.9, 0.0, 0.7]
        assert diag["kept"] == 2 and diag["turns"] == "all"
        assert diag["ess"] == pytest.approx((0.9 + 0.7) ** 2 / (0.81 + 0.49))
        assert get_algorithm("refit-correct").family == "weighted"
        assert display_name("refit-correct") == "Refit (correct only)"
        assert "refit-correct" not in baseline_methods()
        assert default_order(["refit-correct", "swift", "base", "sft"]) == ["base", "sft", "swift", "refit-correct"]
        with pytest.raises(ValueError, match="registered twice"):
            register_algorithm("refit-correct", family="weighted", display="x", paper="x")(lambda *a: [])
    finally:
        unregister_algorithm("refit-correct")
    with pytest.raises(ConfigError, match="algo.name: 'refit-correct'; expected one of sft, "):
        build_weighted_examples(log, AlgoConfig(name="refit-correct"))


def test_each_family_knows_only_its_algorithms():
    from turnrl.algorithms.registry import algorithms

    assert [a.name for a in algorithms("weighted")] == ["sft", "sft-final", "star-gate", "refit", "swift",
                                                          "swift-literal", "drift"]
    assert [a.name for a in algorithms("preference")] == ["dpo", "step-dpo", "m-dpo", "m-kto"]
    assert [a.name for a in algorithms("distillation")] == ["star-gate-d"]
    with pytest.raises(ConfigError, match="'dpo' is not a weighted algorithm"):
        build_weighted_examples([traj("q1", 0, 1.0)], AlgoConfig(name="dpo"))


def test_a_resumed_run_keeps_its_settings_and_logs_each_step_once(tiny_model_dir, tmp_path, monkeypatch):
    """Killed after a saved state: a rerun with another learning rate is refused (naming it, the state intact);
    the same command resumes and its log and summary hold every step once; --overwrite starts over."""
    from turnrl.records import write_jsonl
    from turnrl.train import loop as train_loop
    from turnrl.train.config import TrainConfig
    from turnrl.train.weighted import train_weighted

    log = [traj(f"q{i}", s, reward) for i in range(3) for s, reward in enumerate((1.0, 0.5))]
    write_jsonl(tmp_path / "scored" / "trajectories.jsonl", log)

    def config(lr: float, overwrite: bool = False) -> TrainConfig:
        return TrainConfig(run_dir=str(tmp_path), model=str(tiny_model_dir), algo=AlgoConfig(name="refit"),
                           optim=OptimConfig(learning_rate=lr, batch_size=2, precision="fp32", save_every=1),
                           overwrite=overwrite)

    original_save = train_loop.TrainLoop.save_state

    def save_then_die(self, step):
        original_save(self, step)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop.TrainLoop, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_weighted(config(1e-4))
    monkeypatch.setattr(train_loop.TrainLoop, "save_state", original_save)
    out = tmp_path / "train" / "refit"
    state = (out / "state" / "trainer_state.json").read_bytes()
    with pytest.raises(ConfigError, match=r"other settings \(optim\.learning_rate\)"):
        train_weighted(config(3e-4))
    assert (out / "state" / "trainer_state.json").read_bytes() == state

    checkpoint = train_weighted(config(1e-4))
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((checkpoint / "turnrl_train.json").read_text())["summary"]["steps"] == 3

    train_weighted(config(3e-4, overwrite=True))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and {r["lr"] for r in rows} == {3e-4}


def test_a_lora_checkpoint_of_an_alias_loads_with_peft_alone(smollm2_dir, tmp_path, hub):
    """PEFT finds the base of an adapter trained from the default alias by itself (no hub), and turnrl resolves
    the same checkpoint by the alias it keeps in turnrl_train.json."""
    from peft import AutoPeftModelForCausalLM

    from turnrl.models import DEFAULT_MODEL, resolve
    from turnrl.records import write_jsonl
    from turnrl.train.config import TrainConfig
    from turnrl.train.weighted import train_weighted

    write_jsonl(tmp_path / "scored" / "trajectories.jsonl", [traj("q1", 0, 1.0), traj("q1", 1, 0.5)])
    checkpoint = train_weighted(TrainConfig(
        run_dir=str(tmp_path), model=DEFAULT_MODEL, algo=AlgoConfig(name="refit"),
        optim=OptimConfig(lora=True, lora_r=2, lora_alpha=4, batch_size=2, precision="fp32", max_length=256)))
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(smollm2_dir.resolve())
    assert json.loads((checkpoint / "turnrl_train.json").read_text())["model"] == DEFAULT_MODEL
    model = AutoPeftModelForCausalLM.from_pretrained(checkpoint)
    assert model.peft_config["default"].r == 2
    resolved = resolve(str(checkpoint))
    assert (resolved.path, resolved.adapter) == (str(smollm2_dir), str(checkpoint))
    # The card names the alias's published original, over PEFT's blank template; so does the uploaded adapter
    # config (the local one keeps the path PEFT loads offline).
    from huggingface_hub import ModelCard

    from turnrl.train.card import push_to_hub

    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    push_to_hub(checkpoint, "me/refit-lora")
    uploaded = json.loads(hub.files["me/refit-lora"]["adapter_config.json"])
    assert uploaded["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(smollm2_dir.resolve())


def test_settings_saved_before_the_algorithm_sections_resume_unchanged():
    """A run killed while algo was one flat bag saved algo.drift_beta, algo.negative_floor (unset) and so on; under
    the names they have now those are the same settings, so the resume is not refused."""
    from dataclasses import asdict

    from turnrl.train.config import TrainConfig, _flat, _with_current_names

    old_algo = {"name": "drift", "top_k": 1, "min_reward": 0.0, "shift_negative": False, "negative_floor": None,
                "kl_coef": 0.0, "turns": "", "drift_beta": 0.1, "dpo_beta": 0.1, "pairing": "", "dpo_context": "history",
                "pairs_per_group": 1, "mask_observations": True, "kto_lambda_d": 1.0, "kto_lambda_u": 1.0,
                "reference": "", "precompute_reference": True, "branches": "branches/scored.jsonl", "teacher": "",
                "distill_alpha": 0.5, "distill_temperature": 2.0, "extra": {}}
    now = _flat(asdict(TrainConfig(algo=AlgoConfig(name="drift"))))
    saved = _with_current_names(_flat({**asdict(TrainConfig()), "algo": old_algo}))
    assert {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v} == {}
    changed = _with_current_names(_flat({"algo": {**old_algo, "drift_beta": 0.2}}))
    assert changed["algo.drift.beta"] == 0.2
