"""`llm-tuning train` on 2 processes (torchrun, DDP over gloo on CPU) equals one process with the same global
batch: per-step loss and final adapter within 1e-5, with the default fused loss and length grouping. Only rank 0
writes the run folder, and --resume continues a run cut off after a checkpoint under DDP."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers
from packaging.version import Version
from safetensors.torch import load_file

from conftest import ROOT, SAMPLE, run_cli
from llm_tuning.train.processes import RESUMES_ON_CPU_PROCESSES

STEPS = 4
TIMEOUT = 600


def _args(model, out, batch_size):
    # dropout 0: each process draws its own dropout masks, so with dropout the runs differ (both are right)
    return ["train", "--model", model, "--data", SAMPLE, "--max-steps", str(STEPS), "--save-steps", "2",
            "--max-length", "64", "--lora-dropout", "0", "--batch-size", str(batch_size), "--output-dir", str(out)]


def _torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llm_tuning", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT, env=env)


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(out):
    return [(e["step"], e["loss"]) for e in _log(out) if "loss" in e]


def _assert_same_run(single, ddp):
    a, b = _losses(single), _losses(ddp)
    assert [s for s, _ in b] == list(range(1, STEPS + 1))  # one line per step: rank 1 wrote none
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= 1e-5, (step, x, y)
    wa = load_file(os.path.join(single, "adapter_model.safetensors"))
    wb = load_file(os.path.join(ddp, "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-5, k


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    model = tiny_models["llama"]
    single, ddp = tmp / "single", tmp / "ddp"
    r = run_cli(*_args(model, single, 4))
    assert r.returncode == 0, r.stderr
    r = _torchrun(*_args(model, ddp, 2))
    assert r.returncode == 0, r.stderr[-3000:]
    return model, single, ddp, r


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    _, single, ddp, r = runs
    _assert_same_run(single, ddp)
    # only rank 0 wrote and logged: one save line, finished checkpoints marked, no leftover temporary folder
    assert r.stdout.count("saved the lora adapter") == 1
    # DDP looks for unused parameters only where a method could have some: none of ours has (ddp_find_unused_parameters)
    assert "find_unused_parameters=True" not in r.stderr
    assert r.stdout.count("data: ") == 1
    assert os.path.exists(os.path.join(ddp, "llm_tuning.json")) and not os.path.exists(os.path.join(ddp, ".final-tmp"))
    for step in (2, 4):
        ckpt = os.path.join(ddp, f"checkpoint-{step}")
        assert sorted(f for f in os.listdir(ckpt) if f.startswith("rng_state")) == ["rng_state_0.pth", "rng_state_1.pth"]
        assert os.path.exists(os.path.join(ckpt, "COMPLETE"))
    with open(os.path.join(ddp, "metrics.json")) as f:
        assert json.load(f)["steps"] == STEPS


@pytest.mark.skipif(Version(transformers.__version__) < Version(RESUMES_ON_CPU_PROCESSES),
                    reason="transformers < 5.18 cannot resume under several CPU processes (the test below)")
def test_resume_under_two_processes(runs, tmp_path):
    model, single, ddp, _ = runs
    # the folder a kill during the save of step 4 leaves: checkpoint-4 without its marker, no final artefacts,
    # the log up to step 2 (or further: a resumed run appends from its checkpoint on)
    cut = tmp_path / "cut"
    shutil.copytree(ddp, cut)
    os.remove(cut / "checkpoint-4" / "COMPLETE")
    for name in ("adapter_model.safetensors", "adapter_config.json", "llm_tuning.json", "metrics.json"):
        os.remove(cut / name)
    kept = [e for e in _log(cut) if e["step"] <= 2]
    with open(cut / "log.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in kept)
    r = _torchrun(*_args(model, cut, 2), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(f"removing {cut / 'checkpoint-4'}: its save never finished") == 1
    assert f"resuming from {cut / 'checkpoint-2'}" in r.stdout
    _assert_same_run(single, cut)


def test_resume_under_processes_needs_a_transformers_that_can(runs, tmp_path, monkeypatch):
    """transformers 5.17 and earlier put a resumed optimizer state on "cpu:0" under several CPU processes, which
    torch cannot load (seen with 5.17, the GPU image's): rank 0 says so in one line before touching the folder."""
    import transformers  # now: importing peft 0.21 puts a new transformers module in sys.modules (seen here)

    from llm_tuning.errors import UserError
    from llm_tuning.train.rundir import prepare_output_dir

    cut = tmp_path / "cut"
    shutil.copytree(runs[2], cut)
    os.remove(cut / "checkpoint-4" / "COMPLETE")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(UserError, match=r"--resume under 2 processes on a CPU needs transformers >= 5\.18 "
                                        r"\(transformers 5\.17\.0 cannot"):
        prepare_output_dir(str(cut), resume=True, overwrite=False)
    assert (cut / "checkpoint-4").is_dir()  # the unfinished checkpoint is still there
    monkeypatch.setattr(transformers, "__version__", "5.18.0")
    assert prepare_output_dir(str(cut), resume=True, overwrite=False) == str(cut / "checkpoint-2")
    assert not (cut / "checkpoint-4").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")  # one process: its optimizer state goes to "cpu"
    assert prepare_output_dir(str(cut), resume=True, overwrite=False) == str(cut / "checkpoint-2")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_equal_one_process(runs, tmp_path):
    """Two machines rehearsed on this one, through examples/slurm/train.sbatch: stand-ins for Slurm's scontrol and
    srun (srun starts its command once per node, as Slurm does with --ntasks-per-node=1) give two torchrun agents
    (--nnodes 2, one process each) meeting at a c10d rendezvous on 127.0.0.1."""
    model, single, _, _ = runs
    script = os.path.join(ROOT, "examples", "slurm", "train.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1; echo node-b\n")
    # srun: drop its own options, start the command on each of the SLURM_NNODES "nodes", fail if one does
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'for n in $(seq 1 "$SLURM_NNODES"); do "$@" > "node$n.out" 2>&1 & done\n'
                                  'for job in $(jobs -p); do wait "$job" || exit 1; done\n')
    for tool in ("scontrol", "srun"):
        os.chmod(bin_dir / tool, 0o755)
    out = tmp_path / "two-nodes"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "1",
           "NPROC_PER_NODE": "1", "RDZV_PORT": str(_free_port())}
    r = subprocess.run(["bash", script, *_args(model, out, 2)[1:]], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=TIMEOUT)
    logs = [(tmp_path / f"node{n}.out").read_text() if (tmp_path / f"node{n}.out").exists() else "" for n in (1, 2)]
    assert r.returncode == 0, (r.stderr[-2000:], [log[-3000:] for log in logs])
    _assert_same_run(single, out)
    # one of the two nodes is rank 0 (under c10d the first to arrive): it alone logged
    assert sum(log.count("saved the lora adapter") for log in logs) == 1


