"""`llm-tuning estimate`: parameter counts exact, activations equal to what autograd keeps, and the total within
15 % of the peak memory of real training steps measured on this machine."""

import copy
import gc
import json
import weakref
import os
import re
import subprocess
import sys

import pytest
import torch

from llm_tuning.errors import UserError
from llm_tuning.config import EstimateConfig
from llm_tuning.cli.estimate import print_estimate
from llm_tuning.memory.cpu_estimate import estimate
from llm_tuning.memory.params import trainable_params
from llm_tuning.models.arch import PRESETS, count_params

GiB, MiB = 2**30, 2**20

# The measured model: a random Llama of ~21M parameters, big enough that the runtime's noise is small next to
# the ~100-250 MiB it trains in, small enough for 3 steps in ~10 s on 2 cores.
LLAMA = dict(model_type="llama", vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=8)
BATCH, LENGTH = 4, 128
TINY_LLAMA_GQA = dict(model_type="llama", vocab_size=3000, hidden_size=256, intermediate_size=688,
                      num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4)
TINY_BLOOM = dict(model_type="bloom", vocab_size=3000, hidden_size=256, n_layer=3, n_head=8)

VARIANTS = {  # name -> (method, options)
    "full": ("full", {}),
    "bitfit": ("bitfit", {}),
    "prompt": ("prompt", {"prompt_init": "random"}),
    "ptuning-mlp": ("ptuning", {"encoder": "mlp", "encoder_hidden_size": 96}),
    "ptuning-lstm": ("ptuning", {"encoder": "lstm", "encoder_hidden_size": 48}),
    "prefix": ("prefix", {}),
    "prefix-proj": ("prefix", {"prefix_projection": True, "encoder_hidden_size": 64}),
    "lora": ("lora", {}),
    "lora-r4-mlp": ("lora", {"lora_r": 4, "target_modules": "mlp"}),
    "ia3": ("ia3", {}),
    "ia3-custom": ("ia3", {"target_modules": "custom"}),
    "dora": ("dora", {}),
    "rslora": ("rslora", {}),
    "pissa": ("pissa", {}),
    "vera": ("vera", {"vera_r": 32}),
    "oft": ("oft", {}),
    "oft-mlp": ("oft", {"target_modules": "mlp", "oft_block_size": 16}),
    "lntuning": ("lntuning", {}),
}
TARGETS = {  # per family: LoRA MLP targets, IA3 custom targets (one feed-forward)
    "llama": (["gate_proj", "up_proj", "down_proj"], ["q_proj", "o_proj", "down_proj"]),
    "bloom": (["dense_h_to_4h", "dense_4h_to_h"], ["dense", "dense_4h_to_h"]),
}


def _options(variant, family):
    method, opts = VARIANTS[variant]
    opts = dict(opts)
    if opts.get("target_modules") == "mlp":
        opts["target_modules"] = TARGETS[family][0]
    elif opts.get("target_modules") == "custom":
        opts["target_modules"] = TARGETS[family][1]
    return method, opts


def _build(config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {k: v for k, v in config.items() if k != "model_type"}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **kw))


def _apply(model, method, opts):
    """The project's method on a config-built model (prefix: PEFT's own init; ours reads a tokenizer folder)."""
    from llm_tuning.config import TrainConfig
    from llm_tuning.methods import get_method

    cfg = TrainConfig(model="-", data="-", output_dir="-", method=method, **opts)
    m = get_method(method)
    if method == "prefix":
        from peft import get_peft_model

        return get_peft_model(model, m.peft_config(model, cfg))
    return m.apply(model, cfg)


# ---------------------------------------------------------------- parameter counts


def test_presets_match_the_published_models():
    assert count_params("llama-2-7b") == 6_738_415_616
    assert count_params("bloom-1b4") == 1_303_111_680  # Langboat/bloom-1b4-zh
    assert trainable_params("bloom-1b4", "bitfit") == 544_768  # BitFit on it trains 0.0418 %
    assert trainable_params("bloom-1b4", "prompt", {"num_virtual_tokens": 7}) == 14_336
    assert trainable_params("llama-2-7b", "lora") == 4_194_304  # r=8 on q_proj and v_proj
    assert set(PRESETS) == {"bloom-1b4", "llama-2-7b"}


