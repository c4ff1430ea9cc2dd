"""The answer-reading rule on outputs of the kind SmolLM2 actually produces, against hand-written expectations."""

from __future__ import annotations

import pytest

from turnrl.records import Task, Trajectory
from turnrl.rewards import cheap_components
from turnrl.rewards.answers import extract_choice, thinking_compliant

# (final turn, expected letter or None, expected status, well formatted)
CASES = [
    ("The answer is D. abrasion.\n\nThe question is asking for the main way that wind causes erosion.", "D", "ok", True),
    ("The answer is B.", "B", "ok", True),
    ("**The answer is C.** Plants need light.", "C", "ok", True),
    ("The answer is (b) because it is", "B", "ok", True),
    ("The answer is: B", "B", "ok", True),
    ("The answer is 'B'", "B", "ok", True),
    ("the answer is a process that needs oxygen.", None, "none", False),
    ("The answer is A volcanic eruption that cools the planet.", None, "none", False),
    ("The answer is A because volcanic ash blocks the sun.", "A", "ok", True),
    ("The answer is X.", None, "none", False),  # the prompt's placeholder
    ("The answer is E.", None, "none", False),  # not an option of a four-option question
    ("The answer is An apple.", None, "none", False),
    ("A. The answer is B. The process of fermentation is a form of anaerobic digestion.", "B", "ok", False),
    ("I'm glad I could help.\n\nThe final answer is C. Valence electrons.", "C", "ok", False),
    ('The correct answer is "D."', "D", "ok", False),
    ("**Answer: C**", "C", "ok", False),
    ("The answer is D.\n\nThe answer is D.\n\nThe answer is D.", "D", "ok", True),
    ("The answer is A.\n\nThe answer is A.\n\nThe answer is B.", None, "ambiguous", False),
    ("The answer is B. Adaptation. ... The answer is A. Evolution is a process", None, "ambiguous", False),
    ("The answer is the answer is the answer is", None, "none", False),
    ("The answer is A, B, C, or D.", None, "ambiguous", False),  # listing the options is not answering
    ("The answer is B or C.", None, "ambiguous", False),
    ("The answer is C/D", None, "ambiguous", False),
    ("The answer is B, as explained above.", "B", "ok", True),
    ("This question requires a deep understanding of volcanic ash. Here's a step-by-step breakdown of the", None,
     "none", False),
    ("<thinking>Plants absorb carbon dioxide.</thinking> The answer is B.", "B", "ok", False),
]


@pytest.mark.parametrize("text,letter,status,formatted", CASES)
def test_extract_choice(text, letter, status, formatted):
    parsed = extract_choice(text, "ABCD")
    assert (parsed.letter, parsed.status, parsed.well_formatted) == (letter, status, formatted)


def test_clarify_protocol_uses_answer_is():
    assert extract_choice("Answer is C. <thinking>it fits</thinking>", "ABCD", canonical="answer is").well_formatted
    assert not extract_choice("Answer is C.", "ABCD").well_formatted  # 000's reasoning protocol wants "The answer is"


def test_more_options():
    assert extract_choice("The answer is E.", "ABCDE").letter == "E"


@pytest.mark.parametrize("text,final,ok", [
    ("<thinking>Light drives photosynthesis.</thinking> Plants use light.", False, True),
    ("The answer is B. <thinking>Carbon dioxide is absorbed.</thinking>", True, True),
    ("<thinking>The answer is B.</thinking>", True, False),  # the final answer must be outside the tags
    ("<thinking>unfinished reasoning", False, False),
    ("No tags at all.", False, False),
    ("<thinking>a <thinking>b</thinking></thinking>", False, False),
])
def test_thinking_compliance(text, final, ok):
    assert thinking_compliant(text, final=final) is ok


def test_components_of_a_conversation():
    task = Task(id="q", source="sciq", question="?", answer="B", choices=["w", "x", "y", "z"])
    traj = Trajectory(id="q#0", task_id="q", group_id="q", messages=[
        {"role": "user", "content": "?"}, {"role": "assistant", "content": "The answer is B."},
        {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Maybe the answer is C."},
        {"role": "user", "content": "Final?"}, {"role": "assistant", "content": "The answer is B. Because."}])
    assert cheap_components(traj, task) == {"accuracy": 1.0, "turn_accuracy": pytest.approx(2 / 3), "format": 1.0,
                                            "thinking": 0.0}


# Real SmolLM2 final turns (SciQ, 3-turn protocol) with the options they answered, read by hand.
TEXT_CASES = [
    ("The answer is indeed D.", ["a", "b", "c", "fossil"], "D", True),
    ("The correct answer is indeed D. rotational winds.\n\nThe reason is", ["global winds", "trade winds", "jet",
                                                                             "rotational winds"], "D", False),
    ("The answer is that enzymes are involved in this process.", ["hormones", "enzymes", "lipids", "water"], "B",
     False),
    ("The answer is carpet.", ["wood", "glass", "metal", "carpet"], "D", False),
    ("The answer is the Sun, because", ["Moon", "Sun", "Mars", "Venus"], "B", False),
    ("The answer is oxygen gas.", ["oxygen", "oxygen gas", "helium", "neon"], "B", False),  # the longest option
    ("The answer is oxygenated blood.", ["oxygen", "nitrogen", "helium", "neon"], None, False),  # not a whole word
    ("The answer is B. carpet", ["wood", "glass", "metal", "carpet"], "B", True),  # the letter decides
    ("The answer is carpet. The answer is B.", ["wood", "glass", "metal", "carpet"], None, False),  # two answers
    ("The answer is likely to be a combination of protons and neutrons.", ["protons", "neutrons", "electrons",
                                                                           "quarks"], None, False),
    ("The answer is option C", ["a", "b", "c", "d"], "C", True),
    ("A. function", ["function", "smell", "color", "example"], "A", False),
    ("A. solvent  I'm glad you're happy with the answer.", ["mixture", "solvent", "solution", "gas"], None,
     False),  # A is not "solvent": a letter and text that disagree are no answer
    ("1. The answer is A. function.\n2. The answer is A. function.\n3. The answer is B. smell.",
     ["function", "smell", "color", "example"], None, False),
    ("A. function\nB. smell\nC. color\nD. example", ["function", "smell", "color", "example"], None, False),
]


@pytest.mark.parametrize("text,choices,letter,formatted", TEXT_CASES)
def test_answer_named_by_its_text_or_after_a_hedge(text, choices, letter, formatted):
    parsed = extract_choice(text, "ABCD", choices=choices)
    assert (parsed.letter, parsed.well_formatted) == (letter, formatted)
