"""Reading the final answer of a multiple-choice conversation. The rule lives here and only here.

The rule (docs/design.md section 6; measured against hand labels of real final turns in docs/rewards.md), applied
to the final assistant turn:

1. An answer statement names an option in one of these ways:
   a. An answer phrase and a letter: "The answer is X", "Answer is X", "final answer is X", "correct answer is X",
      "Answer: X", "The answer to this question is X" (the question may be quoted between), "My answer is X",
      "The answer must be X" (or would, should, will be), "The correct option is X" (or choice, term, any one
      word after correct, right, best or final), in any letter case, where X is an option letter written in
      capitals, optionally in parentheses, brackets, quotes or markdown bold ("The answer is (B)", 'The correct
      answer is "D."', "**Answer: C**"). A lowercase letter counts only in parentheses ("the answer is (b)"),
      because "the answer is a ..." is ordinary English. A hedge or pointer word may stand between ("The answer
      is indeed D", "The answer is option B").
   b. A letter called the answer: "D is the correct answer", "Option B is correct".
   c. An answer phrase and an option's text, where no letter follows: "The answer is carpet." names the option
      "carpet" (case and a leading article ignored; the option's text must end where a word ends, and the longest
      matching option wins, so "oxygen gas" is not read as "oxygen"). Likewise an option's text called the
      answer ("Carpet is the correct answer"). Small models state an option's text far more often than its letter.
   d. A line that repeats an option as the question listed it, letter and text ("A. function", "B) smell"),
      where the option's text ends the line or a clause; a line that goes on with the option as the subject of a
      sentence ("A. Solar is a geothermal option, but ...") discusses the option and states nothing. A turn that
      lists several options so names several letters.
   e. A line that is only a letter ("C.", "(B)", "**D**", "Option A"), unless it stands beside lettered lines
      (a list of options), or only an option's text ("Gas.").
   f. Where nothing above names an option: a first sentence that restates the question and ends in one option's
      text after "is" or "are" ("The term for the long-term average of weather is indeed climate.", "... is
      known as endothermy."). A question ("Is it climate?") states nothing.
2. X must be one of the question's option letters and must not run into a word ("The answer is An ..." is
   not A). "A" followed by a lowercase word is the article ("The answer is A volcano"), unless that word is a
   connective such as "because" or "and". A literal "The answer is X" (the prompt's placeholder) is no answer.
3. Rejected, negated and conditional statements name nothing: "The answer is A, which is incorrect", "The answer
   is A is wrong", "The answer is B, which is the incorrect answer", "The answer must be C. This answer is
   incorrect ...", "The incorrect answer is C", "If the answer were B, ...", "The answer is not A". A letter that
   a turn states and rejects is not its answer wherever else the turn states it.
4. A self-correction counts for its last answer: a statement in a sentence that opens with a correction
   ("Actually, ...", "Wait, ...", "Sorry, ...", "Correction: ...", "On second thought, ...") withdraws the answers
   stated before it.
5. The turn's answer is the single letter its statements name. Statements naming two or more different letters
   ("The answer is A ... The answer is C", or a list: "The answer is A, B, C, or D", "C. and D.") make the turn
   *ambiguous*: it scores as wrong and is counted as such. Repeating the same letter is fine.
6. The turn is *well-formatted* when it has an answer and its first counted statement is the canonical
   "The answer is X" (000's required format; "Answer is X" in the clarify protocol) at the start of the turn,
   before any other text but whitespace and markdown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An answer phrase (1a). "The answer to the question "...?" is" may quote the question.
_QUESTION_REF = r"\s+to\s+(?:this|the)\s+question(?:\s*\"[^\"\n]{0,400}\"|\s*\u201c[^\u201d\n]{0,400}\u201d)?"
_PHRASE = (
    r"(?i:(?:\b(?:the\s+|my\s+)?(?:final\s+|correct\s+|right\s+)?answer(?:" + _QUESTION_REF + r")?"
    r"\s+(?:is|(?:would|must|should|will)\s+be)"
    r"|\b(?:the\s+)?(?:correct|right|best|final)\s+[a-z]+\s+is"  # "the correct option/choice/term is"
    r"|\banswer\s*:))"
)
_HEDGE = r"(?i:(?:\s+(?:indeed|probably|likely|clearly|definitely|also|option|choice))*)"
_QUOTE = "\"'\u201c\u201d\u2018\u2019"
_STATEMENT = re.compile(
    _PHRASE + _HEDGE + r"[\s:]*(?:\*\*|__)?\s*[" + _QUOTE + r"]?\s*"
    r"(?:[\(\[]\s*(?P<wrapped>[A-Ja-j])\s*[\)\]]|(?P<bare>[A-J]))(?![A-Za-z0-9])"
    r"(?<!A(?=\s+(?!(?:because|since|as|is|and|or|which|for|with|this|that)\b)[a-z]))"  # "A volcano": an article
)
# "The answer is A, B, C, or D" / "A or B" / "A/B" / "C. and D.": a list of letters, not an answer.
_LIST_TAIL = re.compile(
    r"\s*(?:,|/|&|\.?\s*\bor\b|\.?\s*\band\b)\s*(?:or\s+|and\s+)?[\(\[]?\s*(?P<next>[A-J])(?![A-Za-z0-9])")
# Where an option's text may begin after an answer phrase ("The answer is that enzymes ...").
_TEXT_START = re.compile(_PHRASE + _HEDGE + r"(?i:\s+that)?[\s:]*(?:\*\*|__)?\s*[" + _QUOTE + r"]?\s*")
# "... is the correct answer" (1b, 1c): what ends just before it is called the answer.
_CALLED_ANSWER = re.compile(
    r"[\s" + _QUOTE + r"*)\]]*\s+(?i:is|would\s+be)\s+(?i:(?:indeed|also|clearly|definitely)\s+)*"
    r"(?i:(?:the\s+)?(?:correct|right|best|final)(?:\s+(?:answer|option|choice))?|the\s+answer)\b")
_LETTER_BEFORE = re.compile(r"(?:(?i:\b(?:option|choice)\s+)|\b)[\(\[]?(?P<letter>[A-J])[\)\]]?$")
# "A. function" at the start of a line: an option repeated as listed (1d).
_LISTED_OPTION = re.compile(r"^[\s\*#>_`]*(?P<letter>[A-J])\s*[.):]\s+(?P<rest>.*)$", re.MULTILINE)
_CLAUSE_END = re.compile(r"[ \t" + _QUOTE + r"*_`]*(?:$|\n|[.,;:!)\-\u2013\u2014(])")
# A line that is only a letter or only an option's text (1e).
_ONLY_LETTER = re.compile(r"^[\s\*#>_`" + _QUOTE + r"]*(?:(?i:option|choice)\s+)?[\(\[]?(?P<letter>[A-J])[\)\]]?[.!]?"
                          r"[\s\*_`" + _QUOTE + r"]*$")
_ONLY_REST = re.compile(r"[\s\*_`" + _QUOTE + r"]*[.!]?[\s\*_`" + _QUOTE + r"]*$")
# A first sentence that restates the question and ends in an option's text (1f).
_COPULA = re.compile(
    r"(?i:\b(?:is|are|was|were)\s+(?:(?:indeed|actually|likely|probably|clearly|simply|typically|usually)\s+)*"
    r"(?:(?:called|known\s+as|termed|named|referred\s+to\s+as|through|by|due\s+to)\s+)?)")
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")
_ARTICLE = re.compile(r"(?i:(?:the|a|an)\s+)")
# Rejections (3): after the letter (and the option's text) of a statement, in its clause or the next sentence.
_REJECTED = (r"(?i:(?:\s+(?:indeed|also|clearly|definitely|actually|simply|obviously))*\s+"
             r"(?:not\s+(?:the\s+|an?\s+)?(?:correct|right|true|valid|accurate|answer)"
             r"|(?:the\s+)?(?:incorrect|wrong|false|invalid)"
             r"|an?\s+(?:wrong|incorrect|invalid|common\s+mistake|mistake|error)))\b")
_REJECTED_AFTER = re.compile(
    r"[\s" + _QUOTE + r"*)\]]*(?:(?i:,?\s*which\s+(?:is|was)|,?\s*(?:is|was)|\s*[-:\u2013\u2014]\s*(?:it\s+is)?))"
    + _REJECTED
    + r"|[^.!?\n]*[.!?]\s+(?i:(?:this|that|it)(?:\s+(?:answer|option|choice))?\s+(?:is|was))" + _REJECTED)
_NEGATED_BEFORE = re.compile(r"(?i:\b(?:if|unless|whether|incorrect|wrong|false|not|never)\s+(?:the\s+)?$)")
# Self-correction (4): a sentence that opens with a correction withdraws what was stated before it.
_CORRECTION = re.compile(
    r"(?i:[\s\*_\"']*(?:actually|wait|oops|sorry|correction|on\s+second\s+thought|i\s+mean|scratch\s+that"
    r"|i\s+made\s+a\s+mistake|let\s+me\s+correct(?:\s+(?:that|myself))?|no)\b)")
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


def _normal(choice: str) -> str:
    return " ".join(choice.lower().split()).rstrip(".")


def _option_named(text: str, start: int, letters: list[str] | str, choices: list[str]) -> tuple[str, int] | None:
    """The letter of the longest option whose text begins at ``start`` (a leading article skipped) and ends there
    as a word, and where it ends; None when none does."""
    best, best_end = None, -1
    for begin in {start, start + (m.end() - m.start() if (m := _ARTICLE.match(text, start)) else 0)}:
        rest = text[begin:].lower()
        for letter, choice in zip(letters, choices):
            option = _normal(choice)
            if option and rest.startswith(option) and begin + len(option) > best_end and \
                    (len(rest) == len(option) or not rest[len(option)].isalnum()):
                best, best_end = letter, begin + len(option)
    return (best, best_end) if best is not None else None


def _option_ending(text: str, end: int, letters: list[str] | str, choices: list[str]) -> str | None:
    """The letter of the longest option whose text ends at ``end`` and begins where a word begins."""
    before, best, best_len = text[:end].lower(), None, 0
    for letter, choice in zip(letters, choices):
        option = _normal(choice)
        if option and before.endswith(option) and len(option) > best_len and \
                (len(before) == len(option) or not before[-len(option) - 1].isalnum()):
            best, best_len = letter, len(option)
    return best


def _sentence_start(text: str, pos: int) -> int:
    """Where the sentence holding ``pos`` begins."""
    cut = max(text.rfind(mark, 0, pos) for mark in (". ", "! ", "? ", "\n", ".\n", ":\n"))
    return 0 if cut < 0 else cut + 1


def _rejected(text: str, end: int, letters, choices) -> bool:
    """The statement that ends at ``end`` is taken back: "A, which is incorrect", "A. fluids is wrong", "C. This
    answer is incorrect"."""
    if choices:
        m = re.match(r"[\s" + _QUOTE + r"*]*[.:)]?[\s" + _QUOTE + r"*]*", text[end:])
        named = _option_named(text, end + m.end(), letters, choices)
        if named is not None:
            end = named[1]
    return _REJECTED_AFTER.match(text, end) is not None