@pytest.mark.parametrize("config", [LLAMA, TINY_LLAMA_GQA, TINY_BLOOM], ids=["llama", "llama-gqa", "bloom"])
def test_parameter_counts_equal_the_real_models(config):
    torch.manual_seed(0)
    base = _build(config)
    assert count_params(config) == sum(p.numel() for p in base.parameters())
    family = "bloom" if config["model_type"] == "bloom" else "llama"
    for variant in VARIANTS:
        method, opts = _options(variant, family)
        model = _apply(copy.deepcopy(base), method, opts)
        real = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable_params(config, method, opts) == real, variant


# ---------------------------------------------------------------- activations = what autograd keeps


def _saved_bytes(config, method, precision, opts, sdpa=False):
    """Bytes of the distinct tensors autograd keeps for the backward (parameters excluded), with the loss path
    train.py takes: fastloss.py's fused output layer + loss for full/BitFit/LoRA/IA3 unless fast_loss is off.
    sdpa: Bloom with the project's SDPA attention (models/speedups.py), as train runs it."""
    from llm_tuning.methods import get_method
    from llm_tuning.models.speedups import speed_up
    from llm_tuning.train.fastloss import response_loss_sum

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    base = _build(config).to(dtype)
    if sdpa:
        assert speed_up(base) == 2 * config["n_layer"]  # every layer's attention and GeLU replaced
    model = _apply(base, method, opts)
    if precision != "fp32" and not get_method(method).in_base_dtype:  # Method.prepare: fp32 adapter weights
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    # weights and frozen adapter tensors (VeRA's shared projections) are memory of their own, not activations
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    kept = {}  # (storage address, bytes) -> (its bytes, the saved tensors viewing it): an address freed during the
    # forward may be handed to another storage, counted apart unless of the same size (then never both alive)

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept.setdefault((s.data_ptr(), s.nbytes()), (s.nbytes(), []))[1].append(weakref.ref(t))
        return t

    model.train()
    ids = torch.randint(3, config["vocab_size"], (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if opts.get("fast_loss", True) and get_method(method).fast_loss:
            total, n = response_loss_sum(model, ids, None, ids)
            loss = total / n
        else:
            loss = model(input_ids=ids, labels=ids).loss
    # what is still alive when the backward starts: a graph the loss does not reach (DoRA's weight norm, computed
    # from a detached update) was freed with its tensors during the forward
    gc.collect()  # a graph in a reference cycle is freed by the collector, not at once
    alive = sum(n for n, refs in kept.values() if any(r() is not None for r in refs))
    loss.backward()
    return alive


@pytest.mark.parametrize("config", [TINY_LLAMA_GQA, TINY_BLOOM], ids=["llama-gqa", "bloom"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["full", "bitfit", "prompt", "prefix", "lora", "ia3-custom", "full-stock-loss",
                                     "lora-stock-loss", "dora", "vera", "oft", "lntuning"])
def test_activations_are_what_autograd_keeps(variant, precision, config):
    family = "bloom" if config["model_type"] == "bloom" else "llama"
    stock = variant.endswith("-stock-loss")
    method, opts = _options(variant.removesuffix("-stock-loss"), family)
    if stock:
        opts["fast_loss"] = False
    real = _saved_bytes(config, method, precision, opts)
    est = estimate(config, method, precision, batch_size=2, max_length=64, opts=opts)["activations"]
    assert abs(est - real) <= 0.02 * real, (est, real)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["full", "bitfit", "prompt", "prefix", "prefix-proj", "lora", "ia3", "ptuning-mlp"])
def test_bloom_sdpa_activations_are_what_autograd_keeps(variant, precision):
    """The walk of Bloom's attention as the project's SDPA replacement (what train runs and the CUDA estimate
    assumes): q, k, v as views of the fused projection, the output, a logsumexp, one bias for every layer."""
    method, opts = _options(variant, "bloom")
    real = _saved_bytes(TINY_BLOOM, method, precision, opts, sdpa=True)
    est = estimate(TINY_BLOOM, method, precision, batch_size=2, max_length=64, opts=opts, bloom_sdpa=True)
    assert abs(est["activations"] - real) <= 0.02 * real, (est["activations"], real)


@pytest.mark.parametrize("speedups", [True, False], ids=["sdpa", "eager"])
@pytest.mark.parametrize("variant", ["lora", "prefix", "prompt-random", "ia3"])
def test_8bit_bloom_activations_are_what_autograd_and_bitsandbytes_keep(variant, speedups, tiny_models):
    """Over an 8-bit base (train's own loading and method steps): autograd's saved tensors plus the inputs
    bitsandbytes' 8-bit matmuls hold on their autograd nodes, against the walk with Bloom's SDPA or eager attention."""
    from helpers import int8_inputs, make_cfg

    from llm_tuning.data.tokenize import prepare_tokenizer
    from llm_tuning.methods import get_method
    from llm_tuning.models import load_tokenizer
    from llm_tuning.train import loop
    from llm_tuning.train.fastloss import response_loss_sum

    path = tiny_models["bloom"]
    cfg = make_cfg(path, variant)
    cfg.quantization, cfg.speedups = "8bit", speedups
    chosen = get_method(cfg.method)
    torch.manual_seed(0)
    model = loop.method(cfg, chosen, loop.model(cfg, chosen, prepare_tokenizer(load_tokenizer(path), log=print)))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[(s.data_ptr(), s.nbytes())] = t
        return t

    ids = torch.randint(3, 600, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, n = response_loss_sum(model, ids, None, ids)
    gc.collect()
    saved = {ptr for ptr, _ in kept}
    real = sum(nbytes for _, nbytes in kept) + sum(b for ptr, b in int8_inputs(total).items() if ptr not in saved)
    est = estimate(path, cfg.method, "fp32", "8bit", 2, 64, False, cfg, bloom_sdpa=speedups)["activations"]
    assert abs(est - real) <= 0.01 * real, (est, real)


# ---------------------------------------------------------------- peak memory of real training steps

SCRIPT = r"""
import gc, json, resource, sys
import torch
import peft
from transformers import AutoConfig, AutoModelForCausalLM
from llm_tuning.config import TrainConfig
from llm_tuning.methods import get_method
from llm_tuning.train.fastloss import response_loss_sum


def prepare(spec, config):
    cfg = TrainConfig(model="-", data="-", output_dir="-", method=spec["method"], precision=spec["precision"],
                      gradient_checkpointing=spec["gradient_checkpointing"], **spec["opts"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]
    m = get_method(cfg.method)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec["config"]["model_type"], **config), dtype=dtype)
    if cfg.method == "prefix":  # PEFT's own init (ours reads a tokenizer folder), with the method's checkpointing
        apply = lambda base: peft.get_peft_model(base, m.peft_config(base, cfg))  # noqa: E731
        model = m.enable_checkpointing(model, apply, cfg.checkpoint_every) if cfg.gradient_checkpointing else apply(model)
    else:
        model = m.prepare(model, cfg)
    model.train()
    return model, cfg.fast_loss and m.fast_loss


def loss_of(model, ids, fast):
    if fast:  # as train.py's Trainer for these methods: fused, chunked output layer + loss (fastloss.py)
        total, n = response_loss_sum(model, ids, None, ids)
        return total / n
    return model(input_ids=ids, labels=ids).loss


def train(model, fast, ids, steps):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(steps):
        loss = loss_of(model, ids, fast)
        loss.backward()
        opt.step()
        opt.zero_grad()


def high_water():
    # Peak RSS of this process's memory, in bytes. Linux's ru_maxrss also remembers the RSS of the process that
    # forked us (here: pytest, already large), so read the per-process VmHWM, reset to the current RSS first.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_high_water():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass


def measure(spec):
    config = {k: v for k, v in spec["config"].items() if k != "model_type"}
    torch.manual_seed(0)
    ids = torch.randint(3, config["vocab_size"], (spec["batch_size"], spec["max_length"]))
    gc.collect()
    reset_high_water()
    before = high_water()
    model, fast = prepare(spec, config)
    train(model, fast, ids, 3)
    return high_water() - before


specs = json.loads(sys.argv[1])
# Warm-up on a tiny model: the runtime's own first-use memory (kernel code pages, thread pools) is not tensors.
first = specs[0]
tiny = dict(first["config"], vocab_size=64, hidden_size=64)
for key, value in (("intermediate_size", 128), ("num_hidden_layers", 1), ("n_layer", 1), ("num_attention_heads", 2),
                   ("num_key_value_heads", 2), ("n_head", 2)):
    if key in tiny:
        tiny[key] = value
model, fast = prepare(dict(first, gradient_checkpointing=False, opts={}), {k: v for k, v in tiny.items() if k != "model_type"})
train(model, fast, torch.randint(3, 64, (2, 16)), 1)
del model
for spec in specs:  # one after another: each one's tensors are freed (returned to the system) before the next
    print("RESULT " + json.dumps({"peak_growth": measure(spec)}), flush=True)
"""


def measure_peaks(specs: list[dict]) -> list[int]:
    """Peak RSS growth (bytes) of 3 AdamW steps for each spec (method, gradient_checkpointing, opts, config,
    precision, batch_size, max_length), one after another in one fresh process, with the caches of two libraries
    off so that RSS follows the live tensors (as a CUDA allocator's allocated bytes do), not allocation history:
    glibc's heap keeps freed tensors' pages (a fixed mmap threshold gives each tensor its own mapping, returned
    on free, so one spec's tensors are gone before the next), and MKL's memory manager keeps its GEMM packing
    buffers (~15 MiB here) after the first step."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MKL_DISABLE_FAST_MM="1",
               OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(specs)], capture_output=True, text=True, env=env,
                       timeout=900)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == len(specs), r.stderr[-3000:]
    return [json.loads(l[7:])["peak_growth"] for l in lines]


PEAK_CASES = {  # id -> (method, gradient checkpointing, options)
    "lora": ("lora", False, {}), "full": ("full", False, {}), "prefix": ("prefix", False, {}),
    "lora-checkpointing": ("lora", True, {}), "full-stock-loss": ("full", False, {"fast_loss": False}),
    "prefix-projection": ("prefix", False, {"prefix_projection": True}),
    "ptuning-lstm": ("ptuning", False, {"encoder": "lstm"}), "dora": ("dora", False, {}), "vera": ("vera", False, {}),
    "oft": ("oft", False, {}), "lntuning": ("lntuning", False, {}),
    "lora-checkpoint-every-2": ("lora", True, {"checkpoint_every": 2}),
    "lora-checkpoint-every-3": ("lora", True, {"checkpoint_every": 3}),
}


@pytest.fixture(scope="module")
def measured_peaks():
    """Every case's peak, measured in one process (a process each would spend ~8 s per case importing torch)."""
    specs = [dict(method=m, gradient_checkpointing=gc_, opts=o, config=LLAMA, precision="fp32", batch_size=BATCH,
                  max_length=LENGTH) for m, gc_, o in PEAK_CASES.values()]
    return dict(zip(PEAK_CASES, measure_peaks(specs)))


@pytest.mark.parametrize("case", list(PEAK_CASES))
def test_estimate_within_15_percent_of_measured_peak(case, measured_peaks):
    """lora and full take train.py's fused output layer + loss (fastloss.py), prefix the stock causal-LM loss."""
    method, checkpointing, opts = PEAK_CASES[case]
    measured = measured_peaks[case]
    est = estimate(LLAMA, method, "fp32", batch_size=BATCH, max_length=LENGTH, gradient_checkpointing=checkpointing,
                   opts=opts)["tensors"]  # measured: the peak's growth from the RSS before, the runtime excluded
    err = est / measured - 1
    print(f"{case}: measured {measured / MiB:.1f} MiB, estimated {est / MiB:.1f} MiB ({100 * err:+.1f} %)")
    assert abs(err) <= 0.15, (est / MiB, measured / MiB)


# ---------------------------------------------------------------- the command


def _args(**kw):
    base = dict(model="llama-2-7b", method="lora", precision="fp16", quantization=None, batch_size=1,
                max_length=512, gradient_checkpointing=False, json=True)
    base.update(kw)
    return EstimateConfig(**base)


def _total(capsys, key="total", **kw):
    print_estimate(_args(**kw))
    return json.loads(capsys.readouterr().out)[key]


def test_cli_llama_2_7b_lora(capsys):
    fp16 = _total(capsys)
    assert 13 * GiB <= fp16 <= 20 * GiB, fp16 / GiB  # 12.6 GiB of fp16 weights, plus what training adds
    int8, nf4 = _total(capsys, "training", quantization="8bit"), _total(capsys, "training", quantization="4bit")
    assert nf4 < int8 < fp16, (nf4 / GiB, int8 / GiB, fp16 / GiB)
    # quantising the fp16 checkpoint while it loads peaks above training: its pages beside the quantised weights
    assert _total(capsys, quantization="4bit") == _total(capsys, "loading", quantization="4bit") > fp16
    assert _total(capsys, gradient_checkpointing=True) < fp16
    print_estimate(_args(json=False))
    table = capsys.readouterr().out
    assert "base weights" in table and "GiB" in table and "total" in table
    est = estimate("llama-2-7b", "lora", "fp16", quantization="4bit")
    assert est["quantisation_savings"] > 0
    assert est["training"] == sum(est[k] for k in ("runtime", "weights", "trainable_weights", "gradients", "optimizer",
                                                "activations", "overhead", "freed_before_peak"))


def test_checkpoint_every_trades_memory_back_as_measured(capsys):
    """--checkpoint-every N keeps the activations of the layers not checkpointed: Llama-2-7B's peak grows with N
    between every layer checkpointed and none. N = 31 checkpoints layers 0 and 31, one more than N = 32, yet
    peaks higher: the last layer's recomputation runs with layers 1-30 all kept. (At 4 layers the measured peaks
    of N = 3 and N = 4 were equal within 1 %: checkpointing the last layer saved nothing there either.)"""
    kw = dict(batch_size=4, max_length=512)
    off = _total(capsys, "training", **kw)
    every = {n: _total(capsys, "training", gradient_checkpointing=True, checkpoint_every=n, **kw)
             for n in (1, 2, 4, 8, 31, 32)}
    assert every[1] < every[2] < every[4] < every[32] < off, every
    assert every[31] > every[32], every
    print_estimate(_args(json=False, gradient_checkpointing=True, checkpoint_every=2, **kw))
    out = capsys.readouterr().out
    assert "gradient checkpointing (one layer in 2)" in out
    # the table's last line: what each choice would cost, the same figures as asked one by one
    line = next(l for l in out.splitlines() if l.strip().startswith("training peak by --checkpoint-every: "))
    shown = dict(re.findall(r"(\w+): (\d+\.\d\d) GiB", line))
    assert list(shown) == ["1", "2", "4", "8", "none"]
    assert all(abs(float(shown[str(n)]) - every[n] / GiB) < 0.006 for n in (1, 2, 4, 8))
    assert abs(float(shown["none"]) - off / GiB) < 0.006
    with pytest.raises(UserError, match="--checkpoint-every 2: needs --gradient-checkpointing"):
        print_estimate(_args(checkpoint_every=2))


def test_cli_bloom_preset_every_method(capsys):
    for method in ("full", "bitfit", "prompt", "ptuning", "prefix", "lora", "ia3"):
        total = _total(capsys, model="bloom-1b4", method=method, precision="fp32")
        assert total > count_params("bloom-1b4") * 4
    # the stock loss holds batch x length x 46,145 logits, as fp32 at least twice (copy for the loss, log-probs)
    fast, stock = _total(capsys, model="bloom-1b4", batch_size=4), _total(capsys, model="bloom-1b4", batch_size=4,
                                                                        fast_loss=False)
    assert stock - fast > 2 * 4 * 512 * 46145 * 4


def test_bad_input_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="method"):
        estimate("llama-2-7b", "adapter-x")
    with pytest.raises(ValueError, match="gpt2"):  # a ValueError for Python callers too
        trainable_params({"model_type": "gpt2", "vocab_size": 10}, "lora")
    with pytest.raises(UserError, match="no such model folder"):
        print_estimate(_args(model=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="quantization"):
        estimate("llama-2-7b", "full", "fp16", quantization="4bit")
    with pytest.raises(UserError, match="precision"):
        estimate("llama-2-7b", "lora", "fp8")
    with pytest.raises(UserError, match="not a linear layer"):
        trainable_params("llama-2-7b", "lora", {"target_modules": ["query_key_value"]})
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(dict(TINY_BLOOM)))
    assert estimate(str(tmp_path / "cfg"), "lora")["total_params"] == count_params(TINY_BLOOM)


@pytest.mark.parametrize("method,option,plain", [("prefix", "--prefix-projection", []),
                                                  ("ptuning", "--encoder", ["mlp"])])
def test_cli_models_the_encoder_options(method, option, plain):
    """--prefix-projection and --encoder lstm change the estimate by the encoder's weights, gradients and AdamW
    states (all fp32 for a PEFT method), nothing else of the static terms."""
    from conftest import run_cli

    value = [] if method == "prefix" else ["lstm"]

    def est(*extra):
        r = run_cli("estimate", "--model", "bloom-1b4", "--method", method, "--json", *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    base, changed = est(*([option, *plain] if plain else [])), est(option, *value)
    extra_params = changed["trainable_params"] - base["trainable_params"]
    opts = {"prefix_projection": True} if method == "prefix" else {"encoder": "lstm"}
    assert extra_params == trainable_params("bloom-1b4", method, opts) - trainable_params("bloom-1b4", method) > 0
    for key, per_param in (("trainable_weights", 4), ("gradients", 4), ("optimizer", 8)):
        assert changed[key] - base[key] == per_param * extra_params, key
    assert changed["weights"] == base["weights"]


LOAD_SCRIPT = r"""
import json, sys
import torch, transformers.models.llama.modeling_llama  # the runtime: imported before the reset
from llm_tuning.models import load_model
from llm_tuning.memory.process import peak_rss_mib, reset_peak_rss_mib
before = reset_peak_rss_mib()  # after the imports: what the load alone adds
model = load_model(sys.argv[1], precision=sys.argv[2])
print("RESULT " + json.dumps({"growth_mib": peak_rss_mib() - before}))
"""


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_loading_peak_of_a_converting_load_is_measured(tmp_path, precision):
    """A checkpoint stored in fp32 and loaded in bf16 peaks at its mapped file pages plus the bf16 copy (the
    estimate's `loading`); loaded in fp32 the weights are the mapped file, and nothing more is estimated."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, dtype="float32")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)  # ~146M parameters, 0.54 GiB of fp32
    r = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path), precision], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="2"))
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line is not None, r.stderr[-3000:]
    growth = json.loads(line[7:])["growth_mib"] * MiB
    est = estimate(str(tmp_path), "lora", precision, batch_size=1, max_length=8)
    if precision == "fp32":
        assert est["loading"] == 0
        assert growth <= 1.15 * est["weights"], (growth / MiB, est["weights"] / MiB)  # no copy beside the file
    else:
        predicted = est["loading"] - est["runtime"]
        assert abs(predicted / growth - 1) <= 0.15, (predicted / MiB, growth / MiB)
        assert est["total"] == max(est["training"], est["loading"]) and est["loading"] > est["training"]


# ---------------------------------------------------------------- the verdict: does it fit, and what would


def _verdict(capsys, *flags) -> tuple[int, str]:
    """(exit code, stdout) of `llm-tuning estimate` on Llama-2-7B, LoRA, fp16 with these flags, in this process."""
    from llm_tuning.cli import main

    code = main(["estimate", "--model", "llama-2-7b", "--method", "lora", "--precision", "fp16", *flags])
    return code, capsys.readouterr().out


def test_estimate_says_it_fits_in_the_memory_given(capsys):
    code, out = _verdict(capsys, "--batch-size", "1", "--memory", "24")
    assert code == 0
    assert out.splitlines()[-1] == f"fits ({100 * _total(capsys) / (24 * GiB):.0f} % of 24 GiB)"
    code, out = _verdict(capsys, "--batch-size", "1", "--memory", "24", "--json")
    assert code == 0 and json.loads(out)["fits"] is True and json.loads(out)["memory_budget"] == 24 * GiB


def test_estimate_that_does_not_fit_exits_3_naming_each_change_that_fits_with_its_estimate(capsys):
    code, out = _verdict(capsys, "--batch-size", "4", "--memory", "24")
    assert code == 3
    needed = _total(capsys, batch_size=4)
    line = out.splitlines()[-1]
    assert line.startswith(f"does not fit: needs {needed / GiB:.1f} GiB of 24 GiB; try "), line
    shown = dict(re.findall(r"(--[a-z-]+(?: \w+)?) \((\d+\.\d) GiB\)", line))
    changes = {"--quantization 4bit": dict(quantization="4bit"), "--gradient-checkpointing":
               dict(gradient_checkpointing=True), "--batch-size 3": dict(batch_size=3)}
    assert list(shown) == list(changes), line
    code, out = _verdict(capsys, "--batch-size", "4", "--memory", "24", "--json")
    js = json.loads(out)
    assert code == 3 and js["fits"] is False and js["total"] == needed
    assert [s["change"] for s in js["suggestions"]] == list(changes)
    for s in js["suggestions"]:  # each figure is the estimate of the run with that one change, and fits
        changed = _total(capsys, **{"batch_size": 4, **changes[s["change"]]})
        assert s["needed"] == changed <= 24 * GiB and shown[s["change"]] == f"{changed / GiB:.1f}"
    # a change that does not fit is not suggested: at 16 GiB neither a 4-bit base nor batch 1 fits
    assert min(_total(capsys, batch_size=4, quantization="4bit"), _total(capsys, batch_size=1)) > 16 * GiB
    line = _verdict(capsys, "--batch-size", "4", "--memory", "16")[1].splitlines()[-1]
    assert list(dict(re.findall(r"(--[a-z-]+(?: \w+)?) \((\d+\.\d) GiB\)", line))) == ["--gradient-checkpointing"]


def test_estimate_verdict_on_a_gpu_and_the_qlora_header(capsys):
    code, out = _verdict(capsys, "--device", "cuda", "--batch-size", "8", "--memory", "16")
    gpu = _total(capsys, device="cuda", batch_size=8)
    assert code == 3 and out.splitlines()[-1].startswith(f"does not fit: needs {gpu / GiB:.1f} GiB of 16 GiB")
    if not torch.cuda.is_available():  # the card's memory is read from the card; here the command says so
        from llm_tuning.cli import main

        assert main(["estimate", "--model", "llama-2-7b", "--device", "cuda"]) == 0
        assert "no verdict: no CUDA GPU here" in capsys.readouterr().err
    out = _verdict(capsys, "--quantization", "4bit", "--precision", "bf16")[1]
    assert "fp32 adapter on a 4-bit NF4 base (its other weights bf16), batch 4 x 512 tokens" in out
