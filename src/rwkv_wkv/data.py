"""Byte-level data for the trainer: enwik8 with the standard split, any file, or a built-in corpus.

- enwik8: the first 100,000,000 bytes of an English Wikipedia dump (Hutter Prize). The split
  used in the literature: bytes [0, 90M) train, [90M, 95M) validation, [95M, 100M) test;
  vocabulary = the 256 byte values. Any other file is split 90/5/5 the same way.
- The built-in corpus is the text of Python's own documentation topics, shipped with every
  CPython (``pydoc_data.topics``), so the demo always runs, offline too.

Files are memory-mapped (numpy), so a 100 MB corpus costs no RAM up front.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_SIZE = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # of the unzipped file, as published
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)


class DataError(UsageError):
    """The data could not be found, read, downloaded or verified (a UsageError: one line, exit 2)."""


@dataclass
class ByteCorpus:
    name: str
    data: np.ndarray  # uint8, possibly a memmap
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def describe(self) -> str:
        return (f"{self.name}: {len(self.data):,} bytes = train {len(self.train):,} + "
                f"val {len(self.val):,} + test {len(self.test):,}")


def split_bounds(n: int) -> tuple[int, int]:
    """End offsets of train and validation for n bytes (90/5/5; exact 90M/5M/5M for enwik8)."""
    train_end = n * 9 // 10
    val_end = train_end + n // 20
    return train_end, val_end


def make_corpus(name: str, data: np.ndarray) -> ByteCorpus:
    if data.ndim != 1 or data.dtype != np.uint8:
        raise DataError(f"{name}: expected a 1-D uint8 byte array")
    if len(data) < 40:
        raise DataError(f"{name}: {len(data)} bytes is too small to split into train/val/test")
    a, b = split_bounds(len(data))
    return ByteCorpus(name, data, data[:a], data[a:b], data[b:])


def builtin_corpus_bytes() -> bytes:
    """Python's documentation topics (pydoc_data.topics), ~0.5 MB of English technical text."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def md5_of(path: Path, chunk=1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, progress=True) -> None:
    """Downloads url to dest atomically (dest.part, then rename), with a tqdm progress bar."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                                             disable=not progress) as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download {url}: {e}\n"
            f"If this machine is offline, fetch enwik8.zip elsewhere and pass --data /path/to/enwik8.zip "
            f"(or put it in {dest.parent}/)."
        ) from e
    os.replace(part, dest)


def extract_single_member(zip_path: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise DataError(f"{zip_path}: expected a zip with one file, found {names[:5]}")
            tmp = dest.with_name(dest.name + ".part")
            with z.open(names[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
            os.replace(tmp, dest)
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is not a valid zip file ({e}); delete it and try again") from e
    return dest


def verify_enwik8(path: Path) -> None:
    size = path.stat().st_size
    if size != ENWIK8_SIZE:
        raise DataError(f"{path}: enwik8 must be {ENWIK8_SIZE:,} bytes, this file has {size:,}")
    digest = md5_of(path)
    if digest != ENWIK8_MD5:
        raise DataError(f"{path}: md5 {digest} does not match the published enwik8 md5 {ENWIK8_MD5}")


def resolve_enwik8(data_dir: Path, allow_download=True) -> Path:
    """data_dir/enwik8, extracted from data_dir/enwik8.zip, downloaded if neither exists."""
    data_dir.mkdir(parents=True, exist_ok=True)
    raw, zipped = data_dir / "enwik8", data_dir / "enwik8.zip"
    if not raw.exists():
        if not zipped.exists():
            if not allow_download:
                raise DataError(f"enwik8 not found in {data_dir} and downloading is disabled")
            print(f"enwik8 not found in {data_dir}/; downloading {ENWIK8_URL}", file=sys.stderr)
            download(ENWIK8_URL, zipped)
        extract_single_member(zipped, raw)
    verify_enwik8(raw)
    return raw


def memmap_bytes(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e}") from e
    if size == 0:
        raise DataError(f"data file {path} is empty")
    try:
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e}") from e


def load_corpus(data: str | None, data_dir: str | os.PathLike = "data", allow_download=True) -> ByteCorpus:
    """``None``: the built-in corpus. ``"enwik8"``: data_dir/enwik8 (or .zip; downloaded if
    missing). A path: that file's bytes (a .zip with one member is extracted beside it);
    a file named enwik8 / enwik8.zip is checked against the published checksum."""
    if data is None:
        return make_corpus("builtin corpus (pydoc_data.topics)", np.frombuffer(builtin_corpus_bytes(), dtype=np.uint8))
    if data == "enwik8":
        path = resolve_enwik8(Path(data_dir), allow_download)
        return make_corpus("enwik8", memmap_bytes(path))
    path = Path(data)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".zip":
        target = path.with_suffix("")
        if not target.exists():
            extract_single_member(path, target)
        path = target
    if path.name == "enwik8":
        verify_enwik8(path)
    return make_corpus(path.name, memmap_bytes(path))


def unigram_entropy_bits(arr: np.ndarray) -> float:
    """Entropy of the byte distribution (bits per byte): what a model with no context achieves."""
    counts = np.bincount(np.asarray(arr, dtype=np.uint8), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def sample_batch(split: np.ndarray, batch_size: int, ctx_len: int, generator: torch.Generator):
    """Random windows of ctx_len + 1 bytes: inputs (B, ctx_len) and next-byte targets."""
    if len(split) < ctx_len + 2:
        raise DataError(f"split of {len(split)} bytes is too short for ctx_len {ctx_len}")
    starts = torch.randint(0, len(split) - ctx_len - 1, (batch_size,), generator=generator).tolist()
    windows = np.stack([np.asarray(split[s:s + ctx_len + 1]) for s in starts]).astype(np.int64)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]


def eval_windows(split: np.ndarray, ctx_len: int, max_bytes: int | None = None):
    """Non-overlapping windows covering the split (or its first max_bytes): yields
    (inputs, targets) as 1-D int64 tensors; the last window may be shorter."""
    n = len(split) - 1 if max_bytes is None else min(len(split) - 1, max_bytes)
    for start in range(0, n, ctx_len):
        end = min(start + ctx_len, n)
        w = torch.from_numpy(np.asarray(split[start:end + 1]).astype(np.int64))
        yield w[:-1], w[1:]


def bits_per_byte(nats: float, nbytes: int) -> float:
    return nats / max(1, nbytes) / math.log(2)
