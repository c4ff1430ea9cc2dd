"""Math answers: extracting a final answer from a solution and checking it against the gold value.

Used by the tool environment (003), the feedback environment (004) and the scorer for open-answer tasks.
"""

from __future__ import annotations


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, with nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed"):].strip()
        return rest.split("$")[0].strip() or None if text.startswith("\\boxed ", start) else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1: i]
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a math solution: the last \\boxed{} content (fallbacks: see the checker's docs)."""
    boxed = last_boxed(text)
    return boxed.strip() if boxed else None


def math_equal(prediction: str, gold: str) -> bool:
    """Whether two final answers are equivalent."""
    return prediction.strip() == gold.strip()
