"""Token data for fine-tuning: text in, a cached memory-mapped token file out.

    corpus = load_token_corpus("my_text/", "path/to/tokenizer.json")   # or tokenizer="bytes"
    x, y = sample_batch(corpus.train, batch, ctx_len, generator)      # as for bytes (data.py)

Text: a file (one document), a directory (every ``*.txt`` in it, sorted, one document each), or
a ``.jsonl`` file (one document per line, its ``"text"`` field). Each document is tokenized
(the ``tokenizers`` library's batch encoding, with a progress bar) and followed by token 0, the
document separator RWKV-LM uses (``<|endoftext|>`` in the 20B tokenizer). The token stream is
written once to ``CACHE/<key>.tokens`` (uint16 when the vocabulary fits, else uint32), keyed by
a hash of the data and of the tokenizer, beside the number of UTF-8 bytes each token covers
(``<key>.bytes``) and a small JSON. Later runs memory-map it. The split is 90/5/5 of the tokens,
as for bytes.

Bits per byte: summed token loss (nats) / the UTF-8 bytes those tokens cover / ln 2, so models
with different tokenizers compare (for bytes it is the bits per character of data.py). A token
covers the bytes between the end of the previous token and its own end (from the tokenizer's
character offsets), so a document's tokens cover exactly its bytes; the separator covers none.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError, load_corpus, split_bounds
from .tokenizer import ByteTokenizer, get_tokenizer

CACHE_FORMAT = 1
SEPARATOR = 0  # RWKV-LM's document separator (<|endoftext|> in the 20B tokenizer; the byte 0 for bytes)
_PIECE_CHARS = 1 << 16  # long documents are encoded in pieces of about this many characters


@dataclass
class TokenSplit:
    tokens: np.ndarray  # uint8 (raw bytes) / uint16 / uint32 (memmap)
    nbytes: np.ndarray | None  # uint32 per token: UTF-8 bytes it covers (None: one byte each)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, item):  # sample_batch / eval_windows index the split like an array
        return self.tokens[item]

    def bytes_of(self, start: int, end: int) -> int:
        """UTF-8 bytes covered by tokens [start, end)."""
        if self.nbytes is None:
            return len(range(start, min(end, len(self.tokens))))
        return int(self.nbytes[start:end].sum(dtype=np.int64))


@dataclass
class TokenCorpus:
    name: str
    tokenizer: str
    vocab_size: int
    train: TokenSplit
    val: TokenSplit
    test: TokenSplit
    path: Path

    def describe(self) -> str:
        n = len(self.train) + len(self.val) + len(self.test)
        b = sum(s.bytes_of(0, len(s)) for s in (self.train, self.val, self.test))
        return (
            f"{self.name}: {n:,} tokens ({b:,} bytes, {b / max(n, 1):.2f} bytes/token, {self.tokenizer}, "
            f"vocab {self.vocab_size}) = train {len(self.train):,} + val {len(self.val):,} + test {len(self.test):,}"
        )


# ---- documents -------------------------------------------------------------------------------
def document_files(data) -> list[Path]:
    path = Path(data)
    if not path.exists():
        raise DataError(f"data {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"data directory {path} holds no .txt files")
        return files
    return [path]


def read_documents(files):
    """Yields the documents' texts (UTF-8; undecodable bytes become U+FFFD)."""
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read data file {f}: {e}") from e
        if f.suffix == ".jsonl":
            for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{f}:{n}: not a JSON object with a \"text\" field ({type(e).__name__})") from e
                if not isinstance(text, str):
                    raise DataError(f"{f}:{n}: \"text\" is a {type(text).__name__}, not a string")
                yield text
        else:
            yield raw.decode("utf-8", errors="replace")


