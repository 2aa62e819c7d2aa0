"""An adapter and the base it is put on are checked against each other before any work: an adapter trained on the
5-layer stories260K is refused on the 2-layer tiny model by generate, eval and serve (at start-up), in one line,
exit 2; a base of another name with the same shapes loads with a one-line warning; a plain PEFT adapter (no
llm_tuning.json) is checked from its config and the shapes in its safetensors header."""

import shutil

import pytest

from conftest import SAMPLE, STORIES, need_shared, run_cli


def _train(model, out, **kw):
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    train(TrainConfig(model=model, data=SAMPLE, output_dir=str(out), max_steps=1, batch_size=2, max_length=64,
                      save_steps=10, quiet=True, **kw))
    return str(out)


@pytest.fixture(scope="module")
def stories_adapter(tmp_path_factory):
    return _train(need_shared(STORIES), tmp_path_factory.mktemp("stories") / "lora")


def _refused(r, adapter, base):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    line = r.stderr.strip()
    assert f"adapter {adapter} does not fit the base {base}: " in line
    assert "layers 5 (adapter) vs 2 (base)" in line and "vocabulary 512 (adapter) vs 600 (base)" in line
    assert f"it was trained on {STORIES}" in line


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "Hi", "--max-new-tokens", "2"],
    ["eval", "--data", SAMPLE, "--limit", "2"],
    ["serve", "--port", "18231"],  # refused at start-up: it never listens
], ids=["generate", "eval", "serve"])
def test_an_adapter_of_another_shape_is_refused(stories_adapter, tiny_models, command):
    base = tiny_models["llama"]
    r = run_cli(command[0], "--model", base, "--adapter", (f"s={stories_adapter}" if command[0] == "serve"
                                                          else stories_adapter), *command[1:], timeout=300)
    _refused(r, stories_adapter, base)


def test_a_base_of_another_name_with_equal_shapes_is_a_warning(stories_adapter, tmp_path):
    copy = str(tmp_path / "stories-copy")
    shutil.copytree(STORIES, copy)
    r = run_cli("generate", "--model", copy, "--adapter", stories_adapter, "--prompt", "Once", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == (f"llm-tuning: warning: adapter {stories_adapter} was trained on {STORIES}, not {copy}; "
                                "their shapes agree, so it is loaded")


def _plain_peft(adapter, folder):
    """The adapter as PEFT alone would save it: its config and weights, nothing of ours."""
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(f"{adapter}/{name}", folder / name)
    return str(folder)


def test_a_plain_peft_adapter_is_checked_from_its_header(stories_adapter, tiny_models, tmp_path):
    from llm_tuning import UserError
    from llm_tuning.infer.compat import check_adapter
    from llm_tuning.models import init_model

    plain = _plain_peft(stories_adapter, tmp_path / "plain")
    with pytest.raises(UserError, match=r"layers: the adapter has weights for layer 2 \(from 0\), the base has 2 "):
        check_adapter(plain, tiny_models["llama"])
    check_adapter(plain, STORIES)  # its own base: no complaint

    narrow = str(tmp_path / "narrow")  # the tiny Llama's layers, but 48 wide
    init_model("llama", narrow, tokenizer=tiny_models["llama"], hidden_size=48, seed=0, log=lambda m: None)
    tiny_lora = _plain_peft(_train(tiny_models["llama"], tmp_path / "tiny-lora", lora_r=4), tmp_path / "tiny-plain")
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.q_proj's in features 64 \(adapter\) vs 48 \(base\)"):
        check_adapter(tiny_lora, narrow)

    prefix = _plain_peft(_train(tiny_models["llama"], tmp_path / "prefix", method="prefix"), tmp_path / "pp")
    with pytest.raises(UserError, match=r"layers 2 \(adapter\) vs 5 \(base\)"):  # from PEFT's own config
        check_adapter(prefix, STORIES)
