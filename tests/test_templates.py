"""The families' chat formats (--template llama2 / chatml / llama3 / mistral) render exactly what the family's
official chat template renders, text and token ids, for one, two and three turns (with a system prompt, and
without one); the answer masks cover exactly the assistant's tokens and its end token, as the official template
tokenises them (ids compared, on a SentencePiece and on a byte-level BPE tokenizer); ChatML and Llama-3 runs end
answers (eos) on their own end token."""

import pytest
from conftest import LLAMA2_TOKENIZER, SAMPLE, need_shared

from llm_tuning.data.conversations import turns
from llm_tuning.data.formats import validate_record
from llm_tuning.data.templates import format_prompt, render
from llm_tuning.data.tokenize import IGNORE, encode_conversation, prepare_tokenizer, prompt_ids
from llm_tuning.errors import UserError
from llm_tuning.models import load_tokenizer

# The `chat_template` values of the families' tokenizer_config.json files (JSON-decoded), as published:
OFFICIAL = {
    # Qwen/Qwen2-7B-Instruct (the same text in Qwen1.5-*-Chat)
    "chatml": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
              "system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n'"
              " + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>"
              "assistant\n' }}{% endif %}",
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>'"
              " + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if "
              "loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
              "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # meta-llama/Llama-2-7b-chat-hf
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
              "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
              "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == "
              "0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% "
              "endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
              "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
              "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
              "content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + "
              "' ' + eos_token }}{% endif %}{% endfor %}",
    # mistralai/Mistral-7B-Instruct-v0.2 (its "v1" template with a system prompt)
    "mistral": "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
               "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n"
               "{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n"
               "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception("
               "'After the optional system message, conversation roles must alternate user/assistant/user/assistant/"
               "...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and "
               "system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + "
               "message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + "
               "message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant'"
               " %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception("
               "'Only user and assistant roles are supported, with the exception of an initial optional system "
               "message!') }}\n    {%- endif %}\n{%- endfor %}\n",
}
# The special tokens each family's tokenizer has (given to the test tokenizers below); the first ends an answer
SPECIALS = {"chatml": ["<|im_end|>", "<|im_start|>"],
            "llama3": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>"]}

SYSTEM = "You are terse."
PAIRS = [("Hi there", "Hello! How can I help?"), ("What is 2+2?", "4"), ("And 3+3?", "  6  ")]
CASES = [(1, True), (2, True), (3, True), (1, False)]  # (turns, with a system prompt)


@pytest.fixture(scope="module")
def base_tokenizers(tiny_models):
    return {"sentencepiece": LLAMA2_TOKENIZER, "bpe": tiny_models["llama"]}


def family_tokenizer(path, template):
    """A tokenizer as the family's: its special tokens added (Qwen's and Llama-3's are special tokens of theirs)."""
    tok = load_tokenizer(path)
    if template in SPECIALS:
        tok.add_special_tokens({"additional_special_tokens": SPECIALS[template]})
    if template == "llama3":
        tok.bos_token = "<|begin_of_text|>"
    return tok


def tokenizer_for(base_tokenizers, kind, template):
    if kind == "sentencepiece":
        need_shared(LLAMA2_TOKENIZER)
    return family_tokenizer(base_tokenizers[kind], template)


def official(tok, template, messages, generation_prompt=False, tokenize=False):
    return tok.apply_chat_template(messages, chat_template=OFFICIAL[template], add_generation_prompt=generation_prompt,
                                   tokenize=tokenize, return_dict=False)


def conversation(n, with_system):
    messages = [{"role": "system", "content": SYSTEM}] if with_system else []
    for user, answer in PAIRS[:n]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    record = validate_record({"messages": messages}, 0, "data.json")
    return messages, record


def learned_spans(ids, labels):
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE:
            spans, cur = spans + ([cur] if cur else []), []
        else:
            assert lab == i
            cur.append(i)
    return spans + ([cur] if cur else [])


def end_id(tok, template):
    return tok.convert_tokens_to_ids(SPECIALS[template][0]) if template in SPECIALS else tok.eos_token_id


def ending_on_the_last_end_token(tok, template, ids):
    """A training example: the official render's ids up to its last end token (ChatML's newline after it is
    left out: every example ends with the token generation stops on)."""
    last = max(i for i, t in enumerate(ids) if t == end_id(tok, template))
    assert tok.decode(ids[last + 1:]).strip() == ""
    return ids[:last + 1]


def official_answers(tok, template, messages):
    """Each assistant turn's ids as the official template tokenises them: what follows the generation prompt, up
    to and including the end token (the generation prompt's ids a prefix of the longer render's)."""
    out = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = official(tok, template, messages[:k], generation_prompt=True, tokenize=True)
        full = official(tok, template, messages[:k + 1], tokenize=True)
        assert full[:len(before)] == before
        answer = full[len(before):]
        out.append(answer[:answer.index(end_id(tok, template)) + 1])
    return out


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
@pytest.mark.parametrize("n,with_system", CASES)
@pytest.mark.parametrize("template", list(OFFICIAL))
def test_render_ids_and_masks_are_the_official_templates(template, n, with_system, kind, base_tokenizers):
    tok = tokenizer_for(base_tokenizers, kind, template)
    messages, record = conversation(n, with_system)
    system, pairs = turns(record)
    assert "".join(text for _, text in render(system, pairs, template, tok)) == official(tok, template, messages)
    ids, labels = encode_conversation(tok, record, template)
    assert ids == ending_on_the_last_end_token(tok, template, official(tok, template, messages, tokenize=True))
    # the generation prompt: text and ids
    assert format_prompt(record, template, tok) == official(tok, template, messages[:-1], generation_prompt=True)
    prompt = prompt_ids(tok, record, template)
    assert prompt == official(tok, template, messages[:-1], generation_prompt=True, tokenize=True)
    assert ids[:len(prompt)] == prompt
    # the loss: every answer and its end token, nothing else (all turns, or the last with --train-on last)
    answers = official_answers(tok, template, messages)
    assert len(answers) == n and all(a[-1] == end_id(tok, template) for a in answers)
    assert learned_spans(ids, labels) == answers
    ids_last, labels_last = encode_conversation(tok, record, template, train_on="last")
    assert ids_last == ids and learned_spans(ids_last, labels_last) == answers[-1:]


def test_piecewise_tokenisation_would_break_the_chatml_mask():
    """Why the official templates are tokenised as one text: on a SentencePiece tokenizer the answer that follows
    `assistant\\n`, tokenised alone, starts with `▁Hello`, which the official render never has."""
    tok = family_tokenizer(need_shared(LLAMA2_TOKENIZER), "chatml")
    messages, record = conversation(1, True)
    answer = official_answers(tok, "chatml", messages)[0]
    alone = tok(PAIRS[0][1] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0] == "▁Hello" and alone != answer
    ids, labels = encode_conversation(tok, record, "chatml")
    assert learned_spans(ids, labels) == [answer] and tok.convert_ids_to_tokens(answer)[0] == "Hello"


@pytest.mark.parametrize("template", list(OFFICIAL))
def test_the_samples_multi_turn_records_render_as_the_official_template(template, tiny_models, sample_records):
    tok = family_tokenizer(tiny_models["llama"], template)
    multi = [r for r in sample_records if r.get("history")]
    assert len(multi) == 8
    for rec in multi:
        system, pairs = turns(rec)
        messages = [{"role": "system", "content": system}] if system else []
        for user, answer in pairs:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        ids, labels = encode_conversation(tok, rec, template)
        assert ids == ending_on_the_last_end_token(tok, template, official(tok, template, messages, tokenize=True))
        assert learned_spans(ids, labels) == official_answers(tok, template, messages)


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_chatml_and_llama3_runs_end_answers_on_their_own_token(template, tiny_models, tmp_path):
    tok = prepare_tokenizer(family_tokenizer(tiny_models["llama"], template), log=lambda m: None, template=template)
    end = SPECIALS[template][0]
    assert tok.eos_token == end and tok.pad_token == "</s>"  # pad: the tokenizer's own eos, set before
    tok.save_pretrained(tmp_path)  # as training saves it beside the adapter: inference stops on it
    assert load_tokenizer(str(tmp_path)).eos_token == end
    # a tokenizer of another family would learn the marker as plain text pieces: refused, naming it
    with pytest.raises(UserError, match=rf"--template {template}: the tokenizer has no '{end[:3]}"):
        prepare_tokenizer(load_tokenizer(tiny_models["llama"]), log=lambda m: None, template=template)


def test_a_chatml_run_trains_and_its_adapter_stops_on_im_end(tiny_models, tmp_path):
    """A model whose tokenizer has Qwen's tokens (as Qwen's base models' have) trains with --template chatml: every
    example ends with <|im_end|> (the training guard's check), and the adapter's tokenizer ends answers there."""
    from llm_tuning.config import TrainConfig
    from llm_tuning.infer import load_for_inference
    from llm_tuning.models import init_model
    from llm_tuning.train import train

    family_tokenizer(tiny_models["llama"], "chatml").save_pretrained(tmp_path / "tokenizer")
    init_model("llama", str(tmp_path / "model"), tokenizer=str(tmp_path / "tokenizer"), seed=0, log=lambda m: None)
    train(TrainConfig(model=str(tmp_path / "model"), data=SAMPLE, template="chatml", output_dir=str(tmp_path / "run"),
                      max_steps=1, batch_size=2, max_length=1024, quiet=True))  # no example cut short
    _, tok, info = load_for_inference(str(tmp_path / "model"), str(tmp_path / "run"))
    assert info["template"] == "chatml" and tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")  # what generation stops on


def test_template_choices_follow_the_declared_names():
    from llm_tuning.cli import build_parser
    from llm_tuning.cli.flags import config_from_args
    from llm_tuning.config import EvalConfig, TrainConfig
    from llm_tuning.data.templates import TEMPLATE_NAMES

    assert {"chatml", "llama3", "mistral", "llama2"} <= set(TEMPLATE_NAMES)

    def parsed(cls, command, name):
        more = ["--output-dir", "o"] if command == "train" else []
        args = build_parser().parse_args([command, "--model", "m", "--data", "d", "--template", name, *more])
        return config_from_args(cls, args).template

    for name in TEMPLATE_NAMES:
        assert parsed(TrainConfig, "train", name) == parsed(EvalConfig, "eval", name) == name
    with pytest.raises(UserError, match="--template.*chatml, llama3, mistral"):
        parsed(TrainConfig, "train", "qwen")
