"""The methods added through the registry resume: a run stopped after its checkpoint at step 2 and resumed ends with
the adapter of the uninterrupted run (PiSSA included: its checkpoints hold the unconverted adapter, which loads
into the re-made PiSSA start; the final adapter is converted in both runs alike)."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import SAMPLE
from llm_tuning.config import TrainConfig
from llm_tuning.train import train


@pytest.mark.parametrize("method", ["dora", "rslora", "pissa", "vera", "oft", "lntuning"])
def test_resumed_run_ends_with_the_uninterrupted_adapter(method, tiny_models, tmp_path):
    def run(out, resume=False):
        return train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method=method, output_dir=str(out),
                                 max_steps=4, save_steps=2, batch_size=2, max_length=64, seed=3, lora_dropout=0.0,
                                 vera_r=16, oft_block_size=16, resume=resume, quiet=True))

    full, cut = tmp_path / "full", tmp_path / "cut"
    run(full)
    shutil.copytree(full, cut)
    for name in os.listdir(cut):  # the same run, stopped after its checkpoint at step 2
        if name not in ("checkpoint-2", "config.yaml", "log.jsonl"):
            (shutil.rmtree if (cut / name).is_dir() else os.remove)(cut / name)
    assert run(cut, resume=True).steps == 4
    a, b = load_file(str(full / "adapter_model.safetensors")), load_file(str(cut / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_resumed_past_the_first_epoch_ends_with_the_uninterrupted_adapter(group_by_length, tiny_models, tmp_path):
    """A checkpoint in the second epoch: the resumed run skips the first epoch without drawing its order, so each
    epoch's order must not depend on the draws before it (length grouping included)."""
    def run(out, resume=False):
        # 82 sample records within 64 tokens, batches of 8: 11 steps an epoch, checkpoint-14 in the second
        return train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, output_dir=str(out), max_steps=16,
                                 save_steps=14, batch_size=8, max_length=64, seed=3, lora_dropout=0.0,
                                 group_by_length=group_by_length, resume=resume, quiet=True))

    full, cut = tmp_path / "full", tmp_path / "cut"
    run(full)
    shutil.copytree(full, cut)
    for name in os.listdir(cut):
        if name not in ("checkpoint-14", "config.yaml", "log.jsonl"):
            (shutil.rmtree if (cut / name).is_dir() else os.remove)(cut / name)
    assert run(cut, resume=True).steps == 16
    a, b = load_file(str(full / "adapter_model.safetensors")), load_file(str(cut / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
