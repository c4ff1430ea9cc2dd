"""Reading the final answer of a multiple-choice conversation. The rule lives here and only here.

The rule (DESIGN.md section 8), applied to the final assistant turn:

1. An answer statement is "The answer is X", "Answer is X", "final answer is X", "correct answer is X" or
   "Answer: X", in any letter case, where X is an option letter written in capitals, optionally in parentheses,
   brackets, quotes or markdown bold ("The answer is (B)", 'The correct answer is "D."', "**Answer: C**"). A
   lowercase letter counts only in parentheses ("the answer is (b)"), because "the answer is a ..." is ordinary
   English.
2. X must be one of the question's option letters and must not run into a word ("The answer is An ..." is
   not A). "A" followed by a lowercase word is the article ("The answer is A volcano"), unless that word is a
   connective such as "because" or "and". A literal "The answer is X" (the prompt's placeholder) is no answer.
3. The turn's answer is the single letter its statements name. Statements naming two or more different letters
   ("The answer is A ... The answer is C", or a list: "The answer is A, B, C, or D") make the turn *ambiguous*:
   it scores as wrong and is counted as such. Repeating the same letter is fine.
4. The turn is *well-formatted* when it has an answer and its first statement is the canonical
   "The answer is X" (000's required format; "Answer is X" in the clarify protocol) at the start of the turn,
   before any other text but whitespace and markdown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PHRASE = r"(?i:(?:\b(?:the\s+)?(?:final\s+|correct\s+)?answer\s+is|\banswer\s*:))"
_QUOTE = "\"'\u201c\u201d\u2018\u2019"
_STATEMENT = re.compile(
    _PHRASE + r"[\s:]*(?:\*\*|__)?\s*[" + _QUOTE + r"]?\s*"
    r"(?:[\(\[]\s*(?P<wrapped>[A-Ja-j])\s*[\)\]]|(?P<bare>[A-J]))(?![A-Za-z0-9])"
    r"(?<!A(?=\s+(?!(?:because|since|as|is|and|or|which|for|with|this|that)\b)[a-z]))"  # "A volcano": an article
)
# "The answer is A, B, C, or D" / "A or B" / "A/B": a list of letters, not an answer.
_LIST_TAIL = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b)\s*(?:or\s+|and\s+)?[\(\[]?\s*(?P<next>[A-J])(?![A-Za-z0-9])")
_CANONICAL_START = {
    "the answer is": re.compile(r"^[\s\*#>_`]*(?:\*\*)?the\s+answer\s+is\b", re.IGNORECASE),
    "answer is": re.compile(r"^[\s\*#>_`]*(?:\*\*)?answer\s+is\b", re.IGNORECASE),
}


@dataclass(frozen=True)
class ChoiceAnswer:
    letter: str | None
    """The answer, or None when there is none or it is ambiguous."""
    status: str
    """``ok``, ``ambiguous`` (several different letters) or ``none``."""
    well_formatted: bool
    letters_named: tuple[str, ...] = ()


def extract_choice(text: str, letters: list[str] | str = "ABCD", canonical: str = "the answer is") -> ChoiceAnswer:
    """Read the answer letter of a final turn by the rule in this module's docstring."""
    valid = set(letters)
    named: list[str] = []
    for m in _STATEMENT.finditer(text):
        letters_here = [(m.group("wrapped") or m.group("bare")).upper()]
        end = m.end()
        while (tail := _LIST_TAIL.match(text, end)) is not None:
            letters_here.append(tail.group("next"))
            end = tail.end()
        for letter in letters_here:
            if letter in valid and letter not in named:
                named.append(letter)
    if not named:
        return ChoiceAnswer(None, "none", False)
    if len(named) > 1:
        return ChoiceAnswer(None, "ambiguous", False, tuple(named))
    first = _STATEMENT.search(text)
    starts_canonically = bool(_CANONICAL_START[canonical].match(text)) and first is not None and \
        text[: first.start()].strip(" \t\n*#>_`") == ""
    return ChoiceAnswer(named[0], "ok", starts_canonically, tuple(named))


THINK_OPEN, THINK_CLOSE = "<thinking>", "</thinking>"


def has_thinking_tags(text: str) -> bool:
    """The turn uses the thinking tags (000's Thinking %: the model outputs <thinking> tags)."""
    return THINK_OPEN in text.lower()


def thinking_compliant(text: str, final: bool = False) -> bool:
    """Well-formed tags: at least one <thinking>...</thinking> block, every open tag closed, none nested; in the
    final turn, an answer statement outside the tags (000: "The final answer must be outside the thinking tags")."""
    lower = text.lower()
    depth, blocks, outside = 0, 0, []
    pos = 0
    for m in re.finditer(r"</?thinking>", lower):
        if m.group() == THINK_OPEN:
            if depth:
                return False
            outside.append(text[pos: m.start()])
            depth = 1
        else:
            if not depth:
                return False
            depth, blocks = 0, blocks + 1
        pos = m.end()
    if depth or not blocks:
        return False
    outside.append(text[pos:])
    return not final or _STATEMENT.search(" ".join(outside)) is not None
