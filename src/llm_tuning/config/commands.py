"""The other commands' options; those they share with train are borrowed from TrainConfig with `same_as`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.templates import TEMPLATE_NAMES
from ..methods import option_fields
from ..models.precision import PRECISIONS, QUANTIZATIONS
from ..options import option, same_as
from .train import CHECKPOINTS_GROUP, DATA_GROUP, MODEL_GROUP, TRAINING_GROUP, TrainConfig

GENERATION_GROUP, EVALUATION_GROUP, HARNESS_GROUP = "generation", "evaluation", "benchmarks (lm-eval)"


@dataclass
class LoadConfig:
    """What loading a trained model for inference takes: the base, an adapter, precision and template."""

    model: str = same_as(TrainConfig, "model")
    adapter: str | None = option(None, "adapter folder written by `llm-tuning train` (or a plain PEFT adapter)",
                                 group=MODEL_GROUP)
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    template: str | None = option(None, "prompt template (default: the adapter's, else default)",
                                  choices=TEMPLATE_NAMES, group=DATA_GROUP)
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")


@dataclass
class GenerateConfig(LoadConfig):
    """`llm-tuning generate`: answer one instruction."""

    prompt: str = option("", "the instruction", group=GENERATION_GROUP, required=True)
    input: str = option("", "optional input for the instruction", group=GENERATION_GROUP)
    max_new_tokens: int = option(128, "answer length limit in tokens", group=GENERATION_GROUP, range="[1, inf)")
    sample: bool = option(False, "sample instead of greedy decoding", group=GENERATION_GROUP)
    temperature: float = option(0.7, "sampling temperature (with --sample)", group=GENERATION_GROUP, range="(0, inf)")
    top_p: float = option(0.9, "nucleus sampling: keep the smallest set of tokens with this much probability",
                          group=GENERATION_GROUP, range="(0, 1]")
    repetition_penalty: float = option(1.0, "against loops: a token already in the prompt or answer has its logit "
                                            "divided by this (>1: less likely; 1: off; transformers' "
                                            "RepetitionPenaltyLogitsProcessor, greedy or sampled)",
                                       group=GENERATION_GROUP, range="(0, inf)")
    no_repeat_ngram_size: int = option(0, "against loops: no n-gram of this many tokens twice in prompt + answer "
                                          "(0: off; transformers' NoRepeatNGramLogitsProcessor)",
                                       group=GENERATION_GROUP, range="[0, inf)")


@dataclass
class EvalConfig(LoadConfig):
    """`llm-tuning eval`: held-out response loss and perplexity (and, with --generate, ROUGE / BLEU); on plain text
    (--text, a .txt file, records of {"text": ...}): the loss over every token, and with --adapter the forgetting;
    with --tasks, lm-eval's benchmarks."""

    model: str = same_as(TrainConfig, "model", required=False)  # or --run's
    run: str | None = option(None, "a folder `llm-tuning train` wrote: its adapter, with the run's base model, "
                                   "template, max length, precision and quantisation for the options left at their "
                                   "defaults; without --data or --tasks, the records it held out (--split heldout)",
                             group=EVALUATION_GROUP)
    split: str | None = option(None, "heldout: exactly the records the run (--run, or the --adapter folder `train` "
                                     "wrote) held out from training, from its config.yaml: its --val-data file or "
                                     "its --val-size split of --data, recomputed with its seed",
                               choices=("heldout",), group=EVALUATION_GROUP)
    data: str | None = same_as(TrainConfig, "data", default=None, required=False)
    encoding: str | None = same_as(TrainConfig, "encoding")
    max_length: int = same_as(TrainConfig, "max_length")
    batch_size: int = option(8, "records (or lm-eval requests) per forward pass", group=EVALUATION_GROUP,
                             range="[1, inf)")
    limit: int | None = option(None, "evaluate only the first N records (and the first N documents of each "
                                     "--tasks task)", group=EVALUATION_GROUP, range="[1, inf)")
    skip_bad_records: bool = same_as(TrainConfig, "skip_bad_records")
    generate: bool = option(False, "also answer each record (greedy) and score it: ROUGE-1/2/L on jieba words, "
                                   "BLEU-4 on characters; the first answers are printed beside their references",
                            group=EVALUATION_GROUP)
    text: bool = option(False, "score --data as plain text: the loss over every token, no template (alpaca records "
                               "read as instruction, input and output, one per line); with --adapter also the base "
                               "model's loss and the difference, the forgetting `compare` reports. A .txt file or "
                               "records of {\"text\": ...} are read so without this flag", group=EVALUATION_GROUP)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
    repetition_penalty: float = same_as(GenerateConfig, "repetition_penalty")
    no_repeat_ngram_size: int = same_as(GenerateConfig, "no_repeat_ngram_size")
    predictions: str | None = option(None, "with --generate: write prompt/reference/prediction JSONL here",
                                     group=EVALUATION_GROUP)
    tasks: list[str] | None = option(None, "benchmarks through EleutherAI's lm-evaluation-harness on the model with "
                                           "its adapter, comma-separated: task YAMLs of --tasks-dir, or lm-eval's "
                                           "built-in tasks (cmmlu, ceval-valid, mmlu, ...; their data comes from "
                                           "the hub); needs pip install 'llm-tuning[harness]'",
                                     group=HARNESS_GROUP)
    tasks_dir: str | None = option(None, "folder of lm-eval task YAML files (lm-eval's include_path); the built-in "
                                         "tasks are only read when a name is not found there", group=HARNESS_GROUP)
    bootstrap_iters: int = option(0, "lm-eval's bootstrap resamples for the standard errors (0: none, the "
                                     "table shows N/A)", group=HARNESS_GROUP, range="[0, inf)")
    harness_output: str | None = option(None, "lm-eval's results JSON (default: harness_results.json in the "
                                              "adapter folder, or in the current folder without an adapter)",
                                        group=HARNESS_GROUP)
    samples: bool = option(False, "keep every document's requests and answers in the results JSON (lm-eval's "
                                  "log_samples)", group=HARNESS_GROUP)
    json: bool = option(False, "print JSON instead of a table", group=EVALUATION_GROUP)


