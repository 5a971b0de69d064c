"""Corpora, sorted vocabularies and language-model batching.

A corpus is found, in order: an explicit path; `$JRNN_DATA_DIR/<name>.txt`; the user cache
(`$XDG_CACHE_HOME/jrnn` or `~/.cache/jrnn`), where it is downloaded once from its public source
and checked against its sha256 (never, when `$JRNN_OFFLINE=1`).

Text rules (decided here, enforced before anything is compiled):
  * must be UTF-8: invalid bytes raise ValueError;
  * a UTF-8 byte-order mark at the start is dropped (it is an encoding artefact, not text);
  * NUL bytes raise ValueError (a binary file, not text);
  * CRLF line ends are kept as they are: '\r' is then one more symbol of the vocabulary;
  * empty or one-character corpora raise ValueError (a language model needs >= 2 chars).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "CorpusNotFoundError",
    "cache_dir",
    "corpus_path",
    "load_text",
    "decode_text",
    "Vocab",
    "build_vocab",
    "chunks",
    "streams",
    "bucket_length",
    "pad",
    "pad_batch",
]

ENV_VAR = "JRNN_DATA_DIR"
OFFLINE_VAR = "JRNN_OFFLINE"  # set to 1 to never download (the error then says where to get it)

CORPORA = {
    "tinyshakespeare": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "kafka": (
        "https://raw.githubusercontent.com/llSourcell/recurrent_neural_network/master/kafka.txt",
        "836497d1e5a47b1744e68da78822e8af19ddadc565e3a09fde348f300e14ec78",
    ),
}


class CorpusNotFoundError(FileNotFoundError):
    """The corpus is neither at the given path, nor in $JRNN_DATA_DIR, nor downloadable."""


def cache_dir() -> Path:
    """The folder corpora are downloaded to: `$XDG_CACHE_HOME/jrnn`, else `~/.cache/jrnn`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jrnn"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(name: str, dest: Path, tried: list[Path]) -> None:
    url, sha = CORPORA[name]
    looked = ", ".join(str(p) for p in tried)
    missing = (f"corpus {name!r} not found (looked for {looked}): put {name}.txt in a folder and set "
               f"{ENV_VAR} to it, pass its path (--data PATH), or go online to download it once from {url}")
    if os.environ.get(OFFLINE_VAR, "") not in ("", "0"):
        raise CorpusNotFoundError(f"{missing} ({OFFLINE_VAR} is set: unset it to allow the download)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            payload = r.read()
    except OSError as e:
        raise CorpusNotFoundError(f"{missing} ({e.__class__.__name__}: {e})") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != sha:
        raise ValueError(f"download of {name!r} from {url} has sha256 {got}, expected {sha}; not saved "
                         f"(fetch the file yourself, check it, and pass its path, e.g. --data PATH)")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".download")
    with os.fdopen(fd, "wb") as f:  # atomic: a killed download never leaves a half file
        f.write(payload)
    os.replace(tmp, dest)


