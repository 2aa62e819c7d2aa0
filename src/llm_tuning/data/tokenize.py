"""Tokenise records for causal-LM supervised fine-tuning.

Each example is prompt + response + eos, or for a multi-turn record every turn's prompt and answer (templates.py
renders the pieces). Prompts are masked out of the labels (-100), so the loss covers exactly the answer tokens
and their end token (every assistant turn, or the last only with train_on="last"). With the default template eos
is appended *by id* (the Llama-2 tokenizer never appends it, and answer text is not tokenised with special
tokens). The families' official templates (templates.OFFICIAL) write their special tokens as text: the whole
conversation is tokenised once, as apply_chat_template does, and answer tokens are found by character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    dropped: int  # examples whose response was truncated away entirely


def prepare_tokenizer(tokenizer, log=print, template: str | None = None):
    """pad = eos when the tokenizer has no pad token. (Right padding for training is the guard's job.) With the
    template a run trains in: its end token as eos where it has its own (templates.use_end_token)."""
    if tokenizer.eos_token_id is None:
        from ..errors import UserError

        raise UserError("the tokenizer has no eos token; set one in tokenizer_config.json (eos_token)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        log(f"tokenizer has no pad token: using eos ({tokenizer.eos_token!r}, id {tokenizer.eos_token_id}) as pad")
    if template:
        from .templates import use_end_token

        use_end_token(tokenizer, template, log)
    return tokenizer


def _strip_eos(ids, eos: int) -> list[int]:
    # A tokenizer configured with add_eos_token would end the prompt with eos, teaching the model to stop at once.
    ids = list(ids)
    return ids[:-1] if ids and ids[-1] == eos else ids


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return _strip_eos(tokenizer(prompt, add_special_tokens=True)["input_ids"], tokenizer.eos_token_id)


def _conversation_pieces(record: dict, template: str, tokenizer) -> list[tuple[str, str]]:
    from .conversations import turns
    from .templates import render

    system, pairs = turns(record)
    return render(system, pairs, template, tokenizer)


def _assemble(pieces, ids_of, tokenizer, chat: bool, train_on: str) -> tuple[list[int], list[int]]:
    """ids and labels of one conversation's pieces (their ids from `ids_of`, in order). Answers are learned
    (all of them, or the last only); eos follows each answer by id (chat templates: the answer is cut after the
    eos the template writes, the rest read as prompt)."""
    eos = tokenizer.eos_token_id
    last_answer = max((i for i, (kind, _) in enumerate(pieces) if kind == "answer"), default=-1)
    ids: list[int] = []
    labels: list[int] = []
    for i, (kind, _) in enumerate(pieces):
        if kind == "prompt":
            piece, learned = (ids_of(i) if chat or i else _strip_eos(ids_of(i), eos)), []
        else:
            answer = list(ids_of(i))
            if chat and eos in answer:
                cut = answer.index(eos) + 1
                answer, rest = answer[:cut], ([] if i == last_answer else answer[cut:])
            else:
                answer, rest = answer + [eos], []
            learn = train_on == "all" or i == last_answer
            piece, learned = answer + rest, (answer if learn else [IGNORE] * len(answer)) + [IGNORE] * len(rest)
        ids += piece
        labels += learned if learned else [IGNORE] * len(piece)
    return ids, labels


def encode_conversation(tokenizer, record: dict, template: str = "default", train_on: str = "all"):
    """(ids, labels) of one record, multi-turn or not, untruncated."""
    return _encode_many(tokenizer, [record], template, train_on)[0]


def _learned(offsets, spans) -> list[bool]:
    """Per token (its character offsets): whether it overlaps one of the learned character spans."""
    return [any(a < end and max(b, a + 1) > start for start, end in spans) for a, b in offsets]


def _encode_official(tokenizer, all_pieces, template: str, train_on: str, complete: list[bool]):
    """Each conversation's text tokenised once without added special tokens (the text writes them); a token is
    learned where it overlaps a learned answer's characters. A complete conversation ends with its last answer's
    end token (ChatML's newline after it dropped, as Qwen's own fine-tuning script does and as --template auto
    does), so that every training example ends with the token generation stops on."""
    from ..errors import UserError
    from .templates import check_markers

    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--template {template} finds the answers by character offsets, which needs a fast "
                        "tokenizer (a tokenizer.json); use --template default")
    check_markers(template, tokenizer)
    texts, all_spans = [], []
    for pieces, done in zip(all_pieces, complete):
        at, spans = 0, []
        answers = [i for i, (kind, _) in enumerate(pieces) if kind == "answer"]
        if done and answers:
            pieces = pieces[:answers[-1] + 1]
        for i, (kind, text) in enumerate(pieces):
            if kind == "answer" and (train_on == "all" or i == answers[-1]):
                spans.append((at, at + len(text)))
            at += len(text)
        texts.append("".join(text for _, text in pieces))
        all_spans.append(spans)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(ids, [t if learn else IGNORE for t, learn in zip(ids, _learned(offsets, spans))])
            for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], all_spans)]


def _encode_many(tokenizer, records, template, train_on):
    from .templates import OFFICIAL, resolve

    kind = resolve(template, tokenizer)
    chat = kind == "chat"
    all_pieces = [_conversation_pieces(r, template, tokenizer) for r in records]
    if kind in OFFICIAL:
        return _encode_official(tokenizer, all_pieces, kind, train_on, [bool(r.get("output")) for r in records])
    # Batched tokenizer calls (fast tokenizers run them in parallel): the first prompt of each record with the
    # tokenizer's special tokens (its bos; chat templates write their own), every other piece without.
    firsts, others, where = [], [], []
    for pieces in all_pieces:
        for i, (_, text) in enumerate(pieces):
            if i == 0 and not chat:
                where.append((0, len(firsts)))
                firsts.append(text)
            else:
                where.append((1, len(others)))
                others.append(text)
    tokenized = [tokenizer(firsts, add_special_tokens=True)["input_ids"] if firsts else [],
                 tokenizer(others, add_special_tokens=False)["input_ids"] if others else []]
    out, k = [], 0
    for pieces in all_pieces:
        slots = where[k:k + len(pieces)]
        k += len(pieces)
        out.append(_assemble(pieces, lambda i, s=slots: tokenized[s[i][0]][s[i][1]], tokenizer, chat, train_on))
    return out


def encode_records(tokenizer, records: list[dict], template: str = "default", max_length: int = 512,
                   train_on: str = "all") -> Encoded:
    """Records (multi-turn or not) as truncated ids and labels: -100 except on the learned answers and their eos."""
    if train_on not in ("all", "last"):
        from ..errors import UserError

        raise UserError(f"--train-on {train_on!r} is unknown; choose all or last")
    out_ids, out_labels, dropped = [], [], 0
    for ids, labels in _encode_many(tokenizer, records, template, train_on):
        ids, labels = ids[:max_length], labels[:max_length]
        if all(x == IGNORE for x in labels):
            dropped += 1  # prompt alone fills max_length: nothing to learn, and it would make a 0/0 loss
            continue
        out_ids.append(ids)
        out_labels.append(labels)
    return Encoded(out_ids, out_labels, dropped)


def start_token(tokenizer) -> int:
    """The token a plain text starts from: the tokenizer's bos, or its eos where it has none (the separator
    between documents in pre-training), so that every token of the text is predicted from something."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_texts(tokenizer, texts: list[str], max_length: int = 512) -> Encoded:
    """Plain texts (no template) as ids and labels for a loss over every token of each text: the start token,
    then the text's tokens (truncated to max_length in all), every one of them a label; no eos is appended."""
    start = start_token(tokenizer)
    out_ids, out_labels, dropped = [], [], 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = ([start] + list(ids))[:max_length]
        if len(ids) < 2:
            dropped += 1  # nothing to predict
            continue
        out_ids.append(ids)
        out_labels.append([IGNORE] + ids[1:])
    return Encoded(out_ids, out_labels, dropped)


def prompt_ids(tokenizer, record: dict, template: str = "default") -> list[int]:
    """The ids the model continues to answer `record` (its `output` ignored): the earlier turns as training
    sees them (answers with their eos), then the last prompt."""
    ids, _ = encode_conversation(tokenizer, {**record, "output": None}, template)
    return ids


def conversation_prompt_ids(tokenizer, messages: list[dict], template: str = "default") -> list[int]:
    """prompt_ids for OpenAI-style messages (role/content, the last one the user's)."""
    from .conversations import from_messages

    system, pairs = from_messages(messages)
    record = {"instruction": pairs[-1][0], "input": "", "output": None, "system": system,
              "history": [list(p) for p in pairs[:-1]]}
    return prompt_ids(tokenizer, record, template)


def to_dataset(enc: Encoded):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": enc.input_ids, "labels": enc.labels})
