"""`Sampling`: how an answer is decoded (length, temperature, top-p, stop strings, seed, loop guards), the one
value `generate`, `stream_generate` and the server take."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.commands import GenerateConfig
from ..options import declared


@dataclass
class Sampling:
    """How to decode: the typed slice of the generation options that library calls take. temperature 0 is greedy
    (the default, as the commands' without --sample); stop strings end the answer (they are not part of it)."""

    max_new_tokens: int = declared(GenerateConfig, "max_new_tokens")
    temperature: float = 0.0
    top_p: float = declared(GenerateConfig, "top_p")
    stop: tuple = ()
    seed: int | None = None
    repetition_penalty: float = declared(GenerateConfig, "repetition_penalty")  # > 1: tokens already there are less likely
    no_repeat_ngram_size: int = declared(GenerateConfig, "no_repeat_ngram_size")  # n > 0: no n-gram twice in prompt + answer

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def penalties(self) -> list:
        """transformers' own logits processors for the loop guards asked for (none at their defaults)."""
        from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        out = [RepetitionPenaltyLogitsProcessor(self.repetition_penalty)] if self.repetition_penalty != 1.0 else []
        return out + ([NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size)] if self.no_repeat_ngram_size else [])

    @classmethod
    def from_config(cls, cfg) -> "Sampling":
        """From a command's options (--max-new-tokens, --sample, --temperature, --top-p, --seed)."""
        return cls(cfg.max_new_tokens, cfg.temperature if cfg.sample else 0.0, cfg.top_p, (), getattr(cfg, "seed", None),
                   cfg.repetition_penalty, cfg.no_repeat_ngram_size)