def _accelerate_launch(tmp_path, *launch_args):
    """`accelerate launch ... llm-tuning train` on a model folder that does not exist: the run stops right after
    its launch warnings."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", *launch_args, "-m", "llm_tuning", "train", "--model", str(tmp_path / "absent"),
           "--data", SAMPLE, "--output-dir", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert r.returncode != 0 and "no such model folder" in r.stderr
    return r


def test_accelerate_cpu_launch_of_one_process_says_so(tmp_path):
    """accelerate 1.15's `launch --cpu --num_processes 2` starts one plain process: the run says so."""
    r = _accelerate_launch(tmp_path, "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                           "--dynamo_backend", "no")
    warning = [line for line in r.stdout.splitlines() if "accelerate launch was asked for 2 processes" in line]
    assert len(warning) == 1 and "torchrun --nproc_per_node N" in warning[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="FSDP runs on GPUs")
def test_fsdp_config_on_cpu_says_it_runs_ddp(tmp_path):
    r = _accelerate_launch(tmp_path, "--config_file", os.path.join(ROOT, "examples", "accelerate", "fsdp.yaml"))
    # two processes (the config's num_processes), rank 0 alone prints: one warning line
    assert r.stdout.count("accelerate enables FSDP on GPUs (and other accelerators) only") == 1


def test_shipped_accelerate_configs_load():
    """examples/accelerate/: each YAML loads as accelerate reads it; the DeepSpeed JSONs load into accelerate's
    DeepSpeedPlugin at their ZeRO stage (DeepSpeed itself is not installed here: GPU only)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    folder = os.path.join(ROOT, "examples", "accelerate")
    kinds = {"ddp_cpu": "MULTI_GPU", "ddp_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED",
             "deepspeed_zero3": "DEEPSPEED"}
    for name, kind in kinds.items():
        c = load_config_from_file(os.path.join(folder, f"{name}.yaml"))
        assert str(c.distributed_type).endswith(kind) and c.num_processes == 2, name
    assert load_config_from_file(os.path.join(folder, "fsdp.yaml")).fsdp_config["fsdp_version"] == 2
    for stage in (2, 3):
        c = load_config_from_file(os.path.join(folder, f"deepspeed_zero{stage}.yaml"))
        path = c.deepspeed_config["deepspeed_config_file"]
        assert path == f"examples/accelerate/ds_zero{stage}.json"  # relative to the project root
        plugin = DeepSpeedPlugin(hf_ds_config=os.path.join(ROOT, path), zero3_init_flag=c.deepspeed_config["zero3_init_flag"])
        assert plugin.zero_stage == stage and plugin.hf_ds_config.is_zero3() == (stage == 3)


def test_fsdp_config_builds_accelerates_fsdp2_plugin(monkeypatch):
    """examples/accelerate/fsdp.yaml cannot train here (accelerate enables FSDP on accelerator devices only:
    docs/distributed.md names the line), so it is checked the way `accelerate launch` reads it: the launcher's own
    argument validation and environment, then the FSDP plugin the Trainer's accelerator builds from that
    environment: FSDP2, one shard unit per decoder layer, parameters resharded after the forward, the state dict
    saved whole, rank 0 loading the weights."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    config = os.path.join(ROOT, "examples", "accelerate", "fsdp.yaml")
    args = launch_command_parser().parse_args(["--config_file", config, "--main_process_port", "0", "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 2
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "no"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.cpu_ram_efficient_loading and not plugin.activation_checkpointing
