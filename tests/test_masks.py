"""Loss masks from real chat templates, checked token by token against sequences assembled by hand.

For each template the expected token ids and mask are built independently of the code under test: the fixed
template pieces are tokenised one at a time and concatenated, the assistant contents and their end-of-turn token
marked 1, everything else 0. The code under test instead renders the template over prefixes and maps character
offsets; both must agree exactly.
"""

from __future__ import annotations

import copy

import pytest

from turnrl.chat import encode_conversation, render

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == \"user\") "
    "or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}{{- '<|im_start|>' + "
    "message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- elif message.role == \"tool\" %}{{- "
    "'<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are a careful tutor."},
    {"role": "user", "content": "Question: Which gas do plants absorb?\nA. oxygen\nB. carbon dioxide"},
    {"role": "assistant", "content": "Plants absorb carbon dioxide for photosynthesis."},
    {"role": "user", "content": "What is your final answer?"},
    {"role": "assistant", "content": "The answer is B.\n\nCO2 is used to make sugar."},
]


def with_template(tokenizer, template: str, specials: list[str], bos: str | None = None, eos: str | None = None):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    return tok


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def assemble(tok, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Concatenate (text, mask) pieces, each tokenised on its own."""
    all_ids, mask = [], []
    for text, m in pieces:
        piece = ids(tok, text)
        all_ids += piece
        mask += [m] * len(piece)
    return all_ids, mask


def check(tok, expected_ids, expected_mask, eot: int, messages=CONVERSATION):
    enc = encode_conversation(tok, messages, [eot])
    assert enc.input_ids == expected_ids, "the rendered conversation tokenises differently than assembled by hand"
    assert enc.loss_mask() == expected_mask
    assert all(enc.eot_included)
    return enc


def test_chatml_smollm2(tokenizer):
    c = CONVERSATION
    pieces = [
        ("<|im_start|>", 0), ("system\n" + c[0]["content"], 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("user\n" + c[1]["content"], 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant\n", 0), (c[2]["content"], 1), ("<|im_end|>", 1), ("\n", 0),
        ("<|im_start|>", 0), ("user\n" + c[3]["content"], 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant\n", 0), (c[4]["content"], 1), ("<|im_end|>", 1), ("\n", 0),
    ]
    expected_ids, expected_mask = assemble(tokenizer, pieces)
    enc = check(tokenizer, expected_ids, expected_mask, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    masked = [t for t, m in zip(enc.input_ids, enc.loss_mask()) if m]
    assert tokenizer.decode(masked) == c[2]["content"] + "<|im_end|>" + c[4]["content"] + "<|im_end|>"


def test_chatml_qwen_default_system(tokenizer):
    tok = with_template(tokenizer, QWEN25, [])
    c = CONVERSATION[1:]  # no system message: the template inserts its own
    pieces = [
        ("<|im_start|>", 0), ("system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.", 0),
        ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("user\n" + c[0]["content"], 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant\n", 0), (c[1]["content"], 1), ("<|im_end|>", 1), ("\n", 0),
        ("<|im_start|>", 0), ("user\n" + c[2]["content"], 0), ("<|im_end|>", 0), ("\n", 0),
        ("<|im_start|>", 0), ("assistant\n", 0), (c[3]["content"], 1), ("<|im_end|>", 1), ("\n", 0),
    ]
    expected_ids, expected_mask = assemble(tok, pieces)
    check(tok, expected_ids, expected_mask, tok.convert_tokens_to_ids("<|im_end|>"), messages=c)


def test_llama3(tokenizer):
    tok = with_template(tokenizer, LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                            "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>")
    c = CONVERSATION
    pieces = [("<|begin_of_text|>", 0)]
    for m in c:
        # In context the tokenizer splits "\n\n" before a word into two newline tokens.
        pieces += [("<|start_header_id|>", 0), (m["role"], 0), ("<|end_header_id|>", 0), ("\n", 0), ("\n", 0)]
        is_assistant = int(m["role"] == "assistant")
        pieces += [(m["content"].strip(), is_assistant), ("<|eot_id|>", is_assistant)]
    expected_ids, expected_mask = assemble(tok, pieces)
    check(tok, expected_ids, expected_mask, tok.convert_tokens_to_ids("<|eot_id|>"))


def test_gemma_folds_system_prompt(tokenizer):
    tok = with_template(tokenizer, GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>",
                        eos="<end_of_turn>")
    c = CONVERSATION
    first_user = c[0]["content"] + "\n\n" + c[1]["content"]  # Gemma has no system role: folded into turn 1
    pieces = [("<bos>", 0)]
    for role, content in [("user", first_user), ("model", c[2]["content"]), ("user", c[3]["content"]),
                          ("model", c[4]["content"])]:
        is_model = int(role == "model")
        pieces += [("<start_of_turn>", 0), (role + "\n", 0), (content.strip(), is_model),
                   ("<end_of_turn>", is_model), ("\n", 0)]
    expected_ids, expected_mask = assemble(tok, pieces)
    check(tok, expected_ids, expected_mask, tok.convert_tokens_to_ids("<end_of_turn>"))


def test_selected_turns_and_truncated_turns(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    enc = encode_conversation(tokenizer, CONVERSATION, [eot])
    final_only = enc.loss_mask(turns=[1])
    assert tokenizer.decode([t for t, m in zip(enc.input_ids, final_only) if m]) == \
        CONVERSATION[4]["content"] + "<|im_end|>"
    # A first turn cut at the token cap: its text is trained, its (never emitted) end-of-turn token is not.
    masked = enc.loss_mask(mask_eot=[True, False])
    assert tokenizer.decode([t for t, m in zip(enc.input_ids, masked) if m]) == \
        CONVERSATION[2]["content"] + CONVERSATION[4]["content"] + "<|im_end|>"


def test_template_that_rewrites_history_is_refused(tokenizer):
    from turnrl.errors import InputError

    # Drops the content of all but the last assistant turn (as reasoning templates do with their thinking).
    template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n"
                "<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
                "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok = with_template(tokenizer, template, [])
    with pytest.raises(InputError, match="renders earlier turns differently"):
        encode_conversation(tok, CONVERSATION, [tok.convert_tokens_to_ids("<|im_end|>")])
    assert render(tok, CONVERSATION[:3])  # rendering itself works
