"""The tokenisation cache: a second run with the same data and tokenizer reuses it; any change misses."""

import json

from conftest import LLAMA2_TOKENIZER, SAMPLE, need_shared
from llm_tuning.data.cache import cache_key, tokenized_dataset
from llm_tuning.data.formats import load_records
from llm_tuning.data.tokenize import encode_records, prepare_tokenizer
from llm_tuning.models import load_tokenizer


def test_hit_equals_fresh_encoding_and_changes_miss(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path / "cache"))
    tok = prepare_tokenizer(load_tokenizer(tiny_models["llama"]), log=lambda m: None)
    recs = load_records(SAMPLE).records
    logs = []
    first, dropped = tokenized_dataset(tok, recs, "default", 64, log=logs.append)
    second, dropped2 = tokenized_dataset(tok, recs, "default", 64, log=logs.append)
    assert not any("from the cache" in m for m in logs[:-1]) and "from the cache" in logs[-1]
    enc = encode_records(tok, recs, "default", 64)
    assert list(second["input_ids"]) == enc.input_ids and list(second["labels"]) == enc.labels
    assert dropped == dropped2 == enc.dropped
    key = cache_key(tok, recs, "default", 64)
    assert key != cache_key(tok, recs, "default", 65)
    assert key != cache_key(tok, recs, "llama2", 64)
    assert key != cache_key(tok, recs[:-1], "default", 64)
    # the tiny Bloom's tokenizer is the same BPE (same text, same size): same key; another tokenizer: another key
    same = prepare_tokenizer(load_tokenizer(tiny_models["bloom"]), log=lambda m: None)
    assert key == cache_key(same, recs, "default", 64)
    other = prepare_tokenizer(load_tokenizer(need_shared(LLAMA2_TOKENIZER)), log=lambda m: None)
    assert key != cache_key(other, recs, "default", 64)


def test_cli_second_run_uses_cache(tiny_models, tmp_path):
    from conftest import run_cli

    data = tmp_path / "d.json"
    data.write_text(json.dumps(json.load(open(SAMPLE, encoding="utf-8"))[:10], ensure_ascii=False))
    args = ["train", "--model", tiny_models["bloom"], "--data", str(data), "--method", "lora", "--max-steps", "1",
            "--max-length", "64"]
    r1 = run_cli(*args, "--output-dir", str(tmp_path / "a"))
    r2 = run_cli(*args, "--output-dir", str(tmp_path / "b"))
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert "from the cache" not in r1.stdout and "tokenised data from the cache" in r2.stdout
