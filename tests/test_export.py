"""``turnrl export``: each format read back by the library that consumes it, the DPO pairs equal to what
``train --algo.name dpo`` trains on, and the randomized rounding's expected counts against s * r."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from turnrl.cli import main
from turnrl.layout import SCORED
from turnrl.records import Trajectory, write_jsonl
from turnrl.stages.export import repeat_counts, rounded_count

SYSTEM = {"role": "system", "content": "Answer with a letter."}
OBSERVATION = {"role": "user", "content": "Why might the other options be wrong?"}


def conversation(question: str, thought: str, final: str) -> list[dict[str, str]]:
    """The reasoning environment's shape: question, an explanation turn, the observation, the final answer."""
    return [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": thought}, OBSERVATION,
            {"role": "assistant", "content": final}]


# (group, reward, accuracy, thought, final)
LOG = [
    ("q1", 0.9, 1.0, "Whales breathe air.", "B"),
    ("q1", 0.1, 0.0, "Sharks are big.", "A"),
    ("q1", 0.5, 0.0, "Both swim.", "A or B"),
    ("q2", 0.2, 0.0, "Ice melts at 0 C.", "A"),
    ("q2", 0.8, 1.0, "Water boils at 100 C.", "C"),
    ("q3", 0.6, 1.0, "Jupiter.", "A"),
    ("q3", 0.6, 1.0, "Jupiter is largest.", "A"),  # tied: no pair
    ("q4", 0.3, 0.0, "Alone.", "D"),  # a single trajectory: no pair
]
QUESTIONS = {"q1": "Which is a mammal? A) shark B) whale", "q2": "Water boils at? A) 0 C B) 50 C C) 100 C",
             "q3": "Largest planet? A) Jupiter B) Mars", "q4": "Pick D. A) B) C) D)"}


def trajectories(model: str = "") -> list[Trajectory]:
    out, seen = [], {}
    for group, reward, accuracy, thought, final in LOG:
        k = seen.setdefault(group, 0)
        seen[group] += 1
        out.append(Trajectory(id=f"{group}#{k}", task_id=group, group_id=group, sample=k,
                              messages=conversation(QUESTIONS[group], thought, final), reward=reward,
                              rewards={"accuracy": accuracy}, policy={"model": model} if model else {}))
    return out


@pytest.fixture()
def run(tmp_path) -> Path:
    write_jsonl(tmp_path / "run" / SCORED, trajectories())
    return tmp_path / "run"


def load(path: Path) -> list[dict]:
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train").to_list()


def export(run: Path, *flags: str) -> int:
    return main(["export", "--run_dir", str(run), *flags])


def test_sft_every_trajectory_or_those_above_a_reward(run):
    assert export(run, "--format", "sft") == 0
    assert load(run / "export" / "sft.jsonl") == [{"messages": t.messages} for t in trajectories()]
    assert export(run, "--format", "sft", "--min_reward", "0.6", "--output", "good.jsonl") == 0
    assert load(run / "good.jsonl") == [{"messages": t.messages} for t in trajectories() if t.reward >= 0.6]


