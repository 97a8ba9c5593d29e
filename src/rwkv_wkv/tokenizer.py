"""Tokenizers: UTF-8 bytes, a ``tokenizers`` tokenizer.json (e.g. RWKV-4's 20B tokenizer), or
RWKV's World vocabulary (``rwkv_vocab_v20230424.txt``, a greedy longest-match over bytes: what
RWKV-5/6/7 World and G1 models use), and the rule for which one belongs to a checkpoint.

Each tokenizer has ``name``, ``vocab_size``, ``encode(text) -> ids``, ``decode(ids) -> text``,
``stream_decoder()`` (for text shown while it is generated) and ``encode_batch(texts)`` (for
the token cache of data.py: ids with the UTF-8 bytes each token covers, for bits per byte).
"""

from __future__ import annotations

import ast
import codecs
import os
import re
from pathlib import Path

import numpy as np

from .errors import UsageError

TOKENIZER_JSON = "tokenizer.json"
WORLD_VOCAB = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SIZE = 65536  # the World models' embedding rows (the file's ids end at 65529; 0 ends a text)


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


class WorldTokenizer:
    """RWKV's World tokenizer from its vocabulary file (``rwkv_vocab_v20230424.txt``: one token
    per line, ``ID REPR LENGTH`` with REPR a Python str or bytes literal, LENGTH its UTF-8 bytes).
    Encoding takes, at every position, the longest token that matches the bytes there (a byte
    trie); every byte is a token, so any text encodes. Id 0 is the end of a text."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(path)
        self.id_to_bytes = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: not a readable World vocabulary ({type(e).__name__}: {e})") from e
        for n, line in enumerate(lines, 1):
            m = re.fullmatch(r"(\d+) (.+) (\d+)", line)
            try:
                token = ast.literal_eval(m.group(2)) if m else None
            except (ValueError, SyntaxError):
                token = None
            token = token.encode("utf-8") if isinstance(token, str) else token
            if not isinstance(token, bytes) or len(token) != int(m.group(3)):
                raise UsageError(f"{path}:{n}: not a World vocabulary line (ID REPR LENGTH): {line[:60]!r}")
            self.id_to_bytes[int(m.group(1))] = token
        if not self.id_to_bytes:
            raise UsageError(f"{path}: an empty World vocabulary")
        self.vocab_size = max(self.id_to_bytes) + 1
        self.trie = {}  # byte -> (id or None, children)
        for i, token in self.id_to_bytes.items():
            node = self.trie
            for depth, byte in enumerate(token):
                entry = node.setdefault(byte, [None, {}])
                if depth == len(token) - 1:
                    entry[0] = i
                node = entry[1]
        missing = [b for b in range(256) if self.trie.get(b, [None])[0] is None]
        if missing:
            raise UsageError(f"{path}: byte {missing[0]} has no token of its own: not every text would encode")

    def encode_bytes(self, data: bytes):
        """(ids, bytes of each token) of UTF-8 ``data``."""
        ids, sizes, pos, n = [], [], 0, len(data)
        trie = self.trie
        while pos < n:
            node, end, best, at = trie, pos, None, pos
            while end < n and (entry := node.get(data[end])) is not None:
                end += 1
                if entry[0] is not None:
                    best, at = entry[0], end
                node = entry[1]
            ids.append(best)
            sizes.append(at - pos)
            pos = at
        return ids, sizes

    def encode(self, text):
        return self.encode_bytes(text.encode("utf-8"))[0]

    def decode(self, ids):
        return b"".join(self.id_to_bytes.get(int(i), b"") for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(b"".join(self.id_to_bytes.get(int(i), b"") for i in ids))

    def encode_batch(self, texts):
        out = []
        for text in texts:
            ids, sizes = self.encode_bytes(text.encode("utf-8"))
            out.append((np.asarray(ids, dtype=np.uint32), np.asarray(sizes, dtype=np.uint32)))
        return out


def is_world_vocab(path) -> bool:
    """Whether ``path`` looks like a World vocabulary file (its first line ``1 '\\x00' 1``...)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return re.fullmatch(r"\d+ (b?'.*'|b?\".*\") \d+\n?", first) is not None


def find_world_vocab(checkpoint=None):
    """The World vocabulary for ``--tokenizer world``: next to the checkpoint (in its directory, or
    beside the file), else the copy ChatRWKV's ``rwkv`` package installs; None if neither."""
    places = []
    if checkpoint is not None:
        cp = Path(checkpoint)
        places.append((cp if cp.is_dir() else cp.parent) / WORLD_VOCAB)
    try:
        import importlib.util

        spec = importlib.util.find_spec("rwkv")
        if spec is not None and spec.submodule_search_locations:
            places += [Path(loc) / WORLD_VOCAB for loc in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    return next((str(p) for p in places if p.is_file()), None)


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


def get_tokenizer(spec, checkpoint=None):
    """'bytes' (or None), 'world' (RWKV's World vocabulary: ``find_world_vocab``), the path of a
    World vocabulary file or of a tokenizer.json; a tokenizer object passes through."""
    if hasattr(spec, "encode_batch"):
        return spec
    if spec in (None, "bytes"):
        return ByteTokenizer()
    if spec == "world":
        found = find_world_vocab(checkpoint)
        if found is None:
            raise UsageError(f"--tokenizer world: no {WORLD_VOCAB} next to the checkpoint, and ChatRWKV's rwkv package "
                             f"(which ships one) is not installed: give the file's path, or pip install rwkv")
        return WorldTokenizer(found)
    if not os.path.isfile(spec):
        raise UsageError(f"--tokenizer: {spec!r} is neither 'bytes', 'world', a World vocabulary ({WORLD_VOCAB}) "
                         f"nor a tokenizer.json file")
    if is_world_vocab(spec):
        return WorldTokenizer(spec)
    return JsonTokenizer(spec)


def tokenizer_for(spec, checkpoint, vocab_size=None):
    """The tokenizer for a model of ``vocab_size`` loaded from ``checkpoint`` (a path), or for a
    new model (both None: its vocabulary will be the tokenizer's). ``spec`` ('bytes', a
    tokenizer.json, 'world' or a World vocabulary, or None) wins; without it, the checkpoint
    directory's own tokenizer.json, else bytes for a vocabulary of 256 (or a new model), else the
    World vocabulary for a World model's 65536. A tokenizer with more tokens than the model, or
    no tokenizer for a larger vocabulary, is a UsageError."""
    if spec is None:
        own = None if checkpoint is None else os.path.join(checkpoint, TOKENIZER_JSON)
        if own is not None and os.path.isdir(checkpoint) and os.path.isfile(own):
            spec = own
        elif checkpoint is None or vocab_size == 256:
            spec = "bytes"
        elif vocab_size == WORLD_VOCAB_SIZE and find_world_vocab(checkpoint) is not None:
            spec = "world"
        else:
            raise UsageError(f"this model has a vocabulary of {vocab_size}: give its tokenizer with "
                             f"--tokenizer PATH/tokenizer.json, --tokenizer PATH/{WORLD_VOCAB} (RWKV World models) "
                             f"or --tokenizer bytes (a byte-level model)")
    tok = get_tokenizer(spec, checkpoint)
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise UsageError(f"the tokenizer ({tok.name}) has {tok.vocab_size} tokens but the model only {vocab_size}: "
                         f"they do not belong together")
    return tok