def corpus_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """Locate corpus `name` ("tinyshakespeare", "kafka"): explicit path, $JRNN_DATA_DIR, cache."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CorpusNotFoundError(f"no corpus file at {p.expanduser().absolute()}: check the path "
                                      f"(or leave it out to use ${ENV_VAR} or the download)")
        return p
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(CORPORA)} (or pass a path)")
    tried = []
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser().absolute() / f"{name}.txt"
        if p.is_file():
            return p
        tried.append(p)
    p = cache_dir() / f"{name}.txt"
    if p.is_file():
        got, want = _sha256(p), CORPORA[name][1]
        if got == want:
            return p
        if os.environ.get(OFFLINE_VAR, "") not in ("", "0"):  # online, the download below replaces it
            raise ValueError(f"cached corpus {p} fails its checksum (sha256 {got}, expected {want}): delete it "
                             f"so that jrnn downloads it again (unset {OFFLINE_VAR}), set {ENV_VAR} to a folder "
                             f"holding {name}.txt, or pass its path")
    tried.append(p)
    _download(name, p, tried)
    return p


def decode_text(raw: bytes, source: str = "corpus") -> str:
    """Apply the text rules of this module to raw bytes."""
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"decode_text takes the raw bytes of a file, got {type(raw).__name__}")
    if b"\x00" in raw:
        raise ValueError(f"{source} contains NUL bytes: not a text file")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if len(text) < 2:
        raise ValueError(f"{source} has {len(text)} characters; a language model needs at least 2")
    return text


def load_text(name: str, path: str | os.PathLike | None = None) -> str:
    """Read and validate a corpus (see the module's text rules)."""
    p = corpus_path(name, path)
    return decode_text(p.read_bytes(), source=str(p))


class Vocab(NamedTuple):
    """A sorted character vocabulary: id i is `chars[i]`; `encode(text)` gives int32 ids [N],
    `decode(ids)` the text of ids in [0, size)."""
    chars: tuple

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids `[len(text)]`; ValueError on characters outside the vocabulary."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        """Ids in [0, size) -> text; ValueError/TypeError otherwise (-1 is not the last char)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must lie in [0, {self.size}), got min {ids.min()}, max {ids.max()}")
        return "".join(self.chars[i] for i in ids.tolist())


def build_vocab(text: str) -> Vocab:
    """Sorted, so ids never depend on hash order (never `list(set(text))`). `text` is a str
    (bytes would give a vocabulary of integers that `decode` cannot join) with at least one
    character."""
    if not isinstance(text, str):
        raise TypeError(f"build_vocab takes text (a str), got {type(text).__name__}"
                        + (": decode bytes with jrnn.data.decode_text" if isinstance(text, (bytes, bytearray)) else ""))
    if not text:
        raise ValueError("build_vocab got empty text: a vocabulary needs at least one character")
    return Vocab(tuple(sorted(set(text))))


def _token_ids(ids, name: str = "ids") -> np.ndarray:
    """A 1-D array of non-negative integer token ids (a str, float or -1 is not a token id)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be integer token ids, got text ({type(ids).__name__}): encode it with a Vocab")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of tokens, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got {ids.dtype} (encode text with a Vocab)")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {ids.min()}")
    return ids


def chunks(ids: np.ndarray, seq_len: int):
    """Consecutive non-overlapping (input, target) chunks, as the truncated-BPTT char LM and min-char-rnn read text.

    Returns (inputs `[N, T]`, targets `[N, T]`) with targets = inputs shifted by one.
    """
    ids = _token_ids(ids)
    seq_len = checks.integer("seq_len", seq_len)
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"text of {len(ids)} tokens is shorter than seq_len + 1 = {seq_len + 1}")
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    return x, y


def streams(ids: np.ndarray, batch_size: int, seq_len: int):
    """Cut text into B parallel streams read T tokens at a time (hidden state carried per stream).

    Returns (inputs `[N, T, B]`, targets `[N, T, B]`), time-major inside each chunk.
    """
    ids = _token_ids(ids)
    batch_size, seq_len = checks.integer("batch_size", batch_size), checks.integer("seq_len", seq_len)
    per = (len(ids) - 1) // batch_size
    n = per // seq_len
    if n < 1:
        raise ValueError(f"{len(ids)} tokens cannot fill {batch_size} streams of {seq_len + 1}")
    x = ids[: batch_size * per].reshape(batch_size, per)[:, : n * seq_len]
    y = ids[1: batch_size * per + 1].reshape(batch_size, per)[:, : n * seq_len]
    shape = lambda a: a.reshape(batch_size, n, seq_len).transpose(1, 2, 0)
    return shape(x), shape(y)


def bucket_length(n: int, bucket: int = 32) -> int:
    """Round a sequence length up to a multiple of `bucket`, so that batches of many real lengths
    share a few padded shapes (one compilation each) instead of one shape per length."""
    n, bucket = checks.integer("length", n), checks.integer("bucket", bucket)
    return -(-n // bucket) * bucket


def pad(sequences, length: int | None = None, *, bucket: int | None = None, pad_id: int = 0,
        time_major: bool = True):
    """Right-pad token sequences into (ids int32, mask bool), `[T, B]` (time-major, as every jrnn
    model takes them) or `[B, T]` with `time_major=False` (then pass `time_major=False` to the
    model too). T is `length` if given, else the longest sequence rounded up with
    `bucket_length`. The lengths are `mask.sum(0)` (`.sum(1)` batch-first)."""
    ids, mask = _padded(sequences, length, bucket, pad_id)
    return (ids.T.copy(), mask.T.copy()) if checks.boolean("time_major", time_major) else (ids, mask)


def pad_batch(sequences, length: int | None = None, *, bucket: int | None = None, pad_id: int = 0):
    """Deprecated (0.1): `pad(..., time_major=False)`, batch-first (ids `[B, T]`, mask `[B, T]`)."""
    warnings.warn("jrnn.data.pad_batch is deprecated and will be removed in jrnn 0.3; use jrnn.data.pad "
                  "(time-major [T, B], as the models take; time_major=False for [B, T])",
                  DeprecationWarning, stacklevel=2)
    return _padded(sequences, length, bucket, pad_id)


def _padded(sequences, length, bucket, pad_id):
    """(ids `[B, T]` int32, mask `[B, T]` bool) of right-padded sequences, checked."""
    if isinstance(sequences, (str, bytes)):
        raise TypeError("pad takes a list of token-id sequences, got text: encode each with a Vocab")
    sequences = list(sequences)
    for i, s in enumerate(sequences):
        if isinstance(s, (str, bytes)):
            raise TypeError(f"sequence {i} is text ({s[:20]!r}), not token ids: encode it with a Vocab")
    seqs = [np.asarray(s) for s in sequences]
    if not seqs or any(s.ndim != 1 or s.size == 0 for s in seqs):
        raise ValueError("pad needs a non-empty list of non-empty 1-D sequences")
    for i, s in enumerate(seqs):  # int32 ids: a float would be truncated, 2**40 wrapped, -1 kept
        _token_ids(s, f"sequence {i}")
        if s.max() > np.iinfo(np.int32).max:
            raise ValueError(f"sequence {i} holds id {s.max()}, more than int32 holds")
    if not 0 <= checks.integer("pad_id", pad_id, minimum=None) <= np.iinfo(np.int32).max:
        raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")
    longest = max(len(s) for s in seqs)
    T = (checks.integer("length", length) if length is not None
         else bucket_length(longest, bucket) if bucket is not None else longest)
    if T < longest:
        raise ValueError(f"length {T} is shorter than the longest sequence ({longest})")
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    return ids, mask
