r"""Math answers: extracting a final answer from a solution and deciding whether it equals the gold answer.

Used by the tool environment (003), the feedback environment (004) and the scorer for open-answer tasks. The rule
is written down here and only here.

**Extraction** (:func:`extract_math_answer`, applied to the final assistant turn; where a tool conversation stopped
at the tool-call limit, to that turn and the observation after it, as 003 reads the text after the last assistant
marker), the first that applies:

1. the content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces matched; ``\boxed 5`` without braces reads
   up to the next ``$`` or line end. A turn with a ``\boxed`` is read only there (an empty box is no answer);
2. the text after the last "the answer is" (any letter case), up to the end of its line;
3. the content of the last ```` ```output ```` block;
4. the last number in the turn (thousands commas removed).

Steps 2-4 are 003's fallbacks (``fallbacks=False`` keeps step 1 only); they ignore the text of ```` ```python ````
blocks (a number in code, like the 1 of ``range(1, 11)``, is not an answer). The result is cut to its first line,
and a leading ":" and trailing "." or "/" are dropped.

**Normalisation** (:func:`normalize_answer`, both sides), after 003's ``strip_string``: LaTeX spacing (``\!``,
``\,``, ``\ ``), ``\left``/``\right``, ``\displaystyle`` go; ``\dfrac``/``\tfrac`` become ``\frac``; a trailing
``\text{unit}`` and a trailing unit word ("18 dollars", "5 cm") go, other ``\text{X}`` become X; degrees
(``^\circ``), dollar signs and percent signs go (a percent sign is remembered); a leading "x \in" or a
variable of one or two characters as left-hand side ("x = 5", "k=3", "y = 2x+1") goes; "and" between list items
goes; thousands commas in a number go ("1,000" is 1000); ``\frac12`` becomes
``\frac{1}{2}``, ``\sqrt2`` ``\sqrt{2}``; "infinity" becomes ``\infty``; a ``pmatrix`` becomes a tuple.

**Equality** (:func:`math_equal`), the first that decides:

1. the normalised strings are equal, ignoring letter case, spaces, and the characters ``{}()`` (003);
2. both are numbers (integers, decimals, ``a/b``, ``\frac{a}{b}``, mixed numbers ``1\frac{1}{2}``, scientific
   notation): two integers must be equal exactly (70001 is not 70000); otherwise equal within a relative
   tolerance of 1e-4 (0.33333 is 1/3, 0.333 is not). A side written with a percent sign may also be read
   as a fraction of 100: "50%" equals 0.5 and 50; "0.5" and "50" without any percent sign differ (003's grader also
   accepts any factor of 100 between bare numbers, which rewards e.g. 5 for 500 cents; ``lenient_percent=True``
   restores that);
3. both are lists: tuples and intervals ``(a, b]`` compare element by element in order and with the same
   brackets; sets ``\{a, b\}``, bare comma lists ("all solutions") and unions of intervals (``\cup``) compare as
   unordered collections;
4. symbolic: math-verify (``math_verify.parse`` of each side as LaTeX, and as a plain expression such as
   ``sqrt(2)/2`` only when it uses digits, operators and known function names -- its plain parser evaluates
   Python, so nothing else reaches it; then ``math_verify.verify``, gold first): expressions equal when they
   simplify to the same thing or their values agree to 6 decimals; equations and intervals by their own rules.

Steps 1-3 are turnrl's (math-verify reads "1e3" as 1*e*3, "18 dollars" as a product of letters, a pmatrix as a
matrix rather than a tuple, and 0.33333 as unequal to 1/3: measured on the table in tests/test_math_answers.py,
which every step together passes); the symbolic step is math-verify's.

The symbolic step runs in a worker process with a hard time limit (:mod:`turnrl.rewards.symbolic`); a comparison
that runs out of time counts as not equal (003 does the same).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from turnrl.rewards.symbolic import DEFAULT_TIMEOUT, symbolic_equal
REL_TOL = 1e-4


# --------------------------------------------------------------------------------------------------------------
# Extraction


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, with nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    command = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    rest = text[start + len(command):]
    if not rest.lstrip().startswith("{"):
        if not rest[:1].isspace():
            return None
        value = rest.strip().split("$")[0].split("\n")[0].strip()
        return value or None
    brace = start + len(command) + (len(rest) - len(rest.lstrip()))
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1: i]
    return None


_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is", re.IGNORECASE)
_OUTPUT_BLOCK = re.compile(r"```output\n(.*?)(?:\n```|$)", re.DOTALL)
_NUMBER = re.compile(r"-?\d*\.?\d+")
_CODE_BLOCK = re.compile(r"```python.*?(?:```|$)", re.DOTALL)


def _fallback_answer(prose: str) -> str | None:
    """003's fallbacks, in order: "the answer is", the last output block, the last number."""
    statements = list(_ANSWER_IS.finditer(prose))
    if statements:
        return prose[statements[-1].end():].strip()
    outputs = _OUTPUT_BLOCK.findall(prose)
    if outputs:
        return outputs[-1].strip()
    numbers = _NUMBER.findall(prose.replace(",", ""))
    return numbers[-1] if numbers else None