def extract_choice(text: str, letters: list[str] | str = "ABCD", canonical: str = "the answer is",
                   choices: list[str] | None = None) -> ChoiceAnswer:
    """Read the answer letter of a final turn by the rule in this module's docstring; ``choices`` (the options'
    texts, in letter order) lets a statement name an option by its text."""
    valid = set(letters)
    found: list[tuple[int, int, list[str]]] = []  # (start, end, letters) of every statement that counts
    rejected: set[str] = set()  # letters the turn calls wrong: not its answer wherever else it states them

    def state(start: int, end: int, named: list[str]) -> None:
        if _NEGATED_BEFORE.search(text[max(0, start - 40): start]):
            return
        if _rejected(text, end, letters, choices):
            rejected.update(named)
            return
        named = [letter for letter in named if letter in valid]
        if named:
            found.append((start, end, named))

    lettered = set()
    for m in _STATEMENT.finditer(text):
        lettered.add(m.start())
        letters_here = [(m.group("wrapped") or m.group("bare")).upper()]
        end = m.end()
        while (tail := _LIST_TAIL.match(text, end)) is not None:
            letters_here.append(tail.group("next"))
            end = tail.end()
        state(m.start(), end, letters_here)
    for m in _CALLED_ANSWER.finditer(text):
        if (letter := _LETTER_BEFORE.search(text, 0, m.start())) is not None:
            state(letter.start(), m.end(), [letter.group("letter")])
        elif choices and (named := _option_ending(text, m.start(), letters, choices)) is not None:
            state(m.start(), m.end(), [named])
    lines = [(m.start(), m.group()) for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
    for i, (start, line) in enumerate(lines):
        listed = any(_LISTED_OPTION.match(other) for _, other in lines[max(0, i - 1): i] + lines[i + 1: i + 2])
        if (only := _ONLY_LETTER.match(line)) is not None and not listed:
            state(start, start + len(line), [only.group("letter")])
    if choices:
        options = dict(zip(letters, choices))
        for m in _LISTED_OPTION.finditer(text):
            letter = m.group("letter")
            named = _option_named(text, m.start("rest"), [letter], [options[letter]]) if letter in options else None
            if named is not None and _CLAUSE_END.match(text, named[1]):
                state(m.start("letter"), named[1], [letter])
        for m in _TEXT_START.finditer(text):
            if m.start() in lettered:
                continue
            named = _option_named(text, m.end(), letters, choices)
            if named is not None:
                state(m.start(), named[1], [named[0]])
        for start, line in lines:
            named = _option_named(text, start + len(line) - len(line.lstrip(" \t*#>_`\"'")), letters, choices)
            if named is not None and _ONLY_REST.match(text, named[1], start + len(line)):
                state(start, named[1], [named[0]])
        if not found:
            sentence = _SENTENCE.search(text.lstrip())
            offset = len(text) - len(text.lstrip())
            if sentence and sentence.group().strip() and not sentence.group().rstrip().endswith("?"):
                # the option's text must end the sentence (up to a closing mark or two)
                for m in _COPULA.finditer(sentence.group()):
                    named = _option_named(text, offset + m.end(), letters, choices)
                    if named is not None and _CLAUSE_END.match(text, named[1]) and \
                            named[1] >= offset + len(sentence.group().rstrip(".!?\n ")) - 2:
                        state(offset + m.start(), named[1], [named[0]])
                        break
    # A sentence that opens with a correction withdraws the statements before it.
    found.sort()
    kept: list[tuple[int, int, list[str]]] = []
    for statement in found:
        if kept and _CORRECTION.match(text, _sentence_start(text, statement[0])):
            kept = []
        kept.append(statement)
    named = []
    for _start, _end, letters_here in kept:
        named.extend(letter for letter in letters_here if letter not in named and letter not in rejected)
    if not named:
        return ChoiceAnswer(None, "none", False)
    if len(named) > 1:
        return ChoiceAnswer(None, "ambiguous", False, tuple(named))
    first = next(start for start, _end, letters_here in kept if named[0] in letters_here)
    starts_canonically = bool(_CANONICAL_START[canonical].match(text)) and \
        _STATEMENT.match(text, first) is not None and text[:first].strip(" \t\n*#>_`") == ""
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
