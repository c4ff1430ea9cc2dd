"""The clarifying-questions protocol of 000 App. F: the assistant asks one question, an LLM teacher answers.

Six messages (000 App. F, F.1):

1. teacher (hard-coded): the question and its options, "Ask me ONE specific question about any ONE of the options";
2. assistant: one clarifying question about one option;
3. teacher (an LLM): answers it in 2-3 sentences without giving the answer away;
4. assistant: reasons about the options step by step;
5. teacher (hard-coded): asks for the final answer;
6. assistant: "Answer is X" and its reasoning.

Decisions 000 leaves open:

- **Per-turn assistant instructions.** 000 lists, apart from the teacher's messages, an instruction for each
  assistant turn ("You are a student learning about this question. Ask ONE specific question ..."). They are
  delivered inside the user message that precedes the turn, after the teacher's text and a blank line. The policy
  then sees them at every turn, the logged ``messages`` are exactly what it was conditioned on (so every
  algorithm trains on the log unchanged), and any chat template renders them (several reject a second system
  message). The judge, which is given the complete conversation, sees them too.
- **The teacher's view.** The teacher is its own conversation: 000's teacher system prompt, then the roles swapped
  -- its hard-coded first message as an ``assistant`` message, the student's question as a ``user`` message
  followed (after a blank line) by 000's teacher instruction for that turn. It sees neither the assistant's
  system prompt nor the student's instructions. Its reply is stripped of surrounding whitespace.
- **Modes.** 000 runs this protocol in thinking mode only, with the prompts below verbatim. ``standard`` mode uses
  the same prompts with the sentences and clauses about <thinking> tags left out (not from 000).
- **Options.** The letters follow the question's options (A-D for 000's datasets). The final instruction's
  "[A: choice A, B: choice B, ...]" placeholder is filled in as "A: ..., B: ...".
"""

from __future__ import annotations

import re

from typing import Any

from turnrl.envs.base import Environment, Episode, EpisodeCoroutine, Prefix, TeacherTurn
from turnrl.envs.reasoning import letters_phrase
from turnrl.records import Task, TurnInfo
from turnrl.rewards.answers import has_thinking_tags

TEACHER_SYSTEM = (
    "You are an expert teacher helping a student learn through clarifying questions. Guide the student by presenting "
    "questions clearly, answering their clarifications helpfully, and encouraging deeper thinking. NEVER give away "
    "answers - let the student discover through questioning. Keep your responses concise and focused."
)
TEACHER_INSTRUCTION = (
    "You are a helpful teacher. Answer the student's clarification question in 2-3 sentences. Do NOT give the final "
    "answer yet. Just address their question directly. Keep your response to 50-60 words maximum."
)
_ASSISTANT_SYSTEM = {
    "thinking": (
        "You are a curious student learning through asking clarifying questions. Think carefully about what you need "
        "to understand, ask specific questions to clarify concepts, and use the teacher's guidance to arrive at "
        "well-reasoned answers. For thinking steps, use lowercase <thinking>your thoughts</thinking> tags exactly. "
        "For final answers, format as: Answer is X. <thinking>your reasoning</thinking> (lowercase thinking tags "
        "only)."
    ),
    "standard": (
        "You are a curious student learning through asking clarifying questions. Think carefully about what you need "
        "to understand, ask specific questions to clarify concepts, and use the teacher's guidance to arrive at "
        "well-reasoned answers. For final answers, format as: Answer is X. Then your reasoning."
    ),
}
_REASON_INSTRUCTION = {
    "thinking": (
        "You are a student. Based on the discussion so far, think step by step about all the options within "
        "lowercase <thinking></thinking> tags exactly. Write 2-3 sentences reasoning through each option "
        "systematically. Do NOT ask any questions. Keep your response to 50-60 words maximum."
    ),
    "standard": (
        "You are a student. Based on the discussion so far, think step by step about all the options. Write 2-3 "
        "sentences reasoning through each option systematically. Do NOT ask any questions. Keep your response to "
        "50-60 words maximum."
    ),
}
_FINAL_TEACHER = {
    "thinking": ("Great. Based on the discussion so far think and reason more and give your final answer. You must "
                 "give the answer first then explain your reasoning within thinking tags."),
    "standard": ("Great. Based on the discussion so far think and reason more and give your final answer. You must "
                 "give the answer first then explain your reasoning."),
}


def assistant_system(mode: str) -> str:
    return _ASSISTANT_SYSTEM[mode]


def first_teacher_turn(task: Task) -> str:
    """Turn 1, teacher (hard-coded)."""
    options = "\n".join(f"{letter}) {text}" for letter, text in zip(task.letters, task.choices))
    return (f"Question: {task.question}\n{options}\n\nAsk me ONE specific question about any ONE of the options "
            f"({letters_phrase(task.letters)}). What would you like to clarify?")


def question_instruction(task: Task) -> str:
    """Turn 1, assistant instruction."""
    return (f"You are a student learning about this question. Ask ONE specific question about any ONE of the options "
            f"({letters_phrase(task.letters)}). Be crisp and focused - ask only one clear question about a specific "
            "option. Do NOT give any answers or explanations. Just ask ONE simple question. Keep your response to "
            "50-60 words maximum.")