def _pieces(text):
    """A long document cut after newlines into pieces of about _PIECE_CHARS characters, so batch
    encoding can spread one big file over threads (tokens never cross a newline-ended piece)."""
    start = 0
    while len(text) - start > _PIECE_CHARS:
        cut = text.rfind("\n", start + _PIECE_CHARS // 2, start + _PIECE_CHARS)
        cut = start + _PIECE_CHARS if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def cache_key(files, tokenizer) -> str:
    h = hashlib.sha256(f"rwkv_wkv tokens v{CACHE_FORMAT} piece {_PIECE_CHARS}\n".encode())
    h.update(b"bytes" if isinstance(tokenizer, ByteTokenizer) else Path(tokenizer.path).read_bytes())
    for f in files:
        h.update(f"\n{f.name}\n".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:24]


def build_cache(files, tokenizer, dest: Path, progress=True):
    """Tokenizes every document into dest.tokens / dest.bytes / dest.json (atomically)."""
    from tqdm import tqdm

    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    # a first pass reads and checks every document (a bad .jsonl line, no text at all) before
    # anything is written or a progress bar is shown
    if sum(1 for text in read_documents(files) if text) == 0:
        raise DataError(f"no text in {', '.join(str(f) for f in files[:3])}" + (" ..." if len(files) > 3 else "")
                        + ": the data is empty")
    total_chars = sum(f.stat().st_size for f in files)
    parts = {suffix: dest.with_name(dest.name + suffix + ".part") for suffix in (".tokens", ".bytes")}
    n_tokens = n_docs = 0
    try:
        with open(parts[".tokens"], "wb") as ft, open(parts[".bytes"], "wb") as fb, \
                tqdm(total=total_chars, unit="B", unit_scale=True, desc="tokenize", disable=not progress) as bar:
            for text in read_documents(files):
                if not text:
                    continue
                pieces = list(_pieces(text))
                for start in range(0, len(pieces), 64):
                    for ids, nbytes in tokenizer.encode_batch(pieces[start:start + 64]):
                        if len(ids) and int(ids.max()) >= tokenizer.vocab_size:
                            raise DataError(f"{tokenizer.name} produced id {int(ids.max())} >= its vocabulary")
                        ft.write(ids.astype(dtype).tobytes())
                        fb.write(nbytes.astype(np.uint32).tobytes())
                        n_tokens += len(ids)
                    bar.update(sum(len(p.encode("utf-8")) for p in pieces[start:start + 64]))
                ft.write(np.asarray([SEPARATOR], dtype=dtype).tobytes())
                fb.write(np.zeros(1, dtype=np.uint32).tobytes())
                n_tokens += 1
                n_docs += 1
        for suffix, part in parts.items():
            os.replace(part, dest.with_name(dest.name + suffix))
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    meta = {"format": CACHE_FORMAT, "dtype": np.dtype(dtype).name, "tokens": n_tokens, "documents": n_docs,
            "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "files": [str(f) for f in files]}
    tmp = dest.with_name(dest.name + ".json.part")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, dest.with_name(dest.name + ".json"))  # written last: its presence marks a complete cache
    return meta


def load_token_corpus(data, tokenizer="bytes", cache_dir="data/token_cache", progress=True) -> TokenCorpus:
    """The token corpus of `data` under `tokenizer` ('bytes' or a tokenizer.json path, or a
    tokenizer object from get_tokenizer), tokenized once and cached in `cache_dir`."""
    tok = get_tokenizer(tokenizer)
    files = document_files(data)
    for f in files:
        if not os.access(f, os.R_OK):
            raise DataError(f"cannot read data file {f}: permission denied")
    dest = Path(cache_dir) / cache_key(files, tok)
    meta_path = dest.with_name(dest.name + ".json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = build_cache(files, tok, dest, progress)
    tokens = np.memmap(dest.with_name(dest.name + ".tokens"), dtype=meta["dtype"], mode="r")
    nbytes = np.memmap(dest.with_name(dest.name + ".bytes"), dtype=np.uint32, mode="r")
    if len(tokens) != meta["tokens"] or len(nbytes) != meta["tokens"]:
        raise DataError(f"token cache {dest} is incomplete; delete it ({dest}.*) to rebuild")
    if len(tokens) < 40:
        raise DataError(f"{data}: {len(tokens)} tokens is too few to split into train/val/test")
    a, b = split_bounds(len(tokens))
    name = str(data)
    return TokenCorpus(name, tok.name, tok.vocab_size, TokenSplit(tokens[:a], nbytes[:a]),
                       TokenSplit(tokens[a:b], nbytes[a:b]), TokenSplit(tokens[b:], nbytes[b:]), dest)


def is_raw_bytes(data, tokenizer) -> bool:
    """Whether the trainer reads ``data`` as raw bytes (data.py: the built-in corpus, enwik8 with
    its literature split, or any single file byte for byte) rather than as documents to
    tokenize: bytes as the tokenizer and no directory or .jsonl."""
    if tokenizer.name != "bytes":
        return False
    return data is None or data == "enwik8" or not (Path(data).is_dir() or Path(data).suffix == ".jsonl")


def load_data(data, tokenizer, data_dir="data", cache_dir="data/token_cache", progress=True) -> TokenCorpus:
    """What the trainer trains on, as a TokenCorpus: raw bytes (``is_raw_bytes``) or the token
    cache of ``load_token_corpus``. Both score validation and test in bits per byte."""
    tokenizer = get_tokenizer(tokenizer)
    if not is_raw_bytes(data, tokenizer):
        return load_token_corpus(data, tokenizer, cache_dir, progress)
    c = load_corpus(data, data_dir)
    return TokenCorpus(c.name, "bytes", 256, TokenSplit(c.train, None), TokenSplit(c.val, None),
                       TokenSplit(c.test, None), Path(data or "builtin"))
