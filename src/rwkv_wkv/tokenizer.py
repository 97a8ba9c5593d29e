"""Tokenizers: UTF-8 bytes, or a ``tokenizers`` tokenizer.json (e.g. RWKV-4's 20B tokenizer),
and the rule for which one belongs to a checkpoint.

Each tokenizer has ``name``, ``vocab_size``, ``encode(text) -> ids``, ``decode(ids) -> text``,
``stream_decoder()`` (for text shown while it is generated) and ``encode_batch(texts)`` (for
the token cache of data.py: ids with the UTF-8 bytes each token covers, for bits per byte).
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import numpy as np

from .errors import UsageError

TOKENIZER_JSON = "tokenizer.json"


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_bytes(ids) -> str:
    """Byte-level ids back to text (invalid UTF-8 sequences become U+FFFD)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text):
        return encode_bytes(text)

    def decode(self, ids):
        return decode_bytes(ids)

    def stream_decoder(self):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(bytes(ids))

    def encode_batch(self, texts):
        out = []
        for text in texts:
            ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
            out.append((ids, np.ones(len(ids), dtype=np.uint32)))
        return out


class JsonTokenizer:
    """A tokenizer.json of the `tokenizers` library. Streaming decodes the whole generation each
    time and emits what is new, holding back an incomplete multi-byte character (U+FFFD)."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise UsageError("a tokenizer.json needs the tokenizers package: pip install 'rwkv_wkv[hf]'") from e
        self.path = Path(path)
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise UsageError(f"{path}: not a readable tokenizer.json ({e})") from e
        self.name = str(path)
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids])

    def stream_decoder(self):
        ids, shown = [], 0

        def feed(new_ids):
            nonlocal shown
            ids.extend(new_ids)
            text = self.tok.decode(ids)
            if text.endswith("\ufffd"):
                return ""
            out, shown = text[shown:], len(text)
            return out

        return feed

    def encode_batch(self, texts):
        out = []
        for text, enc in zip(texts, self.tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = np.asarray(enc.ids, dtype=np.uint32)
            out.append((ids, _bytes_per_token(text, enc.offsets)))
        return out


def _bytes_per_token(text, offsets):
    """UTF-8 bytes per token: from the end of the previous token to its own end."""
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    # byte offset of every character boundary (characters start at bytes that are not 10xxxxxx)
    starts = np.flatnonzero((raw & 0xC0) != 0x80)
    boundary = np.append(starts, len(raw)).astype(np.int64)
    ends = np.asarray([e for _, e in offsets], dtype=np.int64) if offsets else np.zeros(0, np.int64)
    end_bytes = np.maximum.accumulate(boundary[np.clip(ends, 0, len(boundary) - 1)]) if len(ends) else ends
    counts = np.diff(end_bytes, prepend=0)
    if len(counts):
        counts[-1] += len(raw) - end_bytes[-1]  # trailing text no token claims (e.g. stripped spaces)
    return counts.astype(np.uint32)


def get_tokenizer(spec):
    """'bytes' (or None) or the path of a tokenizer.json; a tokenizer object passes through."""
    if hasattr(spec, "encode_batch"):
        return spec
    if spec in (None, "bytes"):
        return ByteTokenizer()
    if not os.path.isfile(spec):
        raise UsageError(f"--tokenizer: {spec!r} is neither 'bytes' nor a tokenizer.json file")
    return JsonTokenizer(spec)


def tokenizer_for(spec, checkpoint, vocab_size=None):
    """The tokenizer for a model of ``vocab_size`` loaded from ``checkpoint`` (a path), or for a
    new model (both None: its vocabulary will be the tokenizer's). ``spec`` ('bytes', a
    tokenizer.json, or None) wins; without it, the checkpoint directory's own tokenizer.json,
    else bytes for a vocabulary of 256 (or a new model). A tokenizer with more tokens than the
    model, or no tokenizer for a larger vocabulary, is a UsageError."""
    if spec is None:
        own = None if checkpoint is None else os.path.join(checkpoint, TOKENIZER_JSON)
        if own is not None and os.path.isdir(checkpoint) and os.path.isfile(own):
            spec = own
        elif checkpoint is None or vocab_size == 256:
            spec = "bytes"
        else:
            raise UsageError(f"this model has a vocabulary of {vocab_size}: give its tokenizer with "
                             f"--tokenizer PATH/tokenizer.json (or --tokenizer bytes for a byte-level model)")
    tok = get_tokenizer(spec)
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise UsageError(f"the tokenizer ({tok.name}) has {tok.vocab_size} tokens but the model only {vocab_size}: "
                         f"they do not belong together")
    return tok
