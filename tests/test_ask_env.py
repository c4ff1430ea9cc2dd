"""The ask environment: the scripted user reveals the marked option only when asked, with a scripted policy."""

from __future__ import annotations

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
