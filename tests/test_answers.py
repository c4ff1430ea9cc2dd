"""The answer-reading rule on outputs of the kind SmolLM2 actually produces, against hand-written expectations."""

from __future__ import annotations

import json
from pathlib import Path

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


# The rules added after measuring the reader against hand labels of real final turns (docs/rewards.md, "How well the
# reader reads"): one case per rule, (final turn, options or None, expected letter, well formatted).
FUEL = ["solar", "volcanic", "hydrothermal", "geothermal"]
WEATHER = ["landscape", "scale", "evolution", "climate"]
RULE_CASES = [
    # other answer phrases
    ("The answer to this question is D.", None, "D", False),
    ('The answer to the question "Which trait of particles causes thermal energy?" is indeed A.', None, "A", False),
    ("The correct option is B.", None, "B", False),
    ("My final answer is C.", None, "C", False),
    ("The answer must be C.", None, "C", False),
    # a letter or an option's text called the answer
    ("D is the correct answer.", None, "D", False),
    ("Option B is correct because it fits.", None, "B", False),
    ("Carpet is the correct answer.", ["wood", "glass", "metal", "carpet"], "D", False),
    # rejected, negated and conditional statements
    ("The answer is A, which is incorrect because it doesn't", None, None, False),
    ("The answer is A is incorrect because it implies that", None, None, False),
    ("The answer is A. fluids is indeed incorrect.", ["fluids", "molecules", "plasmas", "gases"], None, False),
    ("The answer must be C. This answer is incorrect because cancer cells", None, None, False),
    ("The answer is D, which is not a valid option.", None, None, False),
    ("The correct answer is A. Sand cell.\n\nThe incorrect answer is C. Water cell.", None, "A", False),
    ("If the answer were B, the sky would be green. The answer is C.", None, "C", False),
    ("The answer is not A. The answer is B.", None, "B", False),
    ("The answer is A, which is the correct answer.", None, "A", True),  # calling it correct is no rejection
    # an option discussed at a line start is not stated; repeated as listed, it is
    ("A. Solar is a geothermal option, but not all geothermal energy comes from the sun.", FUEL, None, False),
    ("A. solar.", FUEL, "A", False),
    # a line that is only a letter or only an option's text
    ("C.", None, "C", False),
    ("(B)", None, "B", False),
    ("**D**", None, "D", False),
    ("C.\n\nPlants absorb carbon dioxide.", None, "C", False),
    ("A.\nB.\nC.", None, None, False),  # a list of letters
    ("Gas.", ["explosion", "energy", "gas", "job"], "C", False),
    # a first sentence that restates the question with an option's text
    ("The term for the long-term average of weather is indeed climate. Climate refers to", WEATHER, "D", False),
    ("Is the term for the long-term average of weather climate?", WEATHER, None, False),  # a question
    ("The most important factor is scale, not climate.", WEATHER, None, False),  # the option does not end it
    # self-corrections count for the last answer
    ("The answer is A. Actually, the answer is C.", None, "C", False),
    ("The answer is B. Wait, no: the answer is D.", None, "D", False),
    # a list after a full stop is still a list
    ("The answer is C. and D.", None, None, False),
]


@pytest.mark.parametrize("text,choices,letter,formatted", RULE_CASES)
def test_rules_from_the_hand_labels(text, choices, letter, formatted):
    parsed = extract_choice(text, "ABCD", choices=choices)
    assert parsed.letter == letter
    if letter is not None:
        assert parsed.well_formatted is formatted


CORPUS = Path(__file__).resolve().parent / "fixtures" / "answer_reader" / "turns.jsonl"


def test_reader_agrees_with_hand_labels_of_real_final_turns():
    """Precision >= 99 % and recall >= 97 % on at least 300 real SmolLM2 final turns labelled by hand
    (docs/rewards.md; scripts/answer_reader_agreement.py prints the table by answer form)."""
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 300 and len({r["text"] for r in rows}) == len(rows)
    read = [extract_choice(r["text"], r["letters"], r["canonical"], r["choices"]).letter for r in rows]
    answered = [(got, r["label"]) for got, r in zip(read, rows) if got is not None]
    labelled = [(got, r["label"]) for got, r in zip(read, rows) if r["label"] is not None]
    precision = sum(got == label for got, label in answered) / len(answered)
    recall = sum(got == label for got, label in labelled) / len(labelled)
    assert precision >= 0.99 and recall >= 0.97, (precision, recall)
