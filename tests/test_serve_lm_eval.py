"""EleutherAI's lm-evaluation-harness against `llm-tuning serve`: its `local-completions` model (log-likelihoods
from /v1/completions with echo and logprobs) gives the per-document figures its `hf` backend gives with
`peft=` on the same adapter, and its `local-chat-completions` model runs a generation task against the server.
Tiny Llama, six documents from the bundled sample, the task files in tests/harness_tasks/ (no hub)."""

import json
import os
import random

import pytest

from conftest import ROOT
from serving import Server, trained_adapters

TASKS = os.path.join(ROOT, "tests", "harness_tasks")
DOCS = 6


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    return trained_adapters(tiny_models, tmp_path_factory, ("lora", "prefix"))


@pytest.fixture(scope="module")
def server(tiny_models, adapters):
    with Server("--model", tiny_models["llama"], "--adapter", f"lora={adapters['lora']}",
                "--adapter", f"prefix={adapters['prefix']}") as s:
        yield s


@pytest.fixture
def task_folder(tmp_path, monkeypatch, sample_records):
    """lm-eval runs in a folder holding the documents: each instruction, its answer's first 24 characters and
    three other answers' as the choices."""
    rng = random.Random(0)
    records = [r for r in sample_records if not r.get("input")][: DOCS + 3]
    with open(tmp_path / "served_docs.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(records[:DOCS]):
            others = [o["output"][:24] for o in records if o is not r][:3]
            label = rng.randrange(4)
            choices = others[:label] + [r["output"][:24]] + others[label:]
            f.write(json.dumps({"instruction": r["instruction"], "answer": r["output"][:24], "choices": choices,
                                "label": label}, ensure_ascii=False) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    return tmp_path


def evaluate(model, model_args: str, task: str, **kw) -> list:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=TASKS, include_defaults=False)
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], task_manager=tasks,
                                  device="cpu", log_samples=True, bootstrap_iters=0, **kw)
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_local_completions_scores_as_the_hf_backend_with_peft(server, tiny_models, adapters, task_folder, name):
    """The same 6 x 4 log-likelihoods within 1e-3, served (lm-eval sends token ids, batch of 4 per request) and
    loaded by lm-eval itself (PeftModel over the base); the adapter changes them."""
    base = tiny_models["llama"]
    served = evaluate("local-completions", f"model={name},base_url={server.url}/v1/completions,"
                      f"tokenizer_backend=huggingface,tokenizer={base},max_length=512,batch_size=4", "served_choice")
    loaded = evaluate("hf", f"pretrained={base},peft={adapters[name]},dtype=float32", "served_choice", batch_size=4)
    plain = evaluate("hf", f"pretrained={base},dtype=float32", "served_choice", batch_size=4)
    assert len(served) == len(loaded) == DOCS

    def figures(samples):
        return [ll for s in samples for ll, _ in s["filtered_resps"]]

    pairs = list(zip(figures(served), figures(loaded)))
    assert len(pairs) == DOCS * 4 and max(abs(a - b) for a, b in pairs) < 1e-3, pairs
    assert [g for s in served for _, g in s["filtered_resps"]] == [g for s in loaded for _, g in s["filtered_resps"]]
    assert max(abs(a - b) for a, b in zip(figures(loaded), figures(plain))) > 1e-2


def test_local_chat_completions_runs_a_generation_task(server, task_folder):
    """generate_until through /v1/chat/completions: every document's answer is the one the server gives the
    openai client for the same message (greedy, 8 tokens, the stop string)."""
    samples = evaluate("local-chat-completions", f"model=lora,base_url={server.url}/v1/chat/completions",
                       "served_answer", apply_chat_template=True)
    assert len(samples) == DOCS
    client = server.client()
    for s in samples:
        want = client.chat.completions.create(model="lora", messages=[{"role": "user", "content": s["doc"]["instruction"]}],
                                              max_tokens=8, temperature=0, stop=["\n\n"])
        assert s["resps"][0][0] == want.choices[0].message.content
