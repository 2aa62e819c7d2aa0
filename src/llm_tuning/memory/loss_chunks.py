"""How the fused output layer + loss (train/fastloss.py) cuts its work, and so how large its one logits buffer
is: the estimate sizes that buffer with the same functions."""

from __future__ import annotations

VOCAB_BLOCK = 2048  # output-layer rows per block when that layer does not train (fastloss._by_vocabulary_blocks)
CHUNK_ELEMENTS = 1 << 24  # logits per chunk at most (64 MiB in fp32; 303 rows of a 55k vocabulary: a wide matmul)


def chunk_rows(n, vocab):
    """Rows per row chunk (and of its logits buffer): equal chunks of at most CHUNK_ELEMENTS logits (400 rows ->
    2 x 200, not 303 + 97: a thin matmul is slow); 0 for no rows."""
    return -(-n // max(1, -(-n * vocab // CHUNK_ELEMENTS)))


def block_rows(n):
    """Rows per pass of the vocabulary blocks: all of them, up to a [rows x VOCAB_BLOCK] block of CHUNK_ELEMENTS
    logits; 0 for no rows."""
    return min(n, max(1, CHUNK_ELEMENTS // VOCAB_BLOCK))