def extract_math_answer(text: str, fallbacks: bool = True) -> str | None:
    """The final answer of a solution by the module's rule (None when there is none)."""
    if "\\boxed" in text or "\\fbox" in text:
        answer = last_boxed(text)
    elif not fallbacks:
        return None
    else:
        answer = _fallback_answer(_CODE_BLOCK.sub("", text))
    if answer is None:
        return None
    answer = answer.strip().split("\n")[0].strip().strip("*").strip()
    answer = answer[1:].strip() if answer.startswith(":") else answer
    answer = answer.rstrip("./").strip() if not answer.endswith("\\.") else answer
    return answer or None


# --------------------------------------------------------------------------------------------------------------
# Normalisation

_UNIT_WORD = r"(?:[a-zA-Z]{2,}\.?)(?:\^\{?\d\}?)?"
_MATH_WORDS = {"pi", "sqrt", "frac", "infty", "inf", "sin", "cos", "tan", "log", "ln", "exp", "and", "or", "i"}


def _strip_text_commands(s: str) -> str:
    # A trailing \text{unit} goes (when something precedes it); any other \text{X} becomes X.
    trailing = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}(?:\^\{?\d\}?)?\s*$", "", s).strip()
    if trailing and trailing != s:
        s = trailing
    return re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``, ``\\frac{a}b`` -> ``\\frac{a}{b}``."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([a-zA-Z0-9])\s*\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\s*(\{[^{}]*\})\s*([a-zA-Z0-9])", r"\\frac\1{\2}", s)


def _pmatrix_to_tuple(s: str) -> str:
    def convert(m: re.Match) -> str:
        rows = [r.strip() for r in re.split(r"\\\\", m.group(1)) if r.strip()]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        if all(len(r) == 1 for r in cells):
            return "(" + ",".join(r[0] for r in cells) + ")"
        return "(" + ",".join("(" + ",".join(r) + ")" for r in cells) + ")"

    return re.sub(r"\\begin\{[pbv]?matrix\}(.*?)\\end\{[pbv]?matrix\}", convert, s, flags=re.DOTALL)


