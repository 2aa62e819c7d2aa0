"""`--batch-size auto`: the largest micro-batch (at most 64) whose estimated memory fits in 90 % of the memory
there is; the run trains and records the batch it chose; too little memory for one example is one line."""

import yaml

import pytest

from conftest import SAMPLE, run_cli
from llm_tuning.config import TrainConfig
from llm_tuning.errors import UserError
from llm_tuning.train.batch_size import HEADROOM, LIMIT, needed_bytes, resolve_batch_size


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
