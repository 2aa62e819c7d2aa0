"""`llm-tuning eval --tasks`: lm-eval's tasks (local YAMLs built here from the bundled sample, no hub) on every
method's adapter. Its log-likelihoods equal a direct forward of the loaded model, its generations what
infer.generate decodes (lm-eval's own `model.generate` path is wrong for prompt learning); lm-eval's own `hf`
backend with `peft=` gives the same log-likelihoods on LoRA, prefix and prompt adapters; the results JSON is
written, `--json` carries the scores; a bad --tasks-dir and a missing lm-eval are one line and exit 2."""

import json
import re
import sys

import pytest
import torch
from conftest import SAMPLE
from helpers import ENC, NVT, OB, VR

from llm_tuning.cli import main
from llm_tuning.infer import load_for_inference
from llm_tuning.infer.generate import answer_ids
from llm_tuning.infer.sampling import Sampling
from llm_tuning.methods import METHODS

STOP = ["\n\n", "Human:"]
GEN_TOKENS = 8
DOCS = 4


def write_tasks(folder, records) -> dict:
    """A loglikelihood task and a generate_until task over `records` (YAML + JSONL in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"instruction": r["instruction"], "answer": r["output"][:16]} for r in records]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    data = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
            f"  cache_dir: {folder / 'datasets-cache'}\ntest_split: test\nmetadata:\n  version: 1.0\n")
    (folder / "ll.yaml").write_text(
        "task: sample_ll\noutput_type: loglikelihood\n"
        'doc_to_text: "Human: {{instruction}}\\n\\nAssistant:"\ndoc_to_target: " {{answer}}"\n'
        "metric_list:\n  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n" + data)
    (folder / "gen.yaml").write_text(
        "task: sample_gen\noutput_type: generate_until\n"
        'doc_to_text: "Human: {{instruction}}\\n\\nAssistant: "\ndoc_to_target: "{{answer}}"\n'
        f"generation_kwargs:\n  until: {json.dumps(STOP)}\n  max_gen_toks: {GEN_TOKENS}\n  do_sample: false\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n" + data)
    return {"dir": str(folder), "docs": docs}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, sample_records):
    single = [r for r in sample_records if not r.get("history") and not r.get("input")]
    return write_tasks(tmp_path_factory.mktemp("harness") / "tasks", single[:DOCS])


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    """{method: adapter folder}: every method, 1 step each on the tiny Llama at a high rate (each unlike the base)."""
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    root, out = tmp_path_factory.mktemp("harness-adapters"), {}
    for m in METHODS:
        out[m] = str(root / m)
        train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method=m, output_dir=out[m], max_steps=1,
                          batch_size=2, max_length=64, save_steps=100, num_virtual_tokens=NVT, encoder_hidden_size=ENC,
                          vera_r=VR, oft_block_size=OB, lr=1e-3 if m == "full" else 3e-2, quiet=True))
    return out


@pytest.fixture(scope="module")
def base_logliks(tiny_models, tasks):
    model, tok, _ = load_for_inference(tiny_models["llama"])
    return [direct_loglik(model, tok, f"Human: {d['instruction']}\n\nAssistant:", " " + d["answer"])
            for d in tasks["docs"]]


def eval_tasks(capsys, *args):
    code = main(["eval", "--tasks", "sample_ll,sample_gen", "--limit", str(DOCS), "--json", *args])
    out, err = capsys.readouterr()
    return code, out, err


def direct_loglik(model, tok, context, continuation) -> float:
    """log p(continuation | context) by one forward of the loaded model, the pair split as lm-eval splits it."""
    ctx = tok(context)["input_ids"]
    cont = tok(context + continuation)["input_ids"][len(ctx):]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + cont])[:, :-1]).logits[0, -len(cont):].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None]).sum())


def cut_at_stop(text: str) -> str:
    for s in STOP:
        text = text.split(s)[0]
    return text


@pytest.mark.parametrize("method", list(METHODS))
def test_eval_tasks_on_every_method(method, tiny_models, adapters, tasks, base_logliks, tmp_path, capsys):
    out_file = tmp_path / "results.json"
    code, out, err = eval_tasks(capsys, "--model", tiny_models["llama"], "--adapter", adapters[method],
                                "--tasks-dir", tasks["dir"], "--harness-output", str(out_file), "--samples")
    assert code == 0, err
    printed = json.loads(out)["harness"]
    assert printed["output"] == str(out_file) and set(printed["results"]) == {"sample_ll", "sample_gen"}
    saved = json.loads(out_file.read_text())
    assert saved["results"]["sample_ll"]["perplexity,none"] == printed["results"]["sample_ll"]["perplexity,none"]
    samples = {t: sorted(saved["samples"][t], key=lambda s: s["doc_id"]) for t in ("sample_ll", "sample_gen")}
    assert [len(s) for s in samples.values()] == [DOCS, DOCS]

    model, tok, _ = load_for_inference(tiny_models["llama"], adapters[method])
    # log-likelihoods: lm-eval's (batched, right-padded) = one forward of our model per document
    for doc, s, base in zip(tasks["docs"], samples["sample_ll"], base_logliks):
        want = direct_loglik(model, tok, f"Human: {doc['instruction']}\n\nAssistant:", " " + doc["answer"])
        assert abs(float(s["filtered_resps"][0][0]) - want) < 1e-4, (method, doc)
        assert abs(want - base) > 1e-3  # the adapter is active: the base model's figure differs
    # generations: what infer.generate decodes for the same record, cut at the task's stop strings
    records = [{"instruction": d["instruction"], "input": ""} for d in tasks["docs"]]
    _, ids = answer_ids(model, tok, records, "default", Sampling(GEN_TOKENS))
    ours = [cut_at_stop(tok.decode(i, skip_special_tokens=True)) for i in ids]
    assert [s["filtered_resps"][0] for s in samples["sample_gen"]] == ours


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_lm_evals_own_hf_peft_path_agrees_on_log_likelihoods(method, tiny_models, adapters, tasks):
    """What a user runs with lm-eval itself (`--model hf --model_args pretrained=BASE,peft=ADAPTER`) scores our
    adapters as `eval --tasks` does (its log-likelihoods; its generation is the part that is wrong)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_models['llama']},peft={adapters[method]},"
                                  "dtype=float32", tasks=["sample_ll"], device="cpu", batch_size=4, limit=DOCS,
                                  task_manager=TaskManager(include_path=tasks["dir"], include_defaults=False),
                                  bootstrap_iters=0, log_samples=True)
    model, tok, _ = load_for_inference(tiny_models["llama"], adapters[method])
    for doc, s in zip(tasks["docs"], sorted(res["samples"]["sample_ll"], key=lambda s: s["doc_id"])):
        want = direct_loglik(model, tok, f"Human: {doc['instruction']}\n\nAssistant:", " " + doc["answer"])
        assert abs(float(s["filtered_resps"][0][0]) - want) < 1e-4, (method, doc)


