"""The tool environment's turn logic, driven by the real rollout engine with a scripted policy and the real
sandbox."""

from __future__ import annotations

import sys

import pytest

from turnrl.chat import encode_conversation, render
from turnrl.envs import EnvConfig, make_env
from turnrl.envs.base import Prefix
from turnrl.envs.tool import LIMIT_NOTE, STOP, ToolEnv, python_blocks
from turnrl.generation import GenResult, Sampling
from turnrl.records import Task, Trajectory, TurnInfo
from turnrl.rollout import Job, run_episodes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

TASK = Task(id="t1", source="gsm8k", question="Janet has 16 eggs, eats 3 and bakes with 4. She sells the rest "
            "at $2 each. How much does she make?", answer="18")


class ScriptedPolicy:
    """A policy whose k-th turn in a conversation is script[k]; it honours stop strings as the hf backend does
    (generation ends right after the first stop string, which stays in the text)."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = scripts
        self.requests = []

    def generate(self, requests, desc=None):
        results = []
        for request in requests:
            self.requests.append(request)
            question = request.messages[0]["content"]
            turn = sum(m["role"] == "assistant" for m in request.messages)
            text = self.scripts[question][turn]
            ends = [text.find(s) + len(s) for s in request.sampling.stop if s in text]
            if ends:
                results.append(GenResult(text=text[: min(ends)], tokens=10, finish="stop_string"))
            else:
                results.append(GenResult(text=text, tokens=10, finish="stop"))
        return results


@pytest.fixture(scope="module")
def env():
    tool_env = ToolEnv(max_tool_calls=3, max_new_tokens=64, tool_timeout=3.0)
    yield tool_env
    tool_env.close()


def roll(env, scripts: dict[str, list[str]], tasks: list[Task] | None = None, prefixes=None):
    tasks = tasks or [TASK]
    policy = ScriptedPolicy(scripts)
    jobs = [Job(id=f"{t.id}#0", task=t, sampling=Sampling(), prefix=(prefixes or {}).get(t.id)) for t in tasks]
    return run_episodes(env, jobs, policy, run_code=env.run_code), policy


def test_tool_call_observation_then_boxed_answer_ends(env):
    scripts = {TASK.question: [
        # The model goes on to imagine the output and an answer; the stop string cuts it at the block's end.
        "Let me compute.\n```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\nThe output is 20, so \\boxed{20}.",
        "She makes \\boxed{18} dollars.",
    ]}
    (episode,), policy = roll(env, scripts)
    assert [m["role"] for m in episode.messages] == ["user", "assistant", "tool", "assistant"]
    assert episode.messages[0]["content"] == TASK.question  # zero-shot: the question alone
    assert episode.messages[1]["content"] == "Let me compute.\n```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\n"
    assert episode.messages[2]["content"] == "```output\n18\n```"  # (16 - 3 - 4) * 2, run in the sandbox
    assert episode.messages[3]["content"] == "She makes \\boxed{18} dollars."
    assert episode.finish == "done"
    assert [r.sampling.stop for r in policy.requests] == [STOP, STOP]
    assert all(r.sampling.max_new_tokens == 64 for r in policy.requests)
    assert episode.turns == [TurnInfo(tokens=10, truncated=False)] * 2
    calls = episode.meta["tool"]["calls"]
    assert [c["status"] for c in calls] == ["ok"]
    assert episode.meta["tool"]["sandbox"]  # the isolation the executions got


def test_state_carries_across_calls_by_replay(env):
    scripts = {TASK.question: [
        "```python\nrest = 16 - 3 - 4\n```\n",
        "```python\nprint('replayed cells are silent')\nrest * 2\n```\n",
        "\\boxed{18}",
    ]}
    (episode,), _ = roll(env, scripts)
    tool = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert tool == ["```output\nResult is not defined\n```",  # nothing printed (003's message)
                    "```output\nreplayed cells are silent\n18\n```"]  # x from the first call, 9 * 2


def test_errors_come_back_as_their_last_line_and_count(env):
    scripts = {TASK.question: [
        "```python\nprint(eggs_sold * 2)\n```\n",
        "```python\neggs_sold = 9\nprint(eggs_sold * 2)\n```\n",
        "The answer is \\boxed{18}.",
    ]}
    (episode,), _ = roll(env, scripts)
    tool = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert tool == ["```output\nNameError: name 'eggs_sold' is not defined\n```", "```output\n18\n```"]
    traj = Trajectory(id="x", task_id=TASK.id, group_id="g", messages=episode.messages, turns=episode.turns,
                      finish=episode.finish, meta=episode.meta)
    metrics = env.metrics(traj, TASK)
    assert metrics == {"tool_calls": 2.0, "used_tool": 1.0, "tool_limit": 0.0, "boxed": 1.0, "exec_error": 0.5}
    traj.meta = {}  # an older log without the per-call record: read from the observations
    assert env.metrics(traj, TASK) == metrics


def test_tool_limit_ends_the_conversation(env):
    code = "```python\nprint(1)\n```\n"
    scripts = {TASK.question: [code] * 10}
    (episode,), policy = roll(env, scripts)
    assert episode.finish == "tool_limit"
    assert [m["role"] for m in episode.messages] == ["user"] + ["assistant", "tool"] * 3
    assert episode.messages[-1]["content"] == "```output\n1\n```\n" + LIMIT_NOTE
    assert len(policy.requests) == 3  # no turn after the third call
    traj = Trajectory(id="x", task_id=TASK.id, group_id="g", messages=episode.messages, turns=episode.turns,
                      finish=episode.finish, meta=episode.meta)
    assert env.metrics(traj, TASK)["tool_limit"] == 1.0 and env.metrics(traj, TASK)["boxed"] == 0.0


def test_turns_without_a_tool_call_end_the_conversation(env):
    questions = {"q-plain": "I think it is 18 dollars.",
                 "q-both": "So \\boxed{18}, checked by\n```python\nprint(18)\n```\n",  # boxed wins (003)
                 "q-output": "```python\nprint(3 * 6)\n```output"}  # the model starts the output itself
    tasks = [Task(id=q, source="gsm8k", question=q, answer="18") for q in questions]
    scripts = {q: [text, "\\boxed{18}"] for q, text in questions.items()}
    episodes, _ = roll(env, scripts, tasks)
    plain, both, output = episodes
    assert [m["role"] for m in plain.messages] == ["user", "assistant"] and plain.finish == "done"
    assert [m["role"] for m in both.messages] == ["user", "assistant"]
    assert both.messages[1]["content"] == "So \\boxed{18}, checked by\n```python\nprint(18)\n```\n"
    assert [m["role"] for m in output.messages] == ["user", "assistant", "tool", "assistant"]
    assert output.messages[1]["content"] == "```python\nprint(3 * 6)\n"  # "```output" removed; block unclosed
    assert output.messages[2]["content"] == "```output\n18\n```"


def test_branching_from_a_logged_prefix_replays_its_code(env):
    prefix = Prefix(messages=[{"role": "user", "content": TASK.question},
                              {"role": "assistant", "content": "```python\nsold = 16 - 3 - 4\nprint(sold)\n```"},
                              {"role": "tool", "content": "```output\n9\n```"}],
                    turns=[TurnInfo(tokens=12, truncated=False)])
    scripts = {TASK.question: [None, "```python\nprint(sold * 2)\n```\n", "\\boxed{18}"]}
    (episode,), _ = roll(env, scripts, prefixes={TASK.id: prefix})
    assert episode.messages[:3] == prefix.messages
    assert episode.messages[4]["content"] == "```output\n18\n```"
    assert len(episode.meta["tool"]["calls"]) == 2 and episode.meta["tool"]["calls"][0]["from_prefix"]


def test_pending_executions_run_together(env):
    tasks = [Task(id=f"q{i}", source="gsm8k", question=f"question {i}", answer=str(i)) for i in range(4)]
    scripts = {t.question: [f"```python\nprint({i} * 10)\n```\n", f"\\boxed{{{i}}}"] for i, t in enumerate(tasks)}
    batches = []
    original = env.run_code

    def recording(programs):
        batches.append(len(programs))
        return original(programs)

    env.run_code = recording
    try:
        episodes, _ = roll(env, scripts, tasks)
    finally:
        del env.run_code
    assert batches == [4]  # one round: all four conversations' executions at once
    assert [e.messages[2]["content"] for e in episodes] == [f"```output\n{i * 10}\n```" for i in range(4)]


def test_fatal_blocks_are_not_replayed(env):
    """A block that exits or hangs the interpreter would poison every later replay; it is left out of them."""
    scripts = {TASK.question: ["```python\nimport os\nbase = 7\nos._exit(9)\n```\n",
                               "```python\nbase = 9\nwhile True:\n    pass\n```\n",
                               "```python\nprint(base * 2)\n```\n",
                               "\\boxed{0}"]}
    (episode,), _ = roll(env, scripts)
    assert [m["content"] for m in episode.messages if m["role"] == "tool"] == [
        "```output\nProcess exited with code 9\n```", "```output\nTimeout Error\n```",
        "```output\nNameError: name 'base' is not defined\n```\n" + LIMIT_NOTE]
    assert [c["status"] for c in episode.meta["tool"]["calls"]] == ["exited", "timeout", "error"]
    assert episode.finish == "tool_limit"
    # Branching after the first two calls replays neither of them either (read from the logged observations).
    prefix = Prefix(messages=episode.messages[:5], turns=episode.turns[:2])
    scripts = {TASK.question: [None, None, "```python\nbase = 4\nprint(base)\n```\n", "\\boxed{4}"]}
    (branch,), _ = roll(env, scripts, prefixes={TASK.id: prefix})
    assert branch.messages[6]["content"].startswith("```output\n4\n```")


def test_instruction_and_registry():
    tool_env = make_env(EnvConfig(name="tool", max_tool_calls=4, max_new_tokens=256, tool_timeout=2.5,
                                  tool_instruction="Use python."))
    assert isinstance(tool_env, ToolEnv)
    assert tool_env.settings() == {"name": "tool", "max_tool_calls": 4, "max_new_tokens": 256, "tool_timeout": 2.5,
                                   "instruction": "Use python."}
    assert tool_env.first_turn(TASK) == TASK.question + "\n\nUse python."
    with pytest.raises(Exception, match="max_tool_calls"):
        make_env(EnvConfig(name="tool", max_tool_calls=0))


def test_python_blocks():
    text = "a\n```python\nx = 1\n```\ntext\n```python  \ny = 2\n```\n```python\nunclosed = 3"
    assert python_blocks(text) == ["x = 1", "y = 2", "unclosed = 3"]
    assert python_blocks("```\nnot python\n```") == []


def test_observations_are_masked_out_of_training(tokenizer):
    """In SmolLM2's template the observation is a tool turn; the assistant spans cover only the model's text."""
    messages = [{"role": "user", "content": TASK.question},
                {"role": "assistant", "content": "```python\nprint(9 * 2)\n```"},
                {"role": "tool", "content": "```output\n18\n```"},
                {"role": "assistant", "content": "\\boxed{18}"}]
    assert "<|im_start|>tool\n```output\n18\n```<|im_end|>" in render(tokenizer, messages)
    eot = tokenizer.convert_tokens_to_ids(["<|im_end|>"])
    encoded = encode_conversation(tokenizer, messages, eot)
    trained = [tokenizer.decode(encoded.input_ids[s:e]) for s, e in encoded.assistant_spans]
    assert trained == ["```python\nprint(9 * 2)\n```<|im_end|>", "\\boxed{18}<|im_end|>"]


def make_traj(tid: str, group: str, messages: list[dict[str, str]], correct: bool, finish: str = "done",
              calls: list[str] | None = None) -> Trajectory:
    meta = {"tool": {"calls": [{"status": s} for s in calls]}} if calls is not None else {}
    return Trajectory(id=tid, task_id=group, group_id=group, messages=messages, finish=finish, meta=meta,
                      rewards={"accuracy": float(correct)})


def test_filters_count_each_reason(tokenizer):
    from turnrl.filters import REASONS, ToolFilterConfig, filter_tool_trajectories

    q = {"role": "user", "content": "What is 9 * 2?"}
    code = {"role": "assistant", "content": "```python\nprint(9 * 2)\n```"}
    ok = {"role": "tool", "content": "```output\n18\n```"}
    bug = {"role": "tool", "content": "```output\nNameError: name 'x' is not defined\n```"}
    final = {"role": "assistant", "content": "\\boxed{18}"}
    wrong = {"role": "assistant", "content": "\\boxed{17}"}
    long_text = {"role": "assistant", "content": "```python\n" + "x = 1\n" * 400 + "print(x)\n```"}
    trajectories = [
        make_traj("a", "g1", [q, code, ok, final], True, calls=["ok"]),             # kept
        make_traj("b", "g1", [q, final], True),                                      # no tool call
        make_traj("c", "g1", [q, code, ok, code, ok], False, finish="tool_limit",    # tool limit
                  calls=["ok", "ok"]),
        make_traj("d", "g1", [q, {"role": "assistant", "content": "```python\nprint(x)\n```"}, bug, final], True,
                  calls=["error"]),                                                  # error in a correct one
        make_traj("e", "g1", [q, {"role": "assistant", "content": "```python\nprint(x)\n```"}, bug, wrong], False,
                  calls=["error"]),                                                  # kept: a loser may be buggy
        make_traj("f", "g1", [q, long_text, ok, final], True, calls=["ok"]),        # over length
        make_traj("g", "g1", [q, code, ok, wrong], False, calls=["ok"]),            # same first turn as a
        make_traj("h", "g2", [q, code, ok, wrong], False, calls=["ok"]),            # kept: another group
        make_traj("i", "g2", [q, {"role": "assistant", "content": "```python\nprint(y)\n```"}, bug, final],
                  True),                                                             # no record: read the text
    ]
    result = filter_tool_trajectories(trajectories, ToolFilterConfig(max_tokens=512), tokenizer=tokenizer)
    assert [t.id for t in result.kept] == ["a", "e", "h"]
    assert result.counts == {"input": 9, "no_tool_call": 1, "tool_limit": 1, "error_in_correct": 2,
                             "over_length": 1, "duplicate_first_turn": 1, "kept": 3}
    assert sum(result.counts[r] for r in REASONS) + result.counts["kept"] == result.counts["input"]
    everything = filter_tool_trajectories(trajectories, ToolFilterConfig(
        require_tool_call=False, drop_tool_limit=False, drop_error_in_correct=False, max_tokens=0,
        dedup_first_turn=False))
    assert len(everything.kept) == 9


def test_filters_need_scores_and_a_tokenizer():
    from turnrl.errors import ConfigError, InputError
    from turnrl.filters import ToolFilterConfig, filter_tool_trajectories

    unscored = Trajectory(id="u", task_id="t", group_id="t", messages=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "```python\nprint(x)\n```"},
        {"role": "tool", "content": "```output\nNameError: name 'x' is not defined\n```"},
        {"role": "assistant", "content": "\\boxed{1}"}])
    with pytest.raises(InputError, match="trajectory u: no 'accuracy' reward"):
        filter_tool_trajectories([unscored], ToolFilterConfig(max_tokens=0))
    with pytest.raises(ConfigError, match="tokenizer"):
        filter_tool_trajectories([unscored], ToolFilterConfig())


def test_at_the_tool_limit_the_last_output_is_read_as_003_reads_it(env):
    """003 extracts the answer from the text after the last assistant marker, which at the tool-call limit holds
    the final observation: a last program that prints the right number is right; a turn's own answer still wins."""
    from turnrl.rewards import final_answer

    def ended(last_output: str, final_turn: str = "```python\nprint(16 - 3 - 4)\n```\n") -> Trajectory:
        messages = [{"role": "user", "content": TASK.question}, {"role": "assistant", "content": final_turn},
                    {"role": "tool", "content": f"```output\n{last_output}\n```\n{LIMIT_NOTE}"}]
        return Trajectory(id="x", task_id=TASK.id, group_id="g", messages=messages,
                          turns=[TurnInfo(5, False)], finish="tool_limit")

    assert final_answer(ended("18"), TASK)["correct"] is True
    assert final_answer(ended("9"), TASK)["correct"] is False
    assert final_answer(ended("Timeout Error"), TASK)["correct"] is False
    assert final_answer(ended("9", "So \\boxed{18}."), TASK)["answer"] == "18"  # the turn's boxed answer wins
    done = Trajectory(id="y", task_id=TASK.id, group_id="g", messages=[
        {"role": "user", "content": TASK.question}, {"role": "assistant", "content": "```python\nprint(18)\n```\n"},
        {"role": "tool", "content": "```output\n18\n```"}, {"role": "assistant", "content": "I am not sure."}],
        turns=[TurnInfo(5, False)] * 2, finish="done")
    assert final_answer(done, TASK)["correct"] is False  # a final turn without an answer is read alone


