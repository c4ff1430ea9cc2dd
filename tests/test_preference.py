"""Preference learning: pair construction, and the DPO / KTO losses against values computed independently.

The independent values come from the model's full-vocabulary logits and token masks assembled by hand (each
assistant message's content tokens plus its end-of-turn token, found by rendering the conversation's prefixes),
not from the masked-log-prob path under test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from turnrl.algorithms.dpo import DPOParams
from turnrl.algorithms.preference import PairingStats, PreferenceParams, build_preference_data
from turnrl.algorithms.step_dpo import step_pairs
from turnrl.algorithms.config import AlgoConfig
from turnrl.errors import ConfigError, InputError
from turnrl.records import Task, Trajectory, TurnInfo, write_jsonl
from turnrl.stages.simulate import continue_jobs
from turnrl.train.config import OptimConfig
from turnrl.train.data import pad_batch
from turnrl.train.logprobs import MaskedLogprobLM, sequence_logprobs
from turnrl.train.preference import dpo_step_loss, kto_step_loss
from turnrl.train.preference_data import kto_steps, tokenize_kto, tokenize_pairs
from turnrl.train.reference import Reference, precompute_reference, reference_model

SYSTEM = {"role": "system", "content": "Be brief."}


def traj(task: str, sample: int, reward: float | None, final: str = "The answer is A.", accuracy: float | None = None,
         middle: str | None = None, observation: str = "Why might the others be wrong?", turns: int = 2):
    """A logged conversation: question, (turns - 1) explanation turns each answered by an observation, a final one."""
    messages = [SYSTEM, {"role": "user", "content": f"Question {task}: pick A or B."}]
    for k in range(turns - 1):
        messages += [{"role": "assistant", "content": middle or f"Thoughts on {task}, sample {sample}, step {k}."},
                     {"role": "user", "content": observation}]
    messages.append({"role": "assistant", "content": final})
    rewards = {} if accuracy is None else {"accuracy": accuracy}
    return Trajectory(id=f"{task}#{sample}", task_id=task, group_id=task, sample=sample, reward=reward,
                      rewards=rewards, messages=messages, turns=[TurnInfo(tokens=8, truncated=False)] * turns)


def FakeAccelerator():
    """accelerate on one CPU process in fp32: plain backward, no autocast."""
    from accelerate import Accelerator

    return Accelerator(cpu=True, mixed_precision="no")


def eot(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def hand_logp(model, tokenizer, messages, observations: bool = False,
              truncated: list[bool] | None = None) -> torch.Tensor:
    """Sum of log p over each assistant message's content tokens and its <|im_end|> (not for a ``truncated``
    message: it never emitted one), from full logits; with ``observations``, every token from the first assistant
    token to the last one's <|im_end|> counts."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    picked = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    mask = torch.zeros(len(ids), dtype=torch.bool)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
            end = start + len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
            assert ids[end] == eot(tokenizer)[0]
            spans.append((start, end + (0 if truncated and truncated[len(spans)] else 1)))
    for start, end in ([(spans[0][0], spans[-1][1])] if observations else spans):
        mask[start:end] = True
    return picked[mask[1:]].sum()