@dataclass
class MergeConfig:
    """`llm-tuning merge`: fold a LoRA / IA3 / BitFit adapter into its base model."""

    model: str = same_as(TrainConfig, "model")
    adapter: str = same_as(LoadConfig, "adapter", required=True)
    output: str = option("", "folder for the merged standalone model", group=MODEL_GROUP, required=True)
    overwrite: bool = option(False, "replace a non-empty output folder", group=MODEL_GROUP)
    save_precision: str = option("fp32", "dtype of the written model", choices=PRECISIONS, group=MODEL_GROUP)
    save_quantization: str | None = option(None, "re-quantise the merged model before saving", choices=QUANTIZATIONS,
                                           group=MODEL_GROUP)
    merge_base: str = option("auto", "for an adapter trained on a quantised base: merge into the original weights or "
                                     "the dequantised quantised ones (auto: dequantized for 4bit, original for 8bit)",
                             choices=("auto", "original", "dequantized"), group=MODEL_GROUP)
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")


@dataclass
class EstimateSettings:
    """`llm-tuning estimate`'s options but the methods' own (EstimateConfig below adds those)."""

    model: str = option("", "a preset (llama-2-7b, bloom-1b4), a model folder, a config.json or a hub id",
                        group=MODEL_GROUP, required=True)
    method: str = same_as(TrainConfig, "method")
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    batch_size: int = same_as(TrainConfig, "batch_size")
    max_length: int = same_as(TrainConfig, "max_length")
    gradient_checkpointing: bool = same_as(TrainConfig, "gradient_checkpointing")
    checkpoint_every: int = same_as(TrainConfig, "checkpoint_every")
    fast_loss: bool = same_as(TrainConfig, "fast_loss")
    speedups: bool = same_as(TrainConfig, "speedups")  # Bloom's attention: SDPA keeps less than eager
    # the GPU path: memory/gpu_estimate.py
    device: str = option("cpu", "cpu: peak process memory (RSS); cuda: peak GPU memory (CUDA context included)",
                         choices=("cpu", "cuda"), group=MODEL_GROUP)
    kernels: str = same_as(TrainConfig, "kernels")
    memory: float | None = option(None, "the GiB the run may use: the estimate ends with whether it fits, and if "
                                        "not, each single change that would (exit code 3 when it does not fit); "
                                        "the budget of an auto size (without it: this machine's available RAM, or "
                                        "with --device cuda the GPU's free memory, and the verdict against the "
                                        "card's whole memory)", group=MODEL_GROUP, range="(0, inf)")
    json: bool = same_as(EvalConfig, "json")

    def train_config(self) -> TrainConfig:
        """The training run this estimates (the method options as `train` reads them)."""
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TrainConfig(**{k: v for k, v in own.items() if k in train_fields})


# `llm-tuning estimate`: peak training memory from a model config alone (every option that changes it: the methods'
# own options included, borrowed from TrainConfig).
EstimateConfig = dataclasses.make_dataclass(
    "EstimateConfig", [(name, typ, same_as(TrainConfig, name)) for name, typ, _ in option_fields()],
    bases=(EstimateSettings,))