def test_tools_of_an_imported_log_are_written_back(tmp_path):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {}}}]
    row = {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
           "tools": tools, "reward": 1.0}
    (tmp_path / "log.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(tmp_path / "log.jsonl")]) == 0
    for fmt in ("sft", "openai"):
        assert export(tmp_path / "run", "--format", fmt) == 0
        assert load(tmp_path / "run" / "export" / f"{fmt}.jsonl") == [{"messages": row["messages"], "tools": tools}]


def expected_dpo(context: str = "history") -> list[dict]:
    """Best vs worst final answer of each group with distinct rewards (by hand): after each side's own
    conversation (history), or to the original question (question)."""
    rows = []
    for best, worst in ((0, 1), (4, 3)):  # q1: 0.9 vs 0.1; q2: 0.8 vs 0.2
        messages = [conversation(QUESTIONS[g], thought, final) for g, _, _, thought, final in LOG]
        start = 2 if context == "history" else -1
        rows.append({"prompt": messages[best][:2], "chosen": messages[best][start:],
                     "rejected": messages[worst][start:]})
    return rows


def test_dpo_is_best_vs_worst_final_answer_after_the_middle_turns(run):
    assert export(run, "--format", "dpo") == 0
    rows = load(run / "export" / "dpo.jsonl")
    assert rows == expected_dpo("history")
    assert rows[0]["chosen"][1] == {"role": "user", "content": "Why might the other options be wrong?"}
    assert export(run, "--format", "dpo", "--algo.dpo.context", "question") == 0
    assert load(run / "export" / "dpo.jsonl") == expected_dpo("question")


def test_dpo_export_is_what_train_dpo_trains_on(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    write_jsonl(run / SCORED, trajectories(str(tiny_model_dir)))
    assert main(["train", "--run_dir", str(run), "--algo.name", "dpo", "--optim.batch_size", "2",
                 "--optim.max_length", "256", "--optim.precision", "fp32"]) == 0
    trained = [json.loads(line) for line in (run / "train" / "dpo" / "pairs.jsonl").read_text().splitlines()]
    assert export(run, "--format", "dpo") == 0
    exported = load(run / "export" / "dpo.jsonl")
    assert len(exported) == len(trained) == 2
    for row, pair in zip(exported, trained):
        assert row["prompt"] + row["chosen"] == pair["chosen"]["messages"]
        assert row["prompt"] + row["rejected"] == pair["rejected"]["messages"]


def test_m_dpo_pairs_carry_the_whole_conversation_after_the_prompt(run):
    assert export(run, "--format", "dpo", "--algo.name", "m-dpo", "--metadata", "true") == 0
    rows = load(run / "export" / "dpo.jsonl")
    # correct-vs-incorrect (003): q1 has one correct and two incorrect trajectories, q2 one of each; q3 is all
    # correct and q4 alone.
    assert sorted(r["group_id"] for r in rows) == ["q1", "q2"]
    log = {t.id: t for t in trajectories()}
    for r in rows:
        chosen, rejected = r["id"].split(">")
        assert log[chosen].rewards["accuracy"] == 1.0 and log[rejected].rewards["accuracy"] == 0.0
        assert r["prompt"] == log[chosen].messages[:2]
        assert r["chosen"] == log[chosen].messages[2:] and r["rejected"] == log[rejected].messages[2:]


def test_kto_from_m_kto_pairs_and_by_threshold(run):
    assert export(run, "--format", "kto", "--algo.preference.pairing", "best-vs-worst", "--metadata", "true") == 0
    rows = load(run / "export" / "kto.jsonl")
    log = {t.id: t for t in trajectories()}
    assert {r["id"]: r["label"] for r in rows} == {"q1#0": True, "q1#1": False, "q2#1": True, "q2#0": False}
    for r in rows:
        assert r["prompt"] == log[r["id"]].messages[:2] and r["completion"] == log[r["id"]].messages[2:]
    assert export(run, "--format", "kto", "--kto_threshold", "0.5") == 0
    rows = load(run / "export" / "kto.jsonl")
    assert [r["label"] for r in rows] == [t.reward >= 0.5 for t in trajectories()]
    assert set(rows[0]) == {"prompt", "completion", "label"}


def test_randomized_rounding_has_the_expected_count_s_times_r():
    """Over many seeds, each trajectory's mean number of copies is s * r (computed here, independently), and
    every count is floor(s r) or ceil(s r)."""
    scale, seeds = 2.5, 3000
    log = trajectories()
    totals = {t.id: 0 for t in log}
    for seed in range(seeds):
        counts = repeat_counts(log, scale, seed)
        for t in log:
            expected = scale * t.reward
            assert counts[t.id] in (math.floor(expected), math.ceil(expected))
            totals[t.id] += counts[t.id]
    for t in log:
        expected = scale * t.reward
        frac = expected - math.floor(expected)
        se = math.sqrt(frac * (1 - frac) / seeds)
        assert abs(totals[t.id] / seeds - expected) < 4 * se + 1e-9, (t.id, totals[t.id] / seeds, expected)
    # The draws depend on (seed, id) only: the order of the log does not change them.
    assert repeat_counts(log[::-1], scale, 7) == repeat_counts(log, scale, 7)
    assert [rounded_count(2.0, 0.999), rounded_count(2.3, 0.29), rounded_count(2.3, 0.31)] == [2, 3, 2]


def test_openai_file_repeats_each_trajectory_by_its_count(run):
    assert export(run, "--format", "openai", "--scale", "3", "--seed", "11", "--metadata", "true") == 0
    rows = load(run / "export" / "openai.jsonl")
    counts = repeat_counts(trajectories(), 3.0, 11)
    assert {i: sum(r["id"] == i for r in rows) for i in counts} == counts
    log = {t.id: t for t in trajectories()}
    assert all(r["messages"] == log[r["id"]].messages for r in rows)
    # Without metadata, exactly OpenAI's chat fine-tuning shape.
    assert export(run, "--format", "openai", "--scale", "3", "--seed", "11") == 0
    assert all(set(r) == {"messages"} for r in load(run / "export" / "openai.jsonl"))


def test_negative_rewards_are_refused_or_clipped(tmp_path, capsys):
    run = tmp_path / "run"
    log = trajectories()
    log[1].reward = -0.4
    write_jsonl(run / SCORED, log)
    assert export(run, "--format", "openai") == 2
    assert "q1#1: reward -0.4 is negative" in capsys.readouterr().err
    assert not (run / "export" / "openai.jsonl").exists()
    assert export(run, "--format", "openai", "--negative_rewards", "clip", "--metadata", "true") == 0
    assert "q1#1" not in {r["id"] for r in load(run / "export" / "openai.jsonl")}


def test_nothing_to_export_keeps_the_previous_file(run, capsys):
    assert export(run, "--format", "sft") == 0
    before = (run / "export" / "sft.jsonl").read_bytes()
    assert export(run, "--format", "sft", "--min_reward", "2.0") == 2
    assert "nothing to export" in capsys.readouterr().err
    assert (run / "export" / "sft.jsonl").read_bytes() == before
    assert export(run, "--format", "dpo", "--algo.name", "m-kto") == 2
    assert "--format kto" in capsys.readouterr().err


def test_step_dpo_needs_its_branch_rollouts(run, capsys):
    assert export(run, "--format", "dpo", "--algo.name", "step-dpo") == 2
    assert "branches/scored.jsonl: missing" in capsys.readouterr().err


def test_trl_dpo_trainer_trains_a_step_on_the_export(run, tmp_path, tiny_model_dir):
    pytest.importorskip("trl")
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    assert export(run, "--format", "dpo") == 0
    dataset = datasets.load_dataset("json", data_files=str(run / "export" / "dpo.jsonl"), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=256, bf16=False)
    trainer = DPOTrainer(model=str(tiny_model_dir), args=args, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    logged = trainer.state.log_history[0]
    assert math.isfinite(logged["logps/chosen"]) and math.isfinite(logged["logps/rejected"])