@pytest.fixture()
def reference_lm(tiny_model_dir):
    """A reference policy that differs from the tiny model, so that the log-ratios are not zero."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return ref.eval()


def m_dpo_pairs():
    logged = [traj("a", 0, 1.0, "The answer is A. Alpha.", 1.0), traj("a", 1, 0.0, "The answer is B. Beta.", 0.0),
              traj("b", 0, 0.0, "The answer is A, surely.", 0.0), traj("b", 1, 1.0, "The answer is B; yes.", 1.0)]
    return build_preference_data(logged, AlgoConfig(name="m-dpo"))


# ---------------------------------------------------------------------------------------- pair construction

def test_dpo_pairs_best_vs_worst_on_hand_made_groups():
    logged = [traj("a", 0, 0.5), traj("a", 1, 0.9, "The answer is B."), traj("a", 2, 0.1, "The answer is C."),
              traj("b", 0, 0.3), traj("b", 1, 0.3), traj("b", 2, 0.3),  # tied: skipped and counted
              traj("c", 0, 0.7),  # alone: nothing to compare
              traj("d", 0, 0.2), traj("d", 1, None)]  # unscored (judge failure): left out, counted
    pairs, diag = build_preference_data(logged, AlgoConfig(name="dpo"))
    assert [(p.chosen.source, p.rejected.source) for p in pairs] == [("a#1", "a#2")]
    assert diag["pairing"] == "best-vs-worst"
    assert (diag["groups"], diag["pairs"], diag["skipped_ties"], diag["skipped_single"], diag["unscored"]) == \
        (4, 1, 1, 2, 1)
    # By default each final message after its own conversation, only the final message trained.
    p = pairs[0]
    assert p.chosen.messages == logged[1].messages and p.rejected.messages == logged[2].messages
    assert p.chosen.train_turns == [1] and (p.chosen.reward, p.rejected.reward) == (0.9, 0.1)
    # 000's literal DPO: the original question (system + first user turn) answered by the final message alone.
    pairs, _ = build_preference_data(logged, AlgoConfig(name="dpo", dpo=DPOParams(context="question")))
    p = pairs[0]
    assert p.chosen.messages == logged[1].messages[:2] + [{"role": "assistant", "content": "The answer is B."}]
    assert p.rejected.messages == logged[2].messages[:2] + [{"role": "assistant", "content": "The answer is C."}]
    assert p.chosen.train_turns == [0] and (p.chosen.reward, p.rejected.reward) == (0.9, 0.1)


def test_m_dpo_correct_vs_incorrect_random_pairs():
    logged = [traj("a", k, 0.5, accuracy=float(k < 2)) for k in range(5)]  # correct: a#0, a#1
    logged += [traj("b", k, 0.9, accuracy=1.0) for k in range(3)]  # all correct: skipped
    logged += [traj("c", k, 0.1, accuracy=0.0) for k in range(2)]  # all incorrect: skipped
    cfg = AlgoConfig(name="m-dpo", preference=PreferenceParams(pairs_per_group=4))
    pairs, diag = build_preference_data(logged, cfg)
    combos = [(p.chosen.source, p.rejected.source) for p in pairs]
    assert len(combos) == 4 and len(set(combos)) == 4
    assert all(w in ("a#0", "a#1") and lo in ("a#2", "a#3", "a#4") for w, lo in combos)
    assert (diag["skipped_ties"], diag["all_correct"], diag["all_incorrect"]) == (2, 1, 1)
    assert combos == [(p.chosen.source, p.rejected.source) for p in build_preference_data(logged, cfg)[0]]
    # M-DPO trains on the whole conversation: every assistant turn.
    assert pairs[0].chosen.messages == logged[int(combos[0][0][-1])].messages
    assert pairs[0].chosen.train_turns == [0, 1]
    # A log without accuracy (an imported one): the paper's pairing falls back to best vs worst, and says so;
    # asked for by name, it is an error.
    pairs, diag = build_preference_data([traj("x", 0, 1.0), traj("x", 1, 0.0)], AlgoConfig(name="m-dpo"))
    assert [(p.chosen.source, p.rejected.source) for p in pairs] == [("x#0", "x#1")]
    assert diag["pairing"] == "best-vs-worst" and "no accuracy component" in diag["pairing_chosen_because"]
    with pytest.raises(ConfigError, match="accuracy reward component"):
        build_preference_data([traj("x", 0, 1.0), traj("x", 1, 0.0)],
                              AlgoConfig(name="m-dpo", preference=PreferenceParams(pairing="correct-vs-incorrect")))


def test_m_kto_examples_are_the_pairs_sides():
    kto, diag = build_preference_data(
        [traj("a", 0, 1.0, accuracy=1.0), traj("a", 1, 0.0, accuracy=0.0), traj("a", 2, 0.0, accuracy=0.0)],
        AlgoConfig(name="m-kto"))
    assert diag["desirable"] == 1 and diag["undesirable"] == 1
    assert [(e.id, e.desirable) for e in kto] == [("a#0", True), (kto[1].id, False)]


def test_step_dpo_branches_at_each_assistant_turn():
    logged = traj("a", 0, 0.6, turns=3)
    task = Task(id="a", source="local", question="q", answer="A", choices=["x", "y"])
    jobs = continue_jobs([logged], {"a": task}, temperature=0.7, top_p=0.9, seed=0, tag="b")
    assistant_at = logged.assistant_indices()
    assert len(jobs) == 3
    for t, job in enumerate(jobs):
        # The prefix ends right before assistant turn t: everything up to (not including) it, t turns recorded.
        assert job.prefix.messages == logged.messages[: assistant_at[t]]
        assert job.prefix.messages[-1]["role"] == "user" and len(job.prefix.turns) == t
    branches = []
    for t, (job, reward) in enumerate(zip(jobs, [0.9, 0.6, 0.1])):
        messages = job.prefix.messages + [{"role": "assistant", "content": f"Branched action {t}."}]
        messages += logged.messages[assistant_at[t] + 1:] if t < 2 else []
        b = Trajectory(id=job.id, task_id="a", group_id="a", messages=messages, reward=reward,
                       turns=[TurnInfo(8, False)] * 3, meta={"branch_of": logged.id, "step": t})
        branches.append(b)
    stats = PairingStats()
    pairs = step_pairs([logged], branches, stats)
    assert (stats.pairs, stats.skipped_ties) == (2, 1)  # step 1: equal rewards
    by_step = {p.step: p for p in pairs}
    for t in (0, 2):
        prompt = logged.messages[: assistant_at[t]]
        for side in (by_step[t].chosen, by_step[t].rejected):
            assert side.messages[:-1] == prompt and side.train_turns == [t]
    assert by_step[0].chosen.messages[-1]["content"] == "Branched action 0."  # branch 0.9 > logged 0.6
    assert by_step[2].chosen.messages[-1] == logged.messages[-1]  # logged 0.6 > branch 0.1
    branches[2].messages[0] = {"role": "system", "content": "Something else."}
    with pytest.raises(InputError, match="does not continue"):
        step_pairs([logged], branches, PairingStats())
    with pytest.raises(InputError, match="no branch rollout"):
        step_pairs([logged], branches[:1], PairingStats())


# ------------------------------------------------------------------------------------------------ the losses

def test_dpo_loss_matches_full_logits(tiny_model, tokenizer, reference_lm):
    pairs, _ = m_dpo_pairs()
    items, dropped = tokenize_pairs(pairs, tokenizer, eot(tokenizer), OptimConfig())
    assert len(items) == 2 and dropped == {"too_long": 0, "truncated": 0, "no_tokens": 0}
    beta = 0.1
    step = dpo_step_loss(beta, micro_batch_tokens=200, pad_id=tokenizer.pad_token_id,  # one pair per micro-batch
                         reference=Reference(module=MaskedLogprobLM(reference_lm, chunk_tokens=5)))
    metrics = step(items, FakeAccelerator(), MaskedLogprobLM(tiny_model, chunk_tokens=7))
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    losses, margins = [], []
    for p in pairs:
        with torch.no_grad():
            ref_w, ref_l = (hand_logp(reference_lm, tokenizer, c.messages) for c in (p.chosen, p.rejected))
        pol_w, pol_l = (hand_logp(tiny_model, tokenizer, c.messages) for c in (p.chosen, p.rejected))
        z = beta * ((pol_w - ref_w) - (pol_l - ref_l))
        losses.append(torch.log1p(torch.exp(-z)))  # -log sigmoid(z), written out
        margins.append(float(z.detach()))
    expected = torch.stack(losses).mean()
    expected.backward()
    assert abs(margins[0]) > 1e-3  # the reference differs, so this is not log 2 by construction
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["rewards/margin"] == pytest.approx(sum(margins) / 2, rel=1e-4, abs=1e-6)
    for name, p in tiny_model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))


def test_kto_loss_matches_full_logits(tiny_model, tokenizer, reference_lm):
    # Roles chosen so that the policy is more likely than the reference on these conversations: z0 > 0, so the
    # test sees the mismatched-pair estimate itself rather than the clamp at 0.
    policy, reference = reference_lm.train(), tiny_model.eval()
    logged = [traj("a", 0, 1.0, "The answer is A. Alpha.", 1.0), traj("a", 1, 0.0, "The answer is B.", 0.0),
              traj("b", 0, 1.0, "The answer is B, as shown.", 1.0), traj("b", 1, 0.0, "The answer is A!", 0.0)]
    examples, _ = build_preference_data(logged, AlgoConfig(name="m-kto"))
    items, _ = tokenize_kto(examples, tokenizer, eot(tokenizer), OptimConfig())
    step = kto_steps([items], tokenizer, eot(tokenizer))[0]
    beta, lam_d, lam_u = 0.1, 1.3, 0.7
    loss_fn = kto_step_loss(beta, lam_d, lam_u, 300, tokenizer.pad_token_id,
                            Reference(module=MaskedLogprobLM(reference)))
    metrics = loss_fn(step, FakeAccelerator(), MaskedLogprobLM(policy, chunk_tokens=9))
    by_id = {t.id: t for t in logged}
    order = [e.id for e in examples]
    with torch.no_grad():  # z0: prompt of example i with the completion of example i - 1, masked, no gradient
        kl = []
        for i, ex_id in enumerate(order):
            other = by_id[order[i - 1]]
            messages = by_id[ex_id].messages[:2] + other.messages[2:]
            kl.append(hand_logp(policy, tokenizer, messages) - hand_logp(reference, tokenizer, messages))
        z0 = max(0.0, float(torch.stack(kl).mean()))
        losses = []
        for e in examples:
            r = hand_logp(policy, tokenizer, by_id[e.id].messages) - hand_logp(reference, tokenizer,
                                                                                 by_id[e.id].messages)
            v = torch.sigmoid(beta * (r - z0)) if e.desirable else torch.sigmoid(beta * (z0 - r))
            losses.append((lam_d if e.desirable else lam_u) * (1 - v))
    assert z0 > 0.1
    assert metrics["kl"] == pytest.approx(z0, rel=1e-5)
    assert metrics["loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def _perturbed_loss(model, tokenizer, item, positions, reference, mask_fn=None) -> float:
    """The DPO loss with the final hidden state at ``positions`` of the chosen row shifted by noise: that moves
    the logits predicting the token after each position and nothing else."""
    def hook(module, args, output):
        output = output.clone()
        for p in positions:
            output[0, p] += 3.0 * torch.randn(output.shape[-1], generator=torch.Generator().manual_seed(p))
        return output

    handle = model.model.norm.register_forward_hook(hook)
    try:
        return dpo_step_loss(0.1, 10_000, tokenizer.pad_token_id, reference)(
            [item], FakeAccelerator(), MaskedLogprobLM(model))["loss"]
    finally:
        handle.remove()
        model.zero_grad()


def test_masking_observation_logits_change_nothing(tiny_model, tokenizer, reference_lm):
    pairs, _ = m_dpo_pairs()
    item = tokenize_pairs(pairs[:1], tokenizer, eot(tokenizer), OptimConfig())[0][0]
    mask = item.chosen.label_mask
    first = mask.index(1)
    last = len(mask) - 1 - mask[::-1].index(1)
    observation = [p - 1 for p in range(first, last) if not mask[p]]  # positions predicting observation tokens
    assistant = [p - 1 for p in range(first, last + 1) if mask[p]]
    assert observation and assistant
    reference = Reference(module=MaskedLogprobLM(reference_lm))
    base = _perturbed_loss(tiny_model, tokenizer, item, [], reference)
    assert _perturbed_loss(tiny_model, tokenizer, item, observation, reference) == base
    assert abs(_perturbed_loss(tiny_model, tokenizer, item, assistant[-3:], reference) - base) > 1e-4
    # The single-turn baseline (mask_observations false) does count the observation tokens.
    unmasked = tokenize_pairs(pairs[:1], tokenizer, eot(tokenizer), OptimConfig(), mask_observations=False)[0][0]
    assert sum(unmasked.chosen.label_mask) > sum(mask)
    base_u = _perturbed_loss(tiny_model, tokenizer, unmasked, [], reference)
    assert abs(_perturbed_loss(tiny_model, tokenizer, unmasked, observation, reference) - base_u) > 1e-4


def test_masking_trailing_observation_content_changes_nothing(tiny_model, tokenizer, reference_lm):
    """A conversation that ends on an observation (e.g. the tool budget ran out): its content is not trained."""
    def pair_with(tail: str):
        w, lo = traj("a", 0, 1.0, accuracy=1.0), traj("a", 1, 0.0, "The answer is B.", accuracy=0.0)
        for t in (w, lo):
            t.messages = t.messages + [{"role": "user", "content": tail}]
        return build_preference_data([w, lo], AlgoConfig(name="m-dpo"))[0]

    reference = Reference(module=MaskedLogprobLM(reference_lm))
    losses = []
    for tail in ("Output: 42", "Traceback: a much longer and different error message"):
        item = tokenize_pairs(pair_with(tail), tokenizer, eot(tokenizer), OptimConfig())[0][0]
        losses.append(_perturbed_loss(tiny_model, tokenizer, item, [], reference))
    assert losses[0] == pytest.approx(losses[1], abs=1e-7)


def test_at_initialisation_dpo_is_log2_and_kto_ratios_are_zero(tiny_model, tokenizer):
    from peft import LoraConfig, get_peft_model

    pairs, _ = m_dpo_pairs()
    items, _ = tokenize_pairs(pairs, tokenizer, eot(tokenizer), OptimConfig())
    policy = MaskedLogprobLM(tiny_model)
    precomputed = precompute_reference(policy, [items], tokenizer.pad_token_id, FakeAccelerator(), 4096)
    frozen, _ = reference_model("", tiny_model, fresh_adapter=False, precompute=False)
    for reference in (Reference(values=precomputed), Reference(module=MaskedLogprobLM(frozen))):
        metrics = dpo_step_loss(0.1, 4096, tokenizer.pad_token_id, reference)(items, FakeAccelerator(), policy)
        assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    # A fresh LoRA adapter: the reference is the same model with the adapter switched off.
    lora = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    lora.train()
    wrapped = MaskedLogprobLM(lora)
    metrics = dpo_step_loss(0.1, 4096, tokenizer.pad_token_id, Reference())(items, FakeAccelerator(), wrapped)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    examples, _ = build_preference_data(
        [traj("a", 0, 1.0, accuracy=1.0), traj("a", 1, 0.0, "The answer is B.", accuracy=0.0)],
        AlgoConfig(name="m-kto"))
    kto_items, _ = tokenize_kto(examples, tokenizer, eot(tokenizer), OptimConfig())
    step = kto_steps([kto_items], tokenizer, eot(tokenizer))[0]
    metrics = kto_step_loss(0.1, 1.0, 1.0, 4096, tokenizer.pad_token_id, Reference())(step, FakeAccelerator(),
                                                                                       wrapped)
    assert metrics["kl"] == 0.0
    assert metrics["rewards/desirable"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/undesirable"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["loss"] == pytest.approx(0.5, abs=1e-6)  # 1 - sigmoid(0)


def test_one_dpo_step_raises_the_margin(tiny_model, tokenizer):
    pairs, _ = m_dpo_pairs()
    items, _ = tokenize_pairs(pairs, tokenizer, eot(tokenizer), OptimConfig())
    policy = MaskedLogprobLM(tiny_model)
    seqs = [s for it in items for s in (it.chosen, it.rejected)]
    reference = Reference(values=precompute_reference(policy, [items], tokenizer.pad_token_id, FakeAccelerator(),
                                                      4096))

    def margin() -> float:
        with torch.no_grad():
            batch = pad_batch(seqs, tokenizer.pad_token_id, "cpu")
            lp = sequence_logprobs(*policy(**batch), len(seqs))
        return float(sum(lp[2 * i] - lp[2 * i + 1] for i in range(len(items))))

    before = margin()
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    metrics = dpo_step_loss(0.1, 4096, tokenizer.pad_token_id, reference)(items, FakeAccelerator(), policy)
    opt.step()
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert margin() > before + 1e-3


# ---------------------------------------------------------------------------------------------- end to end

def _write_run(tmp_path, tiny_model_dir, logged):
    for t in logged:
        t.policy = {"model": str(tiny_model_dir)}
    write_jsonl(tmp_path / "scored" / "trajectories.jsonl", logged)
    return tmp_path


@pytest.mark.parametrize("name,lora,precompute", [("m-dpo", False, True), ("m-kto", True, False),
                                                  ("dpo", False, False)])
def test_train_preference_end_to_end(tmp_path, tiny_model_dir, name, lora, precompute):
    from turnrl.records import read_json
    from turnrl.train import train

    logged = [traj(g, k, float(k == 0), f"The answer is {'AB'[k]}. {g}", float(k == 0)) for g in "abc" for k in (0, 1)]
    run = _write_run(tmp_path, tiny_model_dir, logged)
    algo = AlgoConfig(name=name, preference=PreferenceParams(precompute_reference=precompute))
    optim = OptimConfig(lora=lora, learning_rate=1e-3, batch_size=2, precision="fp32", warmup_ratio=0.0)
    checkpoint = train(str(run), "", algo, optim)
    assert (checkpoint / "turnrl_train.json").exists()
    info = read_json(checkpoint / "turnrl_train.json")
    assert info["diagnostics"]["pairs"] == 3 and info["summary"]["steps"] == (3 if name == "m-kto" else 2)
    assert info["diagnostics"]["reference"] == ("the base model (LoRA adapter disabled)" if lora else
                                                "the starting policy" if precompute else
                                                "a frozen copy of the starting policy")
    assert (run / f"train/{name}" / ("examples.jsonl" if name == "m-kto" else "pairs.jsonl")).exists()
    assert (run / f"train/{name}/reference_logps.json").exists() == precompute
    log = [json.loads(line) for line in (run / f"train/{name}/train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2) if name != "m-kto" else 0.5, abs=1e-5)


def test_step_dpo_without_branches_says_how_to_make_them(tmp_path, tiny_model_dir):
    from turnrl.train import train

    run = _write_run(tmp_path, tiny_model_dir, [traj("a", 0, 1.0), traj("a", 1, 0.0)])
    with pytest.raises(ConfigError, match=r"simulate --continue_from .*turnrl score"):
        train(str(run), "", AlgoConfig(name="step-dpo"), OptimConfig())


def test_step_dpo_branch_rollouts_and_training(tmp_path, tiny_model_dir):
    """The branch stage through the real rollout engine, then StepDPO training on its pairs."""
    from turnrl.envs import EnvConfig
    from turnrl.generation import BackendConfig
    from turnrl.records import read_json, read_trajectories
    from turnrl.rewards.scoring import RewardConfig
    from turnrl.stages.score import ScoreConfig, score
    from turnrl.stages.simulate import RolloutOptions, SimulateConfig, simulate
    from turnrl.tasks import DatasetConfig
    from turnrl.train import train
    from turnrl.workflows.pipeline import branch_rollouts

    rows = [{"id": f"q{i}", "question": f"Pick option {i}.", "choices": ["w", "x", "y", "z"], "answer": "ABCD"[i]}
            for i in range(3)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sim = SimulateConfig(run_dir=str(tmp_path), dataset=DatasetConfig(name=str(tmp_path / "tasks.jsonl"), n_train=2,
                                                                      n_test=1),
                         env=EnvConfig(max_turns=2, max_new_tokens=5),
                         policy=BackendConfig(model=str(tiny_model_dir), dtype="float32"),
                         rollout=RolloutOptions(samples=1, temperatures=[1.0]))
    reward = RewardConfig(weights={"gold_likelihood": 1.0}, likelihood_dtype="float32")
    simulate(sim)
    score(ScoreConfig(run_dir=str(tmp_path), reward=reward))
    scored = branch_rollouts(str(tmp_path), "scored/trajectories.jsonl", sim, reward)
    logged = {t.id: t for t in read_trajectories(tmp_path / "scored/trajectories.jsonl")}
    branches = read_trajectories(scored)
    assert len(branches) == 2 * 2  # every step of every logged trajectory
    for b in branches:
        source, step = logged[b.meta["branch_of"]], b.meta["step"]
        at = source.assistant_indices()[step]
        assert b.messages[:at] == source.messages[:at] and b.messages[at]["role"] == "assistant"
        assert (b.group_id, b.temperature, len(b.assistant_indices())) == (source.group_id, 1.0, 2)
        assert b.reward is not None
    assert branch_rollouts(str(tmp_path), "scored/trajectories.jsonl", sim, reward) == scored  # complete: reused
    checkpoint = train(str(tmp_path), "", AlgoConfig(name="step-dpo"),
                       OptimConfig(batch_size=4, precision="fp32", learning_rate=1e-4))
    diagnostics = read_json(checkpoint / "turnrl_train.json")["diagnostics"]
    assert diagnostics["steps"] == 4 and diagnostics["pairs"] + diagnostics["skipped_ties"] == 4


@pytest.mark.parametrize("name", ["m-dpo", "m-kto"])
def test_two_processes_train_like_one(tmp_path, tiny_model_dir, name):
    """Data parallelism (torchrun, 2 CPU processes) gives the one-process losses, z0 and weights."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    logged = [traj(g, k, float(k == 0), f"The answer is {'AB'[k]}. " + "More. " * (i % 3), float(k == 0))
              for i, g in enumerate("abcde") for k in (0, 1)]
    _write_run(tmp_path, tiny_model_dir, logged)
    args = ["train", "--run_dir", str(tmp_path), "--algo.name", name, "--optim.precision", "fp32",
            "--optim.batch_size", "3", "--optim.micro_batch_tokens", "300", "--optim.learning_rate", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "turnrl.cli", *args, "--output", "one"], env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "turnrl.cli",
                          *args, "--output", "two"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    # 5 pairs (10 KTO examples) in steps of 3: the last step leaves the second process without data.
    assert len(logs[0]) == len(logs[1]) == (4 if name == "m-kto" else 2)
    for a, b in zip(*logs):
        for key in ("loss", "grad_norm") + (("kl",) if name == "m-kto" else ("rewards/margin",)):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    w1, w2 = (load_file(tmp_path / run / "checkpoint" / "model.safetensors") for run in ("one", "two"))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-5, atol=1e-6)