EstimateConfig.__module__ = __name__
EstimateConfig.__doc__ = "`llm-tuning estimate`: peak training memory from a model config alone (every option that changes it)."


@dataclass
class InitModelConfig:
    """`llm-tuning init-model`: a tiny random Bloom or Llama with a tokenizer."""

    arch: str = option("", "the architecture to build", choices=("bloom", "llama"), group=MODEL_GROUP, required=True)
    output: str = option("", "folder for the model and tokenizer", group=MODEL_GROUP, required=True)
    tokenizer: str | None = option(None, "existing tokenizer folder (default: train a byte-level BPE)",
                                   group=MODEL_GROUP)
    train_text: str | None = option(None, "alpaca data to train the BPE on (default: the bundled Chinese sample)",
                                    group=MODEL_GROUP)
    vocab_size: int = option(2000, "BPE vocabulary size", group=MODEL_GROUP, range="[259, inf)")
    hidden_size: int | None = option(None, "hidden size (default 64)", group=MODEL_GROUP, range="[1, inf)")
    num_layers: int | None = option(None, "decoder layers (default 2)", group=MODEL_GROUP, range="[1, inf)")
    num_heads: int | None = option(None, "attention heads (default 4)", group=MODEL_GROUP, range="[1, inf)")
    num_kv_heads: int | None = option(None, "Llama key/value heads (default 2)", group=MODEL_GROUP, range="[1, inf)")
    intermediate_size: int | None = option(None, "Llama MLP width (default 128)", group=MODEL_GROUP, range="[1, inf)")
    seed: int = same_as(TrainConfig, "seed", default=0)
    overwrite: bool = same_as(MergeConfig, "overwrite")


@dataclass
class DemoConfig:
    """`llm-tuning demo`: the embedded default job (tiny model, bundled sample, no network)."""

    output_dir: str = option("runs/demo", "folder for the demo's models", group=CHECKPOINTS_GROUP)
    steps: int = option(100, "LoRA steps on the 20 records set aside", group=TRAINING_GROUP, range="[1, inf)")
    pretrain_steps: int = option(600, "steps of the stand-in pre-training (a full fine-tune of the random model on "
                                      "the other records)", group=TRAINING_GROUP, range="[1, inf)")


@dataclass
class CompareCommand:
    """`llm-tuning compare`: several methods on one budget, a report with table and plots."""

    config: str = option("", "compare YAML: model, data, output_dir, budget_tokens, runs (see docs/compare.md)",
                         group=CHECKPOINTS_GROUP, required=True)
    force: bool = option(False, "rerun runs that already have a result.json", group=CHECKPOINTS_GROUP)
    output_dir: str | None = option(None, "write the report here instead of the YAML's output_dir (a committed "
                                          "example's folder is never rewritten unless named here)",
                                    group=CHECKPOINTS_GROUP)


