"""Render conversations with the model's own chat template and find the tokens of each assistant message.

The loss masks come from the messages, not from hard-coded token ids (docs/design.md section 3): the template is
rendered over growing prefixes of the conversation, which gives the character span of every assistant message
in the full rendering; the tokenizer's offset mapping turns those spans into token positions. An assistant span
runs from the first token of the message's content through its end-of-turn token (the model must learn to stop)
and excludes template glue after it (such as ChatML's trailing newline). Templates that rewrite earlier turns
(so that a prefix's rendering is not a prefix of the whole) are refused with a clear error rather than masked
wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from turnrl.errors import InputError


@dataclass
class Encoded:
    """A tokenised conversation: ids, and for each assistant message the token span [start, end)."""

    input_ids: list[int]
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)
    eot_included: list[bool] = field(default_factory=list)
    """Whether each span ends with an end-of-turn token (False when the template emitted none)."""

    def loss_mask(self, turns: list[int] | None = None, mask_eot: list[bool] | None = None) -> list[int]:
        """1 on the tokens to train on: the assistant messages numbered in ``turns`` (all by default).

        ``mask_eot[i]`` drops the end-of-turn token of assistant message i (a turn cut at the token cap never
        emitted it, so it must not be taught there).
        """
        mask = [0] * len(self.input_ids)
        chosen = range(len(self.assistant_spans)) if turns is None else turns
        for i in chosen:
            start, end = self.assistant_spans[i]
            if mask_eot and mask_eot[i] and self.eot_included[i]:
                end -= 1
            for p in range(start, end):
                mask[p] = 1
        return mask


def fit_roles(tokenizer, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Adapt a conversation to a template that lacks a role: a system prompt the template rejects (Gemma 1/2)
    is folded into the first user message, and tool outputs become user messages, as those models expect."""
    roles = {m["role"] for m in messages}
    if "system" in roles and not supports_role(tokenizer, "system"):
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        rest = [dict(m) for m in messages if m["role"] != "system"]
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        messages = rest
    if "tool" in roles and not supports_role(tokenizer, "tool"):
        messages = [{**m, "role": "user"} if m["role"] == "tool" else m for m in messages]
    return messages


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    messages = fit_roles(tokenizer, messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError for e.g. roles the template does not allow
        roles = [m["role"] for m in messages]
        raise InputError(f"the chat template could not render a conversation with roles {roles}: {exc}") from None


_ROLE_SUPPORT: dict[tuple[int, str], bool] = {}


def supports_role(tokenizer, role: str) -> bool:
    """Whether the template renders a message of this role (Gemma's rejects ``system``; many reject ``tool``)."""
    key = (hash(tokenizer.chat_template), role)
    if key not in _ROLE_SUPPORT:
        marker = "zq-observation-qz"
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        probe = [{"role": "system", "content": marker}] + probe if role == "system" else \
            probe[:2] + [{"role": role, "content": marker}]
        try:
            _ROLE_SUPPORT[key] = marker in tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:
            _ROLE_SUPPORT[key] = False
    return _ROLE_SUPPORT[key]


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the template's generation prompt (what the policy continues)."""
    return tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def encode_conversation(tokenizer, messages: list[dict[str, str]], eot_ids: list[int]) -> Encoded:
    """Tokenise a whole conversation and locate every assistant message's tokens."""
    full = render(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = [s for s, _ in offsets]
    eot = set(eot_ids)
    spans, eot_flags = [], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        after = render(tokenizer, messages[: i + 1])
        if not full.startswith(before) or not full.startswith(after) or len(after) < len(before):
            raise InputError(
                "the chat template renders earlier turns differently once later turns are added "
                f"(at message {i}); per-message loss masks cannot be derived from it"
            )
        begin_char, end_char = len(before), len(after)
        tok_start = _first_token_at_or_after(starts, begin_char)
        tok_end = _first_token_at_or_after(starts, end_char)
        # Stop after the first end-of-turn token: what follows it (a newline, the next header) is template glue.
        end, found = tok_end, False
        for p in range(tok_start, tok_end):
            if ids[p] in eot:
                end, found = p + 1, True
                break
        spans.append((tok_start, end))
        eot_flags.append(found)
    return Encoded(input_ids=ids, assistant_spans=spans, eot_included=eot_flags)


def _first_token_at_or_after(starts: list[int], char: int) -> int:
    import bisect

    return bisect.bisect_left(starts, char)
