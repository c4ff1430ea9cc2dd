"""Option order carries no reward: each conversation shows its own drawn order, retries re-order, every reading of
an answer follows the order the policy saw, and a constant letter scores 1/k (checked against the recorded
orders, computed independently here)."""

from __future__ import annotations

from dataclasses import replace

from turnrl.envs import EnvConfig, make_env
from turnrl.generation import BackendConfig, make_generator
from turnrl.records import Task
from turnrl.rewards import cheap_components, final_answer
from turnrl.rollout import build_jobs, episode_to_trajectory, run_episodes

PLANTS = Task(id="mc/1", source="sciq", question="Which gas do plants absorb for photosynthesis?",
              choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")


def trajectories(env, tasks, samples, seed, policy):
    settings = env.settings()
    jobs = build_jobs(tasks, settings, samples, [0.7], 1.0, 0, seed)
    episodes = run_episodes(env, jobs, policy)
    return jobs, [episode_to_trajectory(j, e, settings, {}, 0.0) for j, e in zip(jobs, episodes)]


def test_each_sample_sees_its_own_order_and_the_gold_moves_with_its_option():
    env = make_env(EnvConfig(name="reasoning", max_turns=1))
    jobs, trajs = trajectories(env, [PLANTS], 24, 0, make_generator(BackendConfig(backend="constant",
                                                                                   model="always-b")))
    orders = [tuple(t.option_orders[-1]) for t in trajs]
    assert len(set(orders)) > 6  # 24 draws from 24 orders
    gold = PLANTS.choices.index("carbon dioxide")
    assert sorted(o.index(gold) for o in orders) == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6  # balanced over samples
    for job, traj in zip(jobs, trajs):
        shown = job.task
        assert shown.choices[shown.letters.index(shown.answer)] == "carbon dioxide"
        assert f"{shown.answer}. carbon dioxide" in traj.messages[1]["content"]  # the prompt lists the shown order
        gold_first = shown.choices[1] == "carbon dioxide"  # "always-b" is right where the gold is shown second
        assert cheap_components(traj, PLANTS)["accuracy"] == float(gold_first)
        assert final_answer(traj, PLANTS)["answer"] == "B"  # the stated letter, as the policy wrote it


def test_a_constant_letter_scores_one_in_k():
    """400 questions whose gold is always A in the dataset's order: with the order fixed, always-a scores 100 %;
    shuffled, it scores what the recorded orders say (gold shown first): exactly 1/4, the positions balanced."""
    tasks = [replace(PLANTS, id=f"mc/{i}", choices=["carbon dioxide", "oxygen", "nitrogen", "helium"], answer="A")
             for i in range(400)]
    always_a = make_generator(BackendConfig(backend="constant", model="always-a"))
    fixed = make_env(EnvConfig(name="reasoning", max_turns=1, shuffle_options=False))
    _, plain = trajectories(fixed, tasks, 1, 1234, always_a)
    assert all(t.option_orders == [] for t in plain)
    assert sum(cheap_components(t, tasks[0])["accuracy"] for t in plain) == 400
    shuffled = make_env(EnvConfig(name="reasoning", max_turns=1))
    _, trajs = trajectories(shuffled, tasks, 1, 1234, always_a)
    accuracy = [cheap_components(t, tasks[0])["accuracy"] for t in trajs]
    expected = [float(t.option_orders[-1][0] == 0) for t in trajs]  # the gold (option 0) shown first
    assert accuracy == expected
    assert sum(accuracy) == 100  # the gold's position is balanced over the questions: exactly 1/4
    # The rest of each order is drawn: the three other options' orders are spread over their 6 arrangements.
    rest = {tuple(j for j in t.option_orders[-1] if j != 0) for t in trajs}
    assert len(rest) == 6


def test_evaluation_orders_are_fixed_by_question_and_seed():
    settings = make_env(EnvConfig(name="reasoning")).settings()
    tasks = [replace(PLANTS, id=f"mc/{i}") for i in range(50)]
    once = [j.task.choices for j in build_jobs(tasks, settings, 1, [0.0], 1.0, 0, 1234)]
    again = [j.task.choices for j in build_jobs(tasks, settings, 1, [0.0], 1.0, 0, 1234)]
    other = [j.task.choices for j in build_jobs(tasks, settings, 1, [0.0], 1.0, 0, 1235)]
    assert once == again and once != other


def test_each_retry_shows_a_new_order_and_the_verifier_reads_it():
    """always-a in the feedback environment: turn t is right exactly where its own order shows the gold first,
    and each retry's message lists the options in that turn's order."""
    env = make_env(EnvConfig(name="feedback", max_turns=5))
    tasks = [replace(PLANTS, id=f"mc/{i}") for i in range(60)]
    _, trajs = trajectories(env, tasks, 1, 0, make_generator(BackendConfig(backend="constant", model="always-a")))
    gold = PLANTS.choices.index("carbon dioxide")
    solved_later = 0
    for traj in trajs:
        orders = traj.option_orders
        assert len(orders) == len(traj.assistant_indices())
        first_right = next((t for t, o in enumerate(orders, start=1) if o[0] == gold), None)
        assert traj.meta["solved_at"] == first_right
        assert (traj.finish == "solved") == (first_right is not None)
        for k, i in enumerate(traj.assistant_indices()[1:], start=1):
            listed = [PLANTS.choices[j] for j in orders[k]]
            assert "\n".join(f"{'ABCD'[n]}. {c}" for n, c in enumerate(listed)) in traj.messages[i - 1]["content"]
        solved_later += first_right is not None and first_right > 1
        assert cheap_components(traj, PLANTS)["accuracy"] == float(first_right is not None)
    assert solved_later > 0  # a retry can be right only through its own order


def test_a_recorded_order_that_is_not_one_per_turn_or_not_an_order_is_named(tmp_path):
    import json

    import pytest

    from turnrl.errors import InputError
    from turnrl.records import read_trajectories

    base = {"id": "t#0", "task_id": "mc/1", "group_id": "mc/1", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is A."}]}
    path = tmp_path / "log.jsonl"
    for orders, message in (([[0, 1, 2, 3], [1, 0, 2, 3]], "option_orders' has 2 orders for 1 assistant turns"),
                            ([[0, 1, 1, 3]], r"option_orders\[0\]' is \[0, 1, 1, 3\]; expected an order")):
        path.write_text(json.dumps({**base, "option_orders": orders}) + "\n")
        with pytest.raises(InputError, match=f"log.jsonl:1: field '{message}"):
            read_trajectories(path)