@dataclass
class CompareConfig:
    """The top-level keys of a compare YAML (besides any train option, shared by every run)."""

    model: str = same_as(TrainConfig, "model")
    data: str = same_as(TrainConfig, "data")
    output_dir: str = option("", "the report folder (one sub-folder per run)", group=CHECKPOINTS_GROUP, required=True)
    runs: list = option([], "the runs: a list of mappings, each with a name, a method and any train option",
                        group=CHECKPOINTS_GROUP, required=True)
    budget_tokens: int | None = option(None, "training tokens per run; the steps follow from the records' mean "
                                             "length", group=TRAINING_GROUP, range="[1, inf)")
    max_steps: int | None = option(None, "steps per run instead of budget_tokens",
                                   group=TRAINING_GROUP, range="[1, inf)")
    budgets: list = option([1], "multiples of the budget (budget_tokens or max_steps) to compare at, e.g. [1, 4]: "
                                "each a whole comparison in budget-Nx/, the report says whether the order of the "
                                "methods holds between them", group=TRAINING_GROUP)
    eval_records: int = option(20, "held-out records answered for ROUGE / BLEU",
                               group=EVALUATION_GROUP, range="[0, inf)")
    max_new_tokens: int = option(64, "answer length limit for ROUGE / BLEU", group=EVALUATION_GROUP, range="[1, inf)")
    samples: int = option(3, "sample answers shown in the report, the base model's beside each run's",
                          group=EVALUATION_GROUP, range="[0, inf)")
    quote_records: bool = option(True, "the samples quote the held-out record's instruction and reference (false: "
                                       "the answers alone, for data whose licence forbids quoting it)",
                                 group=EVALUATION_GROUP)
    repetition_penalty: float = same_as(GenerateConfig, "repetition_penalty")
    no_repeat_ngram_size: int = same_as(GenerateConfig, "no_repeat_ngram_size")
    forget_data: str | None = option(None, "texts forgetting is measured on: a .txt file (a text per paragraph), a "
                                           ".json / .jsonl of {\"text\": ...} records or alpaca records (read as "
                                           "plain text); each run's loss on them minus the base's (default: texts "
                                           "the base model generates itself, forget_texts of them)",
                                     group=EVALUATION_GROUP)
    forget_texts: int = option(64, "without forget_data: texts the base model samples (temperature 1, from its "
                                   "start token, a fixed seed) to measure forgetting on; 0: no forgetting measured",
                               group=EVALUATION_GROUP, range="[0, inf)")
    forget_tokens: int = option(128, "without forget_data: the length limit of each sampled text, in tokens",
                                group=EVALUATION_GROUP, range="[1, inf)")
    title: str | None = option(None, "report title (default: 'Method comparison on MODEL')", group=EVALUATION_GROUP)
    common: dict = option({}, "train options shared by every run (as top-level train keys are)", group=TRAINING_GROUP)
    heldout_size: float = option(0.1, "held-out records of the table (a fraction or a count): every run and the "
                                      "base are scored on them, nothing is chosen on them",
                                 group=DATA_GROUP, range="(0, inf)")
    val_size: float = option(0.1, "validation records (a fraction or a count), apart from the held-out ones: "
                                  "the learning rate is chosen on them, the loss during training measured on them",
                             group=DATA_GROUP, range="[0, inf)")
    split_seed: int = option(0, "seed of the held-out / validation / training split (one split for every run)",
                             group=DATA_GROUP, range="[0, 4294967295]")
    seeds: list = option([], "training seeds: each run is repeated per seed, the table shows mean ± std "
                             "(default: the train option seed alone)", group=TRAINING_GROUP)
    lr: object = option(None, "learning rate of the runs that set none: a number, a list of rates to sweep, or "
                              "auto (the method's default rate times lr_factors); default: the method's rate",
                        group=TRAINING_GROUP)
    lr_factors: list = option([1 / 3, 1, 3], "lr: auto sweeps the method's default rate times these factors "
                                             "(default 1/3, 1, 3)", group=TRAINING_GROUP)
    lr_extend: int = option(2, "a sweep whose best rate is its lowest or highest adds a rate 3x beyond that edge, "
                               "up to this many per run, until the best has a worse (or diverged) neighbour on "
                               "each side; the report marks a run whose best is still at an edge", group=TRAINING_GROUP,
                            range="[0, 10]")
    sweep_seeds: int | None = option(None, "a sweep trains each rate on the first N seeds only (default: all); "
                                           "the chosen rate then trains on every seed",
                                     group=TRAINING_GROUP, range="[1, inf)")
    eval_every: int | None = option(None, "validation loss every N steps during training (default: 8 points "
                                          "per run)", group=EVALUATION_GROUP, range="[1, inf)")
    parallel: int = option(1, "runs trained at once, each in its own process (with threads: 1, as many as cores "
                              "saves the threads' synchronisation on small models)",
                           group=TRAINING_GROUP, range="[1, inf)")
    threads: int | None = option(None, "torch threads per training process (OMP_NUM_THREADS; default: torch's "
                                       "choice, one per core)", group=TRAINING_GROUP, range="[1, inf)")
    harness_tasks: list = option([], "lm-eval tasks scored for every run's seeds and the base, as columns of the "
                                     "report (mean ± std, Welch against the base); names as `eval --tasks` takes",
                                 group=HARNESS_GROUP)
    harness_tasks_dir: str | None = same_as(EvalConfig, "tasks_dir")
    harness_limit: int | None = option(None, "the first N documents of each harness task (default: all)",
                                       group=HARNESS_GROUP, range="[1, inf)")


QUANTLAB_GROUP = "quantisation lab"


