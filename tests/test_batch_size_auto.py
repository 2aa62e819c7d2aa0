"""`--batch-size auto`: the largest micro-batch (at most 64) whose estimated memory fits in 90 % of the memory
there is; the run trains and records the batch it chose; too little memory for one example is one line.
`--checkpoint-every auto`: the fewest layers recomputed that fit, at that batch."""

import json

import yaml

import pytest

from conftest import SAMPLE, run_cli
from llm_tuning.config import TrainConfig
from llm_tuning.errors import UserError
from llm_tuning.memory.sizing import (HEADROOM, LIMIT, needed_bytes, resolve_auto, resolve_batch_size,
                                      resolve_checkpoint_every)


def _cfg(model, **kw):
    return TrainConfig(model=model, data=SAMPLE, output_dir="-", batch_size="auto", max_length=64, **kw)


@pytest.mark.parametrize("cuda", [False, True])
def test_the_batch_chosen_is_the_largest_whose_estimate_fits(tiny_models, cuda):
    cfg = _cfg(tiny_models["llama"], method="lora")
    assert cfg.batch_size == 0  # "auto" read as the option declares it
    per = [needed_bytes(cfg, b, cuda) for b in (1, 2, 3, 4, 5, 6)]
    assert per == sorted(per) and per[0] < per[-1]  # the estimate grows with the batch
    memory = int((per[3] + per[4]) / 2 / HEADROOM)  # room for 4 examples, not 5
    said = []
    chosen = resolve_batch_size(cfg, said.append, memory=(memory, "given"), cuda=cuda)
    assert chosen.batch_size == 4 and chosen.method == "lora"
    assert said and said[0].startswith("batch size auto: 4 (estimated ")
    assert resolve_batch_size(cfg, said.append, memory=(10**15, "given"), cuda=cuda).batch_size == LIMIT
    assert "capped at 64" in said[-1]


def test_too_little_memory_for_one_example_is_one_line(tiny_models):
    cfg = _cfg(tiny_models["bloom"], method="full")
    with pytest.raises(UserError, match=r"--batch-size auto: one example of --max-length 64 is estimated at .*; "
                                        r"lower --max-length"):
        resolve_batch_size(cfg, print, memory=(1000, "given"), cuda=False)
    r = run_cli("estimate", "--model", "llama-2-7b", "--device", "cuda", "--batch-size", "auto", "--memory", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "one example of --max-length 512" in r.stderr


def test_train_with_batch_size_auto_records_the_batch_it_chose(tiny_models, tmp_path, capsys):
    from llm_tuning.train import train

    out = tmp_path / "run"
    cfg = TrainConfig(model=tiny_models["llama"], data=SAMPLE, output_dir=str(out), batch_size="auto",
                      max_length=64, max_steps=2, save_steps=10**6)
    result = train(cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert result.steps == 2 and 1 <= saved["batch_size"] <= LIMIT
    assert f"batch size auto: {saved['batch_size']} (estimated " in capsys.readouterr().out


def test_a_model_the_estimate_cannot_size_is_one_line_and_a_bug_in_it_is_not(tmp_path, monkeypatch):
    """An unknown architecture or an unreadable config.json is the user's to fix: one line naming the flag. An
    estimator that fails otherwise (here a method file's footprint with a TypeError) is a bug, and must not read
    as bad input."""
    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    for model in (gpt2, garbled):
        with pytest.raises(UserError, match=r"--batch-size auto: the memory estimate cannot size this model \(.+\); "
                                            r"give --batch-size N"):
            resolve_batch_size(_cfg(str(model)), print, memory=(2**40, "given"), cuda=False)

    from llm_tuning.methods import METHODS

    class BrokenFootprint(type(METHODS["lora"])):
        def footprint(self, arch, cfg):
            raise TypeError("a bug in the method's footprint")

    monkeypatch.setitem(METHODS, "lora", BrokenFootprint())
    with pytest.raises(TypeError, match="a bug in the method's footprint"):
        resolve_batch_size(_cfg("llama-2-7b", method="lora"), print, memory=(2**40, "given"), cuda=False)
    with pytest.raises(TypeError, match="a bug in the method's footprint"):
        resolve_checkpoint_every(_ckpt_cfg(), print, memory=(2**40, "given"), cuda=True)


# ---------------------------------------------------------------- --checkpoint-every auto

def _ckpt_cfg(**kw):
    base = dict(model="llama-2-7b", data=SAMPLE, output_dir="-", precision="fp16", batch_size=4, max_length=512,
                gradient_checkpointing=True, checkpoint_every="auto")
    return TrainConfig(**{**base, **kw})


def test_checkpoint_every_auto_recomputes_the_fewest_layers_that_fit():
    import dataclasses

    cfg = _ckpt_cfg()
    assert cfg.checkpoint_every == 0  # "auto" read as the option declares it
    need = {n: needed_bytes(dataclasses.replace(cfg, checkpoint_every=n), 4, True) for n in range(1, 33)}
    assert need[1] < need[2] < need[3] < need[4] < need[32]  # each layer kept costs memory
    memory = int((need[3] + need[4]) / 2 / HEADROOM)  # room for one layer in 3 checkpointed, not one in 4
    said = []
    chosen = resolve_checkpoint_every(cfg, said.append, memory=(memory, "given"), cuda=True)
    assert chosen.checkpoint_every == max(n for n, b in need.items() if b <= memory * HEADROOM) == 3
    assert said == [said[0]] and said[0].startswith("checkpoint every auto: 3 (11 of 32 layers recomputed; estimated ")
    roomy = resolve_checkpoint_every(cfg, said.append, memory=(10**15, "given"), cuda=True).checkpoint_every
    assert roomy == 32  # only the first layer checkpointed: N = 31 would also recompute the last one, for more memory
    with pytest.raises(UserError, match=r"--checkpoint-every auto: with every layer checkpointed, batch 4 x 512 is "
                                        r"estimated at 14\.\d\d GiB, more than .*; lower --batch-size"):
        resolve_checkpoint_every(cfg, said.append, memory=(need[1] - 1, "given"), cuda=True)


def test_checkpoint_every_auto_from_the_command_line(tiny_models, tmp_path):
    r = run_cli("estimate", "--model", "llama-2-7b", "--precision", "fp16", "--gradient-checkpointing",
                "--checkpoint-every", "auto", "--batch-size", "auto", "--device", "cuda", "--memory", "24", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("batch size auto: ") and lines[1].startswith("checkpoint every auto: ")
    assert json.loads(r.stdout)["total"] <= HEADROOM * 24 * 2**30
    r = run_cli("estimate", "--model", "llama-2-7b", "--checkpoint-every", "auto")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "llm-tuning estimate: error: --checkpoint-every auto: needs --gradient-checkpointing (it says which layers to "
        "checkpoint); add it, or drop --checkpoint-every"]
    out = tmp_path / "run"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", SAMPLE, "--output-dir", str(out), "--max-steps",
                "1", "--max-length", "64", "--gradient-checkpointing", "--checkpoint-every", "auto")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["checkpoint_every"] >= 1
    assert f"checkpoint every auto: {saved['checkpoint_every']} (" in r.stdout

