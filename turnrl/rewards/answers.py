"""Reading the final answer of a multiple-choice conversation. The rule lives here and only here.

The rule (docs/design.md section 6), applied to the final assistant turn:

1. An answer statement is "The answer is X", "Answer is X", "final answer is X", "correct answer is X" or
   "Answer: X", in any letter case, where X is an option letter written in capitals, optionally in parentheses,
   brackets, quotes or markdown bold ("The answer is (B)", 'The correct answer is "D."', "**Answer: C**"). A
   lowercase letter counts only in parentheses ("the answer is (b)"), because "the answer is a ..." is ordinary
   English. A hedge or pointer word may stand between ("The answer is indeed D", "The answer is option B").
   Where no letter follows, X may be the text of one option, as a person grading would read it: "The answer is
   carpet." names the option "carpet" (case and a leading article ignored; the option's text must end where a
   word ends, and the longest matching option wins, so "oxygen gas" is not read as "oxygen"). Small models
   state an option's text far more often than its letter. A line that repeats an option as the question listed
   it, letter and text ("A. function", "B) smell"), is a statement of that option too; a turn that lists several
   options so names several letters.
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
_HEDGE = r"(?i:(?:\s+(?:indeed|probably|likely|clearly|definitely|option|choice))*)"
_QUOTE = "\"'\u201c\u201d\u2018\u2019"
_STATEMENT = re.compile(
    _PHRASE + _HEDGE + r"[\s:]*(?:\*\*|__)?\s*[" + _QUOTE + r"]?\s*"
    r"(?:[\(\[]\s*(?P<wrapped>[A-Ja-j])\s*[\)\]]|(?P<bare>[A-J]))(?![A-Za-z0-9])"
    r"(?<!A(?=\s+(?!(?:because|since|as|is|and|or|which|for|with|this|that)\b)[a-z]))"  # "A volcano": an article
)
# "The answer is A, B, C, or D" / "A or B" / "A/B": a list of letters, not an answer.
# Where an option's text may begin after an answer phrase ("The answer is that enzymes ...").
_TEXT_START = re.compile(_PHRASE + _HEDGE + r"(?i:\s+that)?[\s:]*(?:\*\*|__)?\s*[" + _QUOTE + r"]?\s*")
# "A. function" at the start of a line: an option repeated as listed.
_LISTED_OPTION = re.compile(r"^[\s\*#>_`]*(?P<letter>[A-J])\s*[.):]\s+(?P<rest>.*)$", re.MULTILINE)
_ARTICLE = re.compile(r"(?i:(?:the|a|an)\s+)")
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


def _option_named(text: str, start: int, letters: list[str] | str, choices: list[str]) -> str | None:
    """The letter of the longest option whose text begins at ``start`` (a leading article skipped) and ends there
    as a word; None when none does."""
    best, best_len = None, 0
    for begin in {start, start + (m.end() - m.start() if (m := _ARTICLE.match(text, start)) else 0)}:
        rest = text[begin:].lower()
        for letter, choice in zip(letters, choices):
            option = " ".join(choice.lower().split()).rstrip(".")
            if option and rest.startswith(option) and len(option) > best_len and \
                    (len(rest) == len(option) or not rest[len(option)].isalnum()):
                best, best_len = letter, len(option)
    return best


def extract_choice(text: str, letters: list[str] | str = "ABCD", canonical: str = "the answer is",
                   choices: list[str] | None = None) -> ChoiceAnswer:
    """Read the answer letter of a final turn by the rule in this module's docstring; ``choices`` (the options'
    texts, in letter order) lets a statement name an option by its text."""
    valid = set(letters)
    named: list[str] = []
    lettered = set()
    for m in _STATEMENT.finditer(text):
        lettered.add(m.start())
        letters_here = [(m.group("wrapped") or m.group("bare")).upper()]
        end = m.end()
        while (tail := _LIST_TAIL.match(text, end)) is not None:
            letters_here.append(tail.group("next"))
            end = tail.end()
        for letter in letters_here:
            if letter in valid and letter not in named:
                named.append(letter)
    if choices:
        options = dict(zip(letters, choices))
        for m in _LISTED_OPTION.finditer(text):
            letter = m.group("letter")
            if letter in options and _option_named(text, m.start("rest"), [letter], [options[letter]]) and \
                    letter not in named:
                named.append(letter)
        for m in _TEXT_START.finditer(text):
            if m.start() in lettered:
                continue
            letter = _option_named(text, m.end(), letters, choices)
            if letter is not None and letter not in named:
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