@dataclass
class QuantlabConfig:
    """`llm-tuning quantlab`: weight, product and end-to-end quantisation errors (int8, LLM.int8, NF4, FP4)."""

    model: str = same_as(TrainConfig, "model")
    adapter: str | None = same_as(LoadConfig, "adapter")
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")
    data: str = same_as(TrainConfig, "data")
    encoding: str | None = same_as(TrainConfig, "encoding")
    template: str | None = same_as(LoadConfig, "template")
    max_length: int = same_as(TrainConfig, "max_length")
    skip_bad_records: bool = same_as(TrainConfig, "skip_bad_records")
    records: int = option(32, "records run through the model for the activations and the held-out losses",
                          group=QUANTLAB_GROUP, range="[1, inf)")
    thresholds: list[str] = option(["0", "3", "6", "8"], "LLM.int8 outlier thresholds to measure, comma-separated "
                                                         "(0 = no decomposition)", group=QUANTLAB_GROUP)
    max_rows: int = option(4096, "token rows of each linear layer's input kept for the product errors",
                           group=QUANTLAB_GROUP, range="[1, inf)")
    demo_outliers: int = option(0, "DEMONSTRATION: also measure with K feature dimensions of every linear "
                                   "layer's input scaled by --demo-scale, as large models' emergent outliers are",
                                group=QUANTLAB_GROUP, range="[0, inf)")
    demo_scale: float = option(20.0, "the factor --demo-outliers multiplies its dimensions by", group=QUANTLAB_GROUP,
                               range="(0, inf)")
    output_dir: str = option("", "folder for report.md, report.html, the PNGs and quantlab.json",
                             group=CHECKPOINTS_GROUP, required=True)
    json: bool = same_as(EvalConfig, "json")


SERVER_GROUP = "server"


@dataclass
class ChatConfig(LoadConfig):
    """`llm-tuning chat`: a streaming multi-turn conversation in the terminal (/reset, /exit; Ctrl-C stops one)."""

    system: str = option("", "system prompt that leads the conversation", group=GENERATION_GROUP)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
    sample: bool = same_as(GenerateConfig, "sample")
    temperature: float = same_as(GenerateConfig, "temperature")
    top_p: float = same_as(GenerateConfig, "top_p")
    repetition_penalty: float = same_as(GenerateConfig, "repetition_penalty")
    no_repeat_ngram_size: int = same_as(GenerateConfig, "no_repeat_ngram_size")
    seed: int | None = option(None, "random seed for sampling (default: a fresh one each run)", group=GENERATION_GROUP,
                              range="[0, 4294967295]")


@dataclass
class ServeConfig:
    """`llm-tuning serve`: an OpenAI-compatible API over one base and many adapters, a web playground at /."""

    model: str = same_as(TrainConfig, "model")
    adapter: list[str] | None = option(None, "NAME=DIR: serve the adapter in DIR as model NAME; repeat the flag "
                                             "(or comma-separate) for more; `base` is the model without adapter",
                                       group=MODEL_GROUP)
    precision: str = same_as(TrainConfig, "precision")
    quantization: str | None = same_as(TrainConfig, "quantization")
    template: str | None = same_as(LoadConfig, "template")
    trust_remote_code: bool = same_as(TrainConfig, "trust_remote_code")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface; set --api-key then)",
                       group=SERVER_GROUP)
    port: int = option(8000, "TCP port to listen on", group=SERVER_GROUP, range="[1, 65535]")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on the API (default: "
                                       "$LLM_TUNING_API_KEY; unset: no key)", group=SERVER_GROUP)
    reports: str | None = option(None, "folder of `compare` reports the playground may open (nothing outside it "
                                       "is served)", group=SERVER_GROUP)
    max_new_tokens: int = same_as(GenerateConfig, "max_new_tokens")
    max_queue: int = option(32, "requests that may wait for the generation worker; past it 429 with Retry-After "
                                "(0: no bound)", group=SERVER_GROUP, range="[0, inf)")
    request_timeout: float = option(600.0, "seconds from a request's arrival to the end of its answer (queue "
                                           "included); past it the generation stops and the answer is 504 "
                                           "(0: none)", group=SERVER_GROUP, range="[0, inf)")
    max_body_bytes: int = option(4 * 1024 * 1024, "largest request body; a larger one gets 413 before it is read",
                                 group=SERVER_GROUP, range="[1, inf)")
    receive_timeout: float = option(10.0, "seconds for a request's line and headers (from the connection or the "
                                          "last answer) and for its body; then the connection is closed (408 for "
                                          "a body)", group=SERVER_GROUP, range="(0, inf)")
    keep_alive_timeout: float = option(5.0, "seconds an idle connection stays open between requests",
                                       group=SERVER_GROUP, range="(0, inf)")
    max_connections: int = option(64, "connections and requests in flight; past it 503 (0: no bound)",
                                  group=SERVER_GROUP, range="[0, inf)")
    shutdown_timeout: float = option(10.0, "after SIGTERM / Ctrl-C: seconds the running generation has to finish "
                                           "(waiting requests get 503 at once; a second signal exits at once)",
                                     group=SERVER_GROUP, range="[0, inf)")