def has_percent(s: str) -> bool:
    return "%" in s or bool(re.search(r"\bpercent\b", s, re.IGNORECASE))


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer, by the module's rule (spaces are kept single; the comparison ignores
    them)."""
    s = str(answer).strip().replace("\n", " ")
    s = _pmatrix_to_tuple(s)
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "")  # "15,\\!000" and "15{,}000" are 15000
    for spacing in ("\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad", "\\displaystyle"):
        s = s.replace(spacing, " ")
    s = s.replace("\\\\", "\\")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = _strip_text_commands(s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("\\circ", "").replace("\\degree", "").replace("°", "")
    s = re.sub(r"\bdegrees?\b", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\bpercent\b", "", s, flags=re.IGNORECASE)
    s = re.sub(r"^\s*[a-zA-Z]\s*\\in\s*", "", s)
    s = re.sub(r",\s*and\b", ",", re.sub(r"(?<=\d)\s+and\s+(?=-?\d)", ", ", s))  # "7, -2, and -5"; "19 and 43"
    s = s.strip().rstrip(".").strip()
    # A short left-hand side ("x = 5", "k=3", "y = 2x+1"): keep the right-hand side (003).
    parts = s.split("=")
    if len(parts) == 2 and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9]?", parts[0].strip()) and parts[1].strip():
        s = parts[1].strip()
    # A number followed by unit words ("18 dollars", "5 cm^2", "3 hours.").
    m = re.fullmatch(rf"(-?[\d.,]*\d)\s*((?:{_UNIT_WORD}\s*)+)", s)
    if m and not set(m.group(2).lower().split()) & _MATH_WORDS:
        s = m.group(1)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(\d+)\.0+(?![\d])", r"\1", s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = re.sub(r"\binf\b", "\\\\infty", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s


def _compact(s: str) -> str:
    return re.sub(r"[\s{}()]", "", s).lower()


# --------------------------------------------------------------------------------------------------------------
# Numbers


def to_number(s: str) -> float | None:
    """The value of a normalised answer that is a plain number, or None."""
    s = s.replace(" ", "")
    if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", s):
        return float(s)
    m = re.fullmatch(r"([-+]?)(\d+(?:\.\d+)?)(?:\\times|\*|×)10\^\{?([-+]?\d+)\}?", s)
    if m:
        return float(f"{m.group(1)}{m.group(2)}e{m.group(3)}")
    m = re.fullmatch(r"([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}", s) or \
        re.fullmatch(r"([-+]?)(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", s)
    if m:
        num, den = Fraction(m.group(2)), Fraction(m.group(3))
        if den == 0:
            return None
        return float((-1 if m.group(1) == "-" else 1) * num / den)
    m = re.fullmatch(r"([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # a mixed number: 1\frac{1}{2} = 1.5
    if m and int(m.group(4)) != 0:
        return float((-1 if m.group(1) == "-" else 1) * (int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))))
    return None


def _numbers_equal(p: float, g: float, p_percent: bool, g_percent: bool, lenient: bool, exact: bool) -> bool:
    def close(a: float, b: float) -> bool:
        if exact:
            return a == b
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)

    if lenient:
        return any(close(p, c) for c in (g / 100, g, g * 100))
    candidates_p = [p] + ([p / 100] if p_percent else [])
    candidates_g = [g] + ([g / 100] if g_percent else [])
    return any(close(a, b) for a in candidates_p for b in candidates_g)


# --------------------------------------------------------------------------------------------------------------
# Lists, tuples, intervals, sets


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    parts, depth, current, i = [], 0, "", 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            parts.append(current)
            current, i = "", i + len(sep)
            continue
        current += c
        i += 1
    parts.append(current)
    return [p.strip() for p in parts]


def _structure(s: str) -> tuple[str, list[str]] | None:
    """(kind, items) of a list-like answer: kind is ordered ("(]" brackets, tuples, intervals) or unordered
    (sets, bare lists, unions); None for a single value."""
    s = s.strip()
    if "\\cup" in s:
        return "unordered", [p.strip() for p in s.split("\\cup")]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "unordered", _split_top_level(s[2:-2])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced_inside(s):
        items = _split_top_level(s[1:-1])
        if len(items) > 1:
            return "ordered" + s[0] + s[-1], items
    items = _split_top_level(s)
    if len(items) > 1:
        return "unordered", items
    return None


def _balanced_inside(s: str) -> bool:
    depth = 0
    for c in s[1:-1]:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _structures_equal(ps: tuple[str, list[str]], gs: tuple[str, list[str]], timeout: float, lenient: bool) -> bool:
    (p_kind, p_items), (g_kind, g_items) = ps, gs
    if p_kind != g_kind or len(p_items) != len(g_items):
        return False
    if p_kind.startswith("ordered"):
        return all(math_equal(p, g, timeout, lenient) for p, g in zip(p_items, g_items))
    remaining = list(g_items)
    for p in p_items:  # unordered: match each predicted item to a distinct gold item
        match = next((j for j, g in enumerate(remaining) if math_equal(p, g, timeout, lenient)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True


# --------------------------------------------------------------------------------------------------------------
# Equality


def math_equal(prediction: str, gold: str, timeout: float = DEFAULT_TIMEOUT, lenient_percent: bool = False) -> bool:
    """Whether two final answers are equivalent, by the module's rule."""
    if prediction is None or gold is None:
        return False
    p_raw, g_raw = str(prediction), str(gold)
    p, g = normalize_answer(p_raw), normalize_answer(g_raw)
    if not p:
        return False
    if _compact(p) == _compact(g):
        return True
    p_num, g_num = to_number(p), to_number(g)
    if p_num is not None and g_num is not None:
        integers = all(re.fullmatch(r"-?\d+", x.replace(" ", "")) for x in (p, g))
        return _numbers_equal(p_num, g_num, has_percent(p_raw), has_percent(g_raw), lenient_percent,
                              exact=integers)
    p_struct, g_struct = _structure(p), _structure(g)
    if p_struct is not None or g_struct is not None:
        return p_struct is not None and g_struct is not None and \
            _structures_equal(p_struct, g_struct, timeout, lenient_percent)
    return symbolic_equal(p, g, timeout) is True
