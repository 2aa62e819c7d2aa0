"""The Python API's train(): extra Trainer callbacks take part in the run."""


def test_extra_callbacks_see_every_step_and_can_stop_the_run(tiny_models, tmp_path):
    import json

    from transformers import TrainerCallback

    from conftest import SAMPLE
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    class StopAtTwo(TrainerCallback):
        def __init__(self):
            self.steps, self.ended = [], 0

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(state.global_step)
            if state.global_step == 2:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kw):
            self.ended += 1

    cb = StopAtTwo()
    out = tmp_path / "out"
    result = train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method="lora", output_dir=str(out), max_steps=5,
                               batch_size=2, max_length=64, save_steps=100), callbacks=[cb])
    assert cb.steps == [1, 2] and cb.ended == 1
    assert result.steps == 2
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_val_data_with_a_val_size_is_refused_before_any_work(tmp_path):
    import re

    import pytest

    from conftest import SAMPLE
    from llm_tuning.config import TrainConfig
    from llm_tuning.errors import UserError
    from llm_tuning.train import train

    out = tmp_path / "out"
    with pytest.raises(UserError, match=re.escape(f"--val-data {SAMPLE} and --val-size 0.1: ") + ".*not both; drop one"):
        train(TrainConfig(model="no/such/model", data=SAMPLE, val_data=SAMPLE, val_size=0.1, output_dir=str(out)))
    assert not out.exists()


def test_quiet_is_one_runs_own(tiny_models, tmp_path, capsys):
    """train(quiet=True) prints no log line and no progress bar; the process's next run, and the log lines
    after it, are back to normal."""
    from conftest import SAMPLE
    from llm_tuning.config import TrainConfig
    from llm_tuning.log import log
    from llm_tuning.train import train

    def run(name, quiet):
        train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method="lora", output_dir=str(tmp_path / name),
                          max_steps=1, batch_size=2, max_length=64, save_steps=100, quiet=quiet))
        return capsys.readouterr()

    quiet = run("quiet", True)
    assert quiet.out == "" and "training:" not in quiet.err
    log("between the runs")
    loud = run("loud", False)
    assert loud.out.startswith("[llm-tuning] between the runs\n") and "[llm-tuning] data: " in loud.out
    assert f"[llm-tuning] saved the lora adapter, tokenizer, config.yaml and metrics.json to {tmp_path / 'loud'}\n" \
        in loud.out and "training:" in loud.err