def reason_instruction(mode: str) -> str:
    """Turn 2, assistant instruction."""
    return _REASON_INSTRUCTION[mode]


def final_teacher_turn(mode: str) -> str:
    """Turn 3, teacher (hard-coded)."""
    return _FINAL_TEACHER[mode]


def final_instruction(task: Task, mode: str) -> str:
    """Turn 3, assistant instruction."""
    options = ", ".join(f"{letter}: {text}" for letter, text in zip(task.letters, task.choices))
    reasoning = ("Then show your reasoning in lowercase <thinking></thinking> tags exactly in 2-3 sentences."
                 if mode == "thinking" else "Then show your reasoning in 2-3 sentences.")
    return (f"You are a student providing your final answer. Recall the question is: {task.question} with options "
            f"{options}. You MUST first state your final answer in the format: 'Answer is X' where X is "
            f"{letters_phrase(task.letters)}. {reasoning} Keep your total response to 50-60 words maximum.")


def with_instruction(teacher_text: str, instruction: str) -> str:
    return f"{teacher_text}\n\n{instruction}" if teacher_text else instruction


def teacher_view(task: Task, student_question: str) -> list[dict[str, str]]:
    """What the teacher is asked to continue: its own system prompt, roles swapped."""
    return [{"role": "system", "content": TEACHER_SYSTEM},
            {"role": "assistant", "content": first_teacher_turn(task)},
            {"role": "user", "content": with_instruction(student_question.strip(), TEACHER_INSTRUCTION)}]


def own_questions(text: str, prompt: str) -> list[str]:
    """The sentences of ``text`` that end in '?' and do not appear in ``prompt`` (case and spacing ignored): the
    questions the assistant asks of its own."""
    def norm(x: str) -> str:
        return " ".join(x.lower().split())

    seen = norm(prompt)
    return [q for q in re.findall(r"[^.!?\n]*\?", text) if norm(q) and norm(q) not in seen]


def asks_own_question(text: str, prompt: str) -> bool:
    """Some sentence of ``text`` ends in '?' and does not appear in ``prompt`` (case and spacing ignored)."""
    return bool(own_questions(text, prompt))


class ClarifyEnv(Environment):
    name = "clarify"
    needs_teacher = True
    turns = 3

    def __init__(self, mode: str = "thinking", max_new_tokens: int = 96, final_max_new_tokens: int | None = None,
                 teacher_max_new_tokens: int = 96):
        if mode not in _ASSISTANT_SYSTEM:
            raise ValueError(f"mode must be standard or thinking, got {mode!r}")
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.final_max_new_tokens = final_max_new_tokens or max_new_tokens
        self.teacher_max_new_tokens = teacher_max_new_tokens

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "turns": self.turns, "max_new_tokens": self.max_new_tokens,
                "final_max_new_tokens": self.final_max_new_tokens,
                "teacher_max_new_tokens": self.teacher_max_new_tokens,
                "shuffle_options": self.shuffle_options}

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if not task.choices:
            raise ValueError(f"task {task.id}: the clarify environment needs a multiple-choice task")
        if prefix is None:
            messages = [{"role": "system", "content": assistant_system(self.mode)},
                        {"role": "user", "content": with_instruction(first_teacher_turn(task),
                                                                     question_instruction(task))}]
            turns: list[TurnInfo] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
        teacher: list[dict[str, Any]] = []
        for t in range(len(turns), self.turns):
            if messages[-1]["role"] == "assistant":
                if t == 1:
                    reply = yield TeacherTurn(messages=teacher_view(task, messages[-1]["content"]),
                                              max_new_tokens=self.teacher_max_new_tokens)
                    teacher.append({"tokens": reply.tokens, "truncated": reply.truncated})
                    messages.append({"role": "user", "content": with_instruction(reply.text.strip(),
                                                                                 reason_instruction(self.mode))})
                else:
                    messages.append({"role": "user", "content": with_instruction(final_teacher_turn(self.mode),
                                                                                 final_instruction(task, self.mode))})
            cap = self.final_max_new_tokens if t == self.turns - 1 else self.max_new_tokens
            yield from self.policy_turn(messages, turns, cap)
        return Episode(messages=messages, turns=turns, finish="done", meta={"teacher_turns": teacher} if teacher else {})

    metric_descriptions = {"asked_question": (True, "first turn asks a question of its own (not copied from the "
                                                    "prompt)"),
                           "thinking_asked": (True, "reasoning and final turns both use <thinking> tags")}

    def metrics(self, trajectory, task: Task) -> dict[str, float]:
        """``asked_question``: the first assistant turn asks a question of its own: a sentence ending in '?' that is
        not copied from the prompt (a small model often repeats "What would you like to clarify?"). Thinking mode
        also gets ``thinking_asked``: the two turns the protocol asks to think in tags (the reasoning and the final
        answer) both use them -- the common Thinking % asks it of every turn, the clarifying question too."""
        idx = trajectory.assistant_indices()
        out = {"asked_question": float(bool(idx) and asks_own_question(trajectory.messages[idx[0]]["content"],
                                                                      trajectory.messages[idx[0] - 1]["content"]))}
        if self.mode == "thinking":
            later = [trajectory.messages[i]["content"] for i in idx[1:]]
            out["thinking_asked"] = float(len(later) == 2 and all(has_thinking_tags(c) for c in later))
        return out