WORKED = [{"role": "user", "content": "7 * 8 + 5 ="},
          {"role": "assistant", "content": "```python\nprint(7 * 8 + 5)\n```\n"},
          {"role": "tool", "content": "```output\n61\n```"}, {"role": "assistant", "content": "\\boxed{61}"}]


def test_behaviour_turns_are_shown_to_the_logging_policy_and_not_logged(env, tmp_path):
    """rollout.behaviour_turns: the logging policy sees the worked example before the conversation's own messages
    (its own turns counted after it); the logged conversation, which the trained policy is evaluated on, holds
    only its own messages, and its record names what the policy was shown."""
    from turnrl.generation import BackendConfig
    from turnrl.records import read_trajectories
    from turnrl.rollout import build_jobs, log_rollouts

    task = Task(id="a/1", source="arithmetic", question="19 * 5 + 6 =", answer="101")
    seen = []

    class Policy(ScriptedPolicy):
        def generate(self, requests, desc=None):
            seen.extend(r.messages for r in requests)
            own = [len([m for m in r.messages if m["role"] == "assistant"]) - 2 for r in requests]
            return [GenResult(text=["```python\nprint(19 * 5 + 6)\n```\n", "\\boxed{101}"][k], tokens=5,
                              finish="stop") for k in own]

    jobs = build_jobs([task], env.settings(), samples=1, temperatures=[0.0], top_p=1.0, top_k=0, seed=0)
    out = tmp_path / "log.jsonl"
    log_rollouts(out, env, jobs, BackendConfig(), chunk_size=4, desc="t", generator=Policy({}),
                 behaviour_turns=WORKED)
    assert [m["role"] for m in seen[0]] == ["user", "assistant", "tool", "assistant", "user"]
    assert seen[0][:4] == WORKED and seen[0][4]["content"] == "19 * 5 + 6 ="
    assert seen[1][5:] == [{"role": "assistant", "content": "```python\nprint(19 * 5 + 6)\n```\n"},
                           {"role": "tool", "content": "```output\n101\n```"}]
    (logged,) = read_trajectories(out)
    assert [m["role"] for m in logged.messages] == ["user", "assistant", "tool", "assistant"]
    assert logged.messages[0]["content"] == "19 * 5 + 6 =" and logged.messages[-1]["content"] == "\\boxed{101}"
    assert logged.policy["behaviour_turns"] == WORKED and "behaviour_prompt" not in logged.policy


@pytest.mark.parametrize("turns, message", [
    ([{"role": "system", "content": "x"}, *WORKED], r"behaviour_turns\[0\].*role user, assistant, tool"),
    (WORKED[:3], "the last message is a tool message"),
    ([{"role": "user", "text": "7 * 8 ="}], r"behaviour_turns\[0\]"),
])
def test_malformed_behaviour_turns_are_refused_by_name(turns, message, tmp_path, capsys):
    from turnrl.cli import main
    from turnrl.errors import ConfigError
    from turnrl.rollout import check_behaviour_turns

    with pytest.raises(ConfigError, match=message):
        check_behaviour_turns(turns)
    config = tmp_path / "c.yaml"
    import yaml
    config.write_text(yaml.safe_dump({"rollout": {"behaviour_turns": turns}}))
    assert main(["simulate", "--config", str(config), "--run_dir", str(tmp_path / "run")]) == 2
    assert "rollout.behaviour_turns" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
