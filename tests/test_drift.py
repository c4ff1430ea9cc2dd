"""DRIFT (004): the return, the importance weights, the final-turn loss mask, the multi@k curve, the refresh run.

Expected values are computed by hand here (or quoted from the digest's worked numbers, which were computed from
the paper's formulas separately), never by the code under test.
"""

from __future__ import annotations

import json
import math

import pytest

from turnrl.algorithms.drift import DriftParams, group_weights
from turnrl.algorithms.config import AlgoConfig
from turnrl.algorithms.weighted import build_weighted_examples
from turnrl.errors import ConfigError
from turnrl.records import Task, Trajectory, TurnInfo
from turnrl.rewards.drift_return import DriftReturnConfig, drift_components, shaped_return

FEEDBACK = "Incorrect. Please think again."
MC = Task(id="mc", source="sciq", question="Which gas do plants absorb?", choices=["O2", "N2", "CO2", "He"],
          answer="C")
MATH = Task(id="m", source="gsm8k", question="What is 1 + 2?", answer="3")


def conversation(answers: list[str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You're a helpful assistant."},
                {"role": "user", "content": "Problem: which gas?"}]
    for i, a in enumerate(answers):
        if i:
            messages.append({"role": "user", "content": FEEDBACK})
        messages.append({"role": "assistant", "content": a})
    return messages


def feedback_traj(group: str, sample: int, answers: list[str], drift_return: float | None = None,
                  solved: bool = False, task: str = "mc") -> Trajectory:
    rewards = {"accuracy": float(solved)}
    if drift_return is not None:
        rewards["drift_return"] = drift_return
    return Trajectory(id=f"{group}#{sample}", task_id=task, group_id=group, sample=sample,
                      messages=conversation(answers), env={"name": "feedback", "turns": 5},
                      turns=[TurnInfo(tokens=5, truncated=False) for _ in answers], rewards=rewards,
                      reward=float(solved))


# ------------------------------------------------------------------------------------------------ the return
@pytest.mark.parametrize("solved, turns, distinct, answered, expected", [
    (True, 1, 1, 1, 1.0),                                 # first-turn success, nothing to penalise
    (True, 3, 3, 3, 0.81),                                # 0.9^2, three different answers
    (True, 3, 2, 3, 0.81 - 0.5 * (1 - 2 / 3)),            # 0.81 - 1/6: one answer repeated
    (False, 5, 1, 5, -0.4),                               # five identical wrong answers (004's minimum)
    (False, 5, 5, 5, 0.0),                                # five different wrong answers
    (False, 5, 0, 0, -0.5),                               # five turns without an answer
    (True, 5, 2, 4, 0.9 ** 4 - 0.5 * (1 - 2 / 5)),        # 0.6561 - 0.3
])
def test_return_of_the_paper(solved, turns, distinct, answered, expected):
    assert shaped_return(solved, turns, distinct, answered, DriftReturnConfig()) == pytest.approx(expected)


def test_return_terms_are_configurable():
    # The released code's variant: E over the answered turns, 0.1 off per turn without an answer.
    code = DriftReturnConfig(denominator="answers", format_penalty=0.1)
    assert shaped_return(False, 3, 1, 2, code) == pytest.approx(-0.5 * (1 - 1 / 2) - 0.1)
    assert shaped_return(False, 2, 0, 0, code) == pytest.approx(-0.2)  # no answers: no repetition term
    assert shaped_return(True, 3, 1, 3, DriftReturnConfig(gamma=0.5, lam=0.0)) == pytest.approx(0.25)


def test_return_read_from_conversations():
    mc = feedback_traj("g", 0, ["The answer is A.", "The answer is A.", "I am not sure.", "The answer is C."])
    assert drift_components(mc, MC, DriftReturnConfig()) == {
        "drift_return": pytest.approx(0.9 ** 3 - 0.5 * (1 - 2 / 4)), "turns_used": 4.0, "distinct_answers": 2.0}
    # 1.5 and 3/2 are the same answer; the turn without a number states none.
    maths = feedback_traj("h", 0, ["\\boxed{1.5}", "\\boxed{\\frac{3}{2}}", "no idea", "\\boxed{4}", "\\boxed{2}"],
                          task="m")
    assert drift_components(maths, MATH, DriftReturnConfig()) == {
        "drift_return": pytest.approx(-0.5 * (1 - 3 / 5)), "turns_used": 5.0, "distinct_answers": 3.0}


def test_scorer_records_the_return_for_feedback_conversations_only():
    from turnrl.rewards.scoring import RewardConfig, Scorer

    fb = feedback_traj("g", 0, ["The answer is B.", "The answer is C."])
    other = feedback_traj("g", 1, ["The answer is C."])
    other.env = {"name": "reasoning", "turns": 1}
    Scorer(RewardConfig(weights={"accuracy": 1.0})).score([fb, other], {"mc": MC})
    assert fb.rewards["drift_return"] == pytest.approx(0.9) and fb.reward == 1.0
    assert "drift_return" not in other.rewards
    with pytest.raises(ConfigError, match="reward.drift.denominator"):
        Scorer(RewardConfig(weights={"accuracy": 1.0}, drift=DriftReturnConfig(denominator="steps")))
    # The return is recorded beside the reward, never weighted into it (it is not in [0, 1]).
    for component in ("drift_return", "turns_used", "distinct_answers"):
        with pytest.raises(ConfigError, match=f"unknown component '{component}'"):
            Scorer(RewardConfig(weights={component: 1.0}))
    Scorer(RewardConfig(weights={"earned": 1.0}))  # the worksheet's own component may be weighted


# ----------------------------------------------------------------------------------------------- the weights
def test_weights_one_first_turn_success_among_fifteen_failures():
    w = group_weights([1.0] + [0.0] * 15, beta=0.1)
    z = math.exp(10) + 15                                   # sum_j exp(R_j / beta)
    assert w[0] == pytest.approx(16 * math.exp(10) / z) and w[0] == pytest.approx(15.989, abs=1e-3)
    assert w[1:] == pytest.approx([16 / z] * 15) and w[1] == pytest.approx(0.000726, abs=1e-6)
    assert w.sum() == pytest.approx(16)


def test_weights_of_the_digest_examples():
    w = group_weights([1.0, 0.9, 0.81] + [-0.4] * 13, beta=0.1)
    assert w[:3] == pytest.approx([10.544, 3.879, 1.577], abs=1e-3)
    assert w[3] == pytest.approx(9e-6, rel=0.05)
    # All wrong, half repeating themselves: 16 e^0 / (8 + 8 e^-4) and 16 e^-4 / (8 + 8 e^-4).
    w = group_weights([0.0] * 8 + [-0.4] * 8, beta=0.1)
    assert w[0] == pytest.approx(2 / (1 + math.exp(-4))) and w[0] == pytest.approx(1.964, abs=1e-3)
    assert w[8] == pytest.approx(2 * math.exp(-4) / (1 + math.exp(-4))) and w[8] == pytest.approx(0.036, abs=1e-3)
    # All correct, 8 at turn 1 and 8 at turn 2.
    w = group_weights([1.0] * 8 + [0.9] * 8, beta=0.1)
    assert (w[0], w[8]) == pytest.approx((2 / (1 + math.exp(-1)), 2 * math.exp(-1) / (1 + math.exp(-1))))


def test_all_fail_group_with_equal_returns_gets_weight_one():
    assert group_weights([-0.4] * 16, beta=0.1) == pytest.approx([1.0] * 16)
    assert group_weights([0.3], beta=0.1) == pytest.approx([1.0])


def test_large_returns_do_not_overflow():
    # exp(1000 / 0.01) overflows any float; the weights are 3 e^0 / (1 + e^-100), 3 e^-100 / (...), ~0.
    w = group_weights([1000.0, 999.0, -1000.0], beta=0.01)
    assert all(math.isfinite(x) for x in w)
    assert w[0] == pytest.approx(3.0, rel=1e-12) and w[1] == pytest.approx(3 * math.exp(-100), rel=1e-12)
    assert 0.0 <= w[2] < 1e-300


def test_drift_weights_diagnostics_and_turns():
    trajectories = (
        [feedback_traj("a", 0, ["The answer is C."], 1.0, solved=True)]
        + [feedback_traj("a", k, ["The answer is A."] * 5, 0.0) for k in range(1, 16)]
        + [feedback_traj("b", k, ["The answer is A."] * 5, -0.4) for k in range(4)]      # all fail, equal returns
        + [feedback_traj("c", k, ["The answer is C."], 1.0, solved=True) for k in range(2)]  # all succeed
    )
    examples, diag = build_weighted_examples(trajectories, AlgoConfig(name="drift"))
    weights = [e.weight for e in examples]
    z = math.exp(10) + 15
    assert weights[0] == pytest.approx(16 * math.exp(10) / z) and weights[1] == pytest.approx(16 / z)
    assert weights[16:] == pytest.approx([1.0] * 6)
    assert {e.turns for e in examples} == {"final"}
    assert (diag["groups_all_fail"], diag["groups_all_success"], diag["groups_mixed"]) == (1, 1, 1)
    assert diag["share_all_fail"] == pytest.approx(1 / 3)
    # ESS = (sum w)^2 / sum w^2 = 16^2 / (w_success^2 + 15 w_fail^2); 4 and 2 for uniform groups.
    expected_a = 256 / ((16 * math.exp(10) / z) ** 2 + 15 * (16 / z) ** 2)
    assert diag["group_ess"]["a"] == pytest.approx(expected_a, abs=1e-4)
    assert expected_a == pytest.approx(1.0014, abs=1e-4)
    assert (diag["group_ess"]["b"], diag["group_ess"]["c"]) == pytest.approx((4.0, 2.0))
    assert diag["group_sizes"] == {"2": 1, "4": 1, "16": 1}
    all_turns, _ = build_weighted_examples(trajectories, AlgoConfig(name="drift", trained_turns="all"))
    assert {e.turns for e in all_turns} == {"all"}
    sharper, _ = build_weighted_examples(trajectories[:16], AlgoConfig(name="drift", drift=DriftParams(beta=1.0)))
    assert sharper[0].weight == pytest.approx(16 * math.e / (math.e + 15))


def test_drift_needs_the_return_and_sft_final_does_not():
    trajectories = [feedback_traj("a", 0, ["The answer is A.", "The answer is C."], solved=True),
                    feedback_traj("a", 1, ["The answer is A."] * 5)]
    with pytest.raises(ConfigError, match=r"a#0 has no drift_return.*feedback"):
        build_weighted_examples(trajectories, AlgoConfig(name="drift"))
    examples, _ = build_weighted_examples(trajectories, AlgoConfig(name="sft-final"))  # SFT-5turn
    assert [(e.weight, e.turns) for e in examples] == [(1.0, "final"), (1.0, "final")]
    with pytest.raises(ConfigError, match="drift.beta"):
        build_weighted_examples([feedback_traj("a", 0, ["x"], 0.0)], AlgoConfig(name="drift", drift=DriftParams(beta=0.0)))


# ------------------------------------------------------------------------------------------- the loss's mask
def test_final_turn_mask_is_exactly_the_last_assistant_message(tokenizer):
    from turnrl.train.config import OptimConfig
    from turnrl.train.weighted import tokenize_examples

    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    t = feedback_traj("a", 0, ["The answer is A.", "Hmm. The answer is B.", "Let me think: the answer is C."], 0.81,
                      solved=True)
    full = tokenizer.apply_chat_template(t.messages, tokenize=True, return_dict=False)

    def span(i: int) -> tuple[int, int]:
        """Token span of message i: after the prefix with its generation prompt, through the <|im_end|>."""
        start = len(tokenizer.apply_chat_template(t.messages[:i], tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))
        end = start + len(tokenizer(t.messages[i]["content"], add_special_tokens=False)["input_ids"])
        assert full[end] == eot
        return start, end + 1

    spans = [span(i) for i in t.assistant_indices()]
    for turns, chosen in (("final", spans[-1:]), ("all", spans)):
        examples, _ = build_weighted_examples([t], AlgoConfig(name="drift", trained_turns=turns))
        (item,), _ = tokenize_examples(examples, tokenizer, [eot], OptimConfig())
        expected = [int(any(a <= p < b for a, b in chosen)) for p in range(len(full))]
        assert item.seq.input_ids == full
        assert item.seq.label_mask == expected
    final_tokens = [tok for tok, m in zip(full, item.seq.label_mask) if m]
    assert tokenizer.decode(final_tokens[-(spans[-1][1] - spans[-1][0]):]) == \
        "Let me think: the answer is C.<|im_end|>"


# ------------------------------------------------------------------------------------------------- multi@k
def test_multi_at_k_curve_and_plot(tmp_path):
    from turnrl.stages.compare import multi_at_k_curves, plot_multi_at_k

    def write(method: str, solved_at: list[int | None]):
        folder = tmp_path / "eval" / method
        folder.mkdir(parents=True)
        rows = [{"task_id": f"q{i}", "gold": "A", "runs": 1, "accuracy": float(s is not None),
                 **{f"multi@{k}": float(s is not None and s <= k) for k in (1, 2, 3)}}
                for i, s in enumerate(solved_at)]
        (folder / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("base", [1, None, None, 3])
    write("drift", [1, 2, 2, None])
    curves = multi_at_k_curves(tmp_path)
    assert curves["base"]["k"] == [1, 2, 3] and curves["base"]["mean"] == pytest.approx([0.25, 0.25, 0.5])
    assert curves["drift"]["mean"] == pytest.approx([0.25, 0.75, 0.75])
    assert curves["drift"]["se"][1] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert curves["base"]["correction_rate"] == pytest.approx((0.5 - 0.25) / 0.75)
    png = plot_multi_at_k(tmp_path, ["base", "drift"])
    assert png == tmp_path / "multi_at_k.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- training end to end
def test_train_drift_on_feedback_logs(tmp_path, tiny_model_dir):
    """`turnrl train --algo drift` on a scored feedback log: exit 0, diagnostics with the group statistics."""
    from turnrl.cli import main
    from turnrl.records import write_jsonl

    run = tmp_path / "run"
    trajectories = [feedback_traj("a", 0, ["The answer is C."], 1.0, solved=True),
                    feedback_traj("a", 1, ["The answer is A.", "The answer is A."], -0.25),
                    feedback_traj("b", 0, ["The answer is B.", "The answer is A."], 0.0),
                    feedback_traj("b", 1, ["The answer is D."] * 2, -0.25)]
    for t in trajectories:
        t.policy = {"model": str(tiny_model_dir)}
    write_jsonl(run / "scored" / "trajectories.jsonl", trajectories)
    assert main(["train", "--run_dir", str(run), "--algo", "drift", "--optim.batch_size", "2",
                 "--optim.precision", "fp32"]) == 0
    diag = json.loads((run / "train" / "drift" / "diagnostics.json").read_text())
    assert diag["turns"] == "final" and diag["groups_all_fail"] == 1 and diag["share_all_fail"] == 0.5
    assert (run / "train" / "drift" / "checkpoint" / "config.json").exists()


def test_run_with_rollout_refresh(tmp_path, tiny_model_dir):
    """`turnrl run` with refresh: the second stage trains, from the first stage's checkpoint, on conversations that
    checkpoint generated; every stage gets half the epochs; the refreshed policy is evaluated with multi@k."""
    from turnrl.cli import main

    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "choices": ["a", "b", "c"],
                                        "answer": "A"}) + "\n" for i in range(3)))
    run = tmp_path / "run"
    assert main(["run", "--run_dir", str(run), "--model", str(tiny_model_dir), "--dataset.name", str(data),
                 "--dataset.n_train", "2", "--dataset.n_test", "1", "--env", "feedback", "--env.max_turns", "2",
                 "--env.max_new_tokens", "4", "--rollout.samples", "2", "--rollout.temperatures", "[1.0]",
                 "--reward.weights", "{accuracy: 1.0}", "--algorithms", "[]", "--refresh.algorithms", "[drift]",
                 "--evaluate_base", "false", "--optim.batch_size", "2", "--optim.precision", "fp32",
                 "--generation.dtype", "float32", "--split", "test"]) == 0
    stage0 = run / "refresh" / "drift" / "round0" / "train" / "checkpoint"
    stage1 = run / "refresh" / "drift" / "round1" / "train" / "checkpoint"
    logged = [json.loads(line) for line in (run / "refresh" / "drift" / "round1" / "rollouts.jsonl").open()]
    assert len(logged) == 4 and {t["policy"]["model"] for t in logged} == {str(stage0)}
    assert all("drift_return" in json.loads(line)["rewards"]
               for line in (run / "refresh" / "drift" / "round1" / "scored.jsonl").open())
    info0, info1 = (json.loads((s / "turnrl_train.json").read_text()) for s in (stage0, stage1))
    assert info0["model"] == str(tiny_model_dir) and info1["model"] == str(stage0)
    assert info0["config"]["optim"]["epochs"] == info1["config"]["optim"]["epochs"] == 0.5
    metrics = json.loads((run / "eval" / "drift-refresh" / "metrics.json").read_text())
    assert metrics["model"] == str(stage1) and {"multi@1", "multi@2"} <= set(metrics["metrics"])
    assert "drift-refresh" in json.loads((run / "comparison.json").read_text())["methods"]
