"""A real CLIP tokenizer built offline from the BPE merges shipped in ``resources/tokenizer``.

SD 1.x, SD 2.x and SDXL all tokenize with the same 49408-entry CLIP vocabulary; only the padding token
differs (OpenCLIP pads with ``!``, id 0). The vocabulary is not stored anywhere: CLIP derives it from
the merge list, so we derive it the same way and hand it to transformers' own ``CLIPTokenizer``.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

MERGES_FILE = Path(__file__).resolve().parent.parent / "resources" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"

# CLIP keeps the first 49152 - 256 - 2 merges of the file: 256 single bytes plus the two specials
# then fill the 49408-entry table together with the 256 end-of-word byte tokens.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_to_unicode() -> dict[int, str]:
    """Byte-level BPE alphabet: each byte gets a printable stand-in character.

    Bytes that are already visible characters keep their own code point; the rest (controls, space,
    a few Latin-1 gaps) are moved past 255 so that no token ever contains whitespace. The dictionary
    order matters: it is the order of the first 256 vocabulary ids.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    if not MERGES_FILE.is_file():
        raise FileNotFoundError(
            f"CLIP merge list not found at {MERGES_FILE}; the resources folder of the installation is incomplete"
        )
    lines = gzip.decompress(MERGES_FILE.read_bytes()).decode("utf-8").split("\n")
    # Line 0 is a version header.
    pairs = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(pairs) != NUM_MERGES or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{MERGES_FILE} is not a CLIP merge list")
    return tuple(pairs)  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    symbols = list(byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(p) for p in clip_merges()] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"built a CLIP vocabulary of {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab


def build_clip_tokenizer(pad_token: str = EOS, model_max_length: int = 77):
    """A fresh ``transformers.CLIPTokenizer``; SD 1.x pads with ``<|endoftext|>``, OpenCLIP with ``!``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=dict(clip_vocab()),
        merges=list(clip_merges()),
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
