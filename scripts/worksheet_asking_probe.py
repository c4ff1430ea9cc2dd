#!/usr/bin/env python
"""Can a logging prompt make the default model ask about the worksheet? Eleven logging contexts on 24 SciQ
questions (items 500-523 of the offline file, options shuffled), two samples each at temperatures 0.7 and 1.0,
32 tokens, fp32: how many first turns ask (the environment's test) and how many ask about the worksheet (the
test that earns the reveal). docs/worksheet.md holds the table this prints.

    .venv/bin/python scripts/worksheet_asking_probe.py
"""

from turnrl.envs.clarify import own_questions
from turnrl.envs.reasoning import letters_phrase, question_block
from turnrl.envs.worksheet import ABOUT_THE_WORKSHEET, first_turn, system_prompt
from turnrl.generation import BackendConfig, GenRequest, Sampling, make_generator
from turnrl.rollout import shuffled
from turnrl.tasks import _sciq

HELPFUL = "You are a helpful assistant."
WRITE = ("A student's teacher crossed out the wrong options on their worksheet. Write the one question you would ask "
         "the student to learn which options the teacher crossed out. Reply with the question only.")
NAME_IT = ("You are a helpful assistant. If the user has not said which options their teacher crossed out, ask: "
           "\"Which options did your teacher cross out?\" Otherwise state your final answer in the format: "
           "'The answer is X' where X is {letters}.")
EXAMPLE = ("You are a helpful assistant. You may ask the user one question before you answer, for example \"Which "
           "options did your teacher cross out?\". State your final answer in the format: 'The answer is X' where X "
           "is {letters}.")


def chat(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


CONTEXTS = {
    "environment's prompt + 'Before you answer, ask me which options my teacher crossed out.'":
        lambda t: chat(system_prompt(t.letters), first_turn(t, False, "letter")
                       + " Before you answer, ask me which options my teacher crossed out."),
    "environment's prompt + 'Don't answer yet: first ask me a question about my worksheet.'":
        lambda t: chat(system_prompt(t.letters), first_turn(t, False, "letter")
                       + " Don't answer yet: first ask me a question about my worksheet."),
    "system: do not answer yet, ask which options were crossed out":
        lambda t: chat("You are a helpful assistant. Do not answer the question yet. Reply with one short question "
                       "asking the user which options their teacher crossed out.", first_turn(t, False, "letter")),
    "system naming the question to ask":
        lambda t: chat(NAME_IT.format(letters=letters_phrase(t.letters)), first_turn(t, False, "letter")),
    "system naming the question to ask, told openings":
        lambda t: chat(NAME_IT.format(letters=letters_phrase(t.letters)), first_turn(t, True, "letter")),
    "system offering the question as an example":
        lambda t: chat(EXAMPLE.format(letters=letters_phrase(t.letters)), first_turn(t, False, "letter")),
    "question-writing request, no science question":
        lambda t: chat(HELPFUL, "I have a worksheet on which my teacher crossed out the wrong options of a question. "
                       "Ask me one short question to find out which options my teacher crossed out."),
    "question-writing request, with the science question":
        lambda t: chat(HELPFUL, question_block(t) + "\n\nMy teacher crossed out the wrong options of this question "
                       "on my worksheet. Ask me one short question to find out which options my teacher crossed out."),
    "'Write one short question to a student ...'":
        lambda t: chat(HELPFUL, "Write one short question to a student, asking which options their teacher crossed "
                       "out on their worksheet."),
    "'Write the one question you would ask the student ...'": lambda t: chat(HELPFUL, WRITE),
    "the same with the science question":
        lambda t: chat(HELPFUL, "A student shows you this worksheet question:\n\n" + question_block(t) + "\n\nTheir "
                       "teacher crossed out the wrong options. Write the one question you would ask the student to "
                       "learn which options the teacher crossed out. Reply with the question only."),
}


def main() -> None:
    pool = _sciq("offline", support=False)[500:524]
    policy = make_generator(BackendConfig(model="smollm2-135m-instruct", backend="hf", dtype="float32"))
    print("| logging context | asks | asks about the worksheet | an example of the latter |\n|---|---|---|---|")
    for name, context in CONTEXTS.items():
        requests = [GenRequest(messages=context(shuffled(t, i, i)), session=f"{i}/{k}",
                               sampling=Sampling(temperature=temperature, max_new_tokens=32, seed=10 * i + k))
                    for i, t in enumerate(pool) for k, temperature in enumerate([0.7, 1.0])]
        replies = [r.text for r in policy.generate(requests)]
        # A question copied from the prompt is not the model's own: the user's message is the prompt.
        asked = [own_questions(text, req.messages[-1]["content"]) for text, req in zip(replies, requests)]
        about = [text for text, qs in zip(replies, asked) if any(ABOUT_THE_WORKSHEET.search(q) for q in qs)]
        example = repr(about[0][:80]) if about else ""
        print(f"| {name} | {sum(map(bool, asked))} / {len(requests)} | {len(about)} / {len(requests)} | {example} |",
              flush=True)


if __name__ == "__main__":
    main()