def test_table_beside_our_figures_and_default_output(tiny_models, adapters, tasks, capsys):
    code = main(["eval", "--model", tiny_models["llama"], "--adapter", adapters["lora"], "--data", SAMPLE,
                 "--limit", "2", "--tasks", "sample_ll", "--tasks-dir", tasks["dir"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    ours = out.index("| loss |")
    theirs = re.search(r"^\|\s*Tasks\s*\|.*\n.*\n\|\s*sample_ll\s*\|\s*1\|none\s*\|\s*0\|acc\s*\|", out, re.M)
    assert theirs and ours < theirs.start(), out  # lm-eval's table after ours
    path = f"{adapters['lora']}/harness_results.json"
    assert f"lm-eval's results written to {path}" in out
    assert json.load(open(path))["results"]["sample_ll"]["sample_len"] == 2


def test_bad_tasks_dir_and_missing_lm_eval_are_one_line(tiny_models, tasks, tmp_path, monkeypatch, capsys):
    code, out, err = eval_tasks(capsys, "--model", tiny_models["llama"], "--tasks-dir", str(tmp_path / "nope"))
    assert code == 2 and out == "" and err.strip() == (f"llm-tuning eval: error: --tasks-dir {tmp_path / 'nope'}: not a "
                                                       "folder (it holds lm-eval task YAML files)")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    code, out, err = eval_tasks(capsys, "--model", tiny_models["llama"], "--tasks-dir", tasks["dir"])
    assert code == 2 and err.strip() == ("llm-tuning eval: error: --tasks runs EleutherAI's lm-evaluation-harness, "
                                         "which is not installed: pip install 'llm-tuning[harness]'")
    code = main(["eval", "--model", tiny_models["llama"]])
    assert code == 2 and "eval needs --data" in capsys.readouterr().err
