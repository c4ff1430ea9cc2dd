"""The ask environment: the scripted user reveals the marked option only when asked, with a scripted policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from turnrl.envs import EnvConfig, make_env
from turnrl.envs.ask import NO_REVEAL
from turnrl.records import Task, Trajectory
from turnrl.rewards import final_answer

from test_feedback_env import ScriptedPolicy, roll, roles

PLANTS = Task(id="mc/1", source="sciq", question="Which gas do plants absorb for photosynthesis?",
              choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")
ROCKS = Task(id="mc/2", source="sciq", question="What kind of rock forms from cooled lava?",
             choices=["igneous", "sedimentary", "metamorphic", "fossil"], answer="A")
STARS = Task(id="mc/3", source="sciq", question="What is the closest star to Earth?",
             choices=["Sirius", "the Sun", "Vega", "Polaris"], answer="B")


def finished(env, tasks, scripts):
    episodes = roll(env, tasks, ScriptedPolicy(scripts))
    return [Trajectory(id=f"{t.id}#0", task_id=t.id, group_id=t.id, messages=e.messages, turns=e.turns,
                       env=env.settings()) for t, e in zip(tasks, episodes)]


def test_the_user_reveals_the_marked_option_only_to_a_question():
    env = make_env(EnvConfig(name="ask", max_new_tokens=16))
    trajs = finished(env, [PLANTS, ROCKS, STARS], {
        "plants": ["Which option did your teacher mark?", "The answer is C."],
        "lava": ["The answer is B.", "unused"],                      # answers at once: one turn, a guess
        "closest star": ["Let me think about stars.", "The answer is D."],  # neither: asked to answer, nothing said
    })
    asked, guessed, stalled = trajs
    assert roles(asked.messages) == ["system", "user", "assistant", "user", "assistant"]
    assert asked.messages[3]["content"] == 'My teacher marked C ("carbon dioxide"). What is your final answer?'
    assert roles(guessed.messages) == ["system", "user", "assistant"]
    assert stalled.messages[3]["content"] == NO_REVEAL and "Sun" not in stalled.messages[3]["content"]
    outcomes = [(final_answer(t, task)["correct"], env.metrics(t, task)) for t, task in zip(trajs, [PLANTS, ROCKS, STARS])]
    assert outcomes == [(True, {"asked_question": 1.0, "turns_used": 2.0}),
                        (False, {"asked_question": 0.0, "turns_used": 1.0}),
                        (False, {"asked_question": 0.0, "turns_used": 2.0})]


def test_a_question_copied_from_the_prompt_reveals_nothing():
    env = make_env(EnvConfig(name="ask"))
    # The prompt has no question mark of its own, but a copy of the options with '?' is not a question to the user.
    traj, = finished(env, [PLANTS], {"plants": ["Which gas do plants absorb for photosynthesis?", "The answer is C."]})
    assert traj.messages[3]["content"] == NO_REVEAL


def test_the_answer_may_name_the_revealed_option_by_its_text():
    env = make_env(EnvConfig(name="ask"))
    traj, = finished(env, [STARS], {"closest star": ["Can you tell me what was marked?", "The answer is the Sun."]})
    assert final_answer(traj, STARS)["correct"]


def test_open_answer_tasks_are_refused():
    env = make_env(EnvConfig(name="ask"))
    with pytest.raises(ValueError, match="multiple-choice"):
        next(env.episode(Task(id="g/1", source="gsm8k", question="1+1?", answer="2")))


def test_explored_conversations_open_with_a_scripted_question_and_the_policy_answers():
    from turnrl.envs.ask import EXPLORATORY_QUESTIONS
    from turnrl.rollout import build_jobs, run_episodes
    from turnrl.stages.simulate import _exploratory_jobs

    env = make_env(EnvConfig(name="ask", max_new_tokens=16, shuffle_options=False))
    copies = [replace(PLANTS, id=f"mc/1-{i}") for i in range(100)]
    jobs = build_jobs(copies, env.settings(), samples=2, temperatures=[0.7], top_p=1.0, top_k=0, seed=0)
    explored_jobs, to_trajectory = _exploratory_jobs(env, jobs, share=0.5, seed=0)
    explored = [j for j in explored_jobs if j.prefix is not None]
    # Each job is chosen by its own draw: the count is Binomial(200, 0.5), within 4 SE of 100.
    assert 100 - 4 * 7.1 < len(explored) < 100 + 4 * 7.1
    again, _ = _exploratory_jobs(env, jobs[:50], share=0.5, seed=0)  # the choice does not depend on the other jobs
    assert [j.prefix is not None for j in again] == [j.prefix is not None for j in explored_jobs[:50]]
    policy = ScriptedPolicy({"plants": ["The answer is A.", "The answer is C."]})
    episodes = run_episodes(env, explored_jobs, policy)
    trajectories = [to_trajectory(j, e, env.settings(), {}, 0.0) for j, e in zip(explored_jobs, episodes)]
    for job, traj in zip(explored_jobs, trajectories):
        if job.prefix is None:  # the logging policy's own turn: it guessed A and the conversation ended
            assert roles(traj.messages) == ["system", "user", "assistant"] and "scripted_turns" not in traj.meta
            continue
        assert traj.messages[2]["content"] in EXPLORATORY_QUESTIONS and traj.meta["scripted_turns"] == [0]
        assert traj.messages[3]["content"].startswith("My teacher marked C")
        assert traj.messages[4]["content"] == "The answer is C." and final_answer(traj, PLANTS)["correct"]
        assert env.metrics(traj, PLANTS) == {"asked_question": 1.0, "turns_used": 2.0}
    # The policy was asked for the explored conversations' final turns only (after the reveal).
    assert len(policy.requests) == len(jobs)
    assert sum(r.messages[-1]["content"].startswith("My teacher marked") for r in policy.requests) == len(explored)


def test_environments_without_an_exploratory_action_refuse_explore():
    from turnrl.errors import ConfigError
    from turnrl.rollout import build_jobs
    from turnrl.stages.simulate import _exploratory_jobs

    env = make_env(EnvConfig(name="reasoning"))
    jobs = build_jobs([PLANTS, ROCKS, STARS], env.settings(), samples=4, temperatures=[0.7], top_p=1.0, top_k=0,
                      seed=0)
    with pytest.raises(ConfigError, match="has no scripted exploratory action"):
        _exploratory_jobs(env, jobs, share=1.0, seed=0)
