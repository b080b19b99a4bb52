"""Featurisers: text -> float32[R, D], named in every router checkpoint.

Two implementations behind one small interface (:class:`Featurizer`):

* ``hashed-ngram`` (default): deterministic signed feature hashing of word unigrams
  (optionally word bigrams and character n-grams) of the lower-cased UTF-8 bytes. No downloads, no
  vocabulary; vectorised in NumPy over the whole batch (no per-token Python loop), so it
  featurises tens of thousands of texts per second on one core. The hash is our own
  64-bit polynomial hash (not Python's salted ``hash``), so features are identical across
  processes and machines.
* ``openai-embeddings``: any OpenAI-compatible ``/v1/embeddings`` endpoint (vLLM serves
  embedding models), batched, with timeouts and clear errors when the endpoint is down or
  returns the wrong dimension.

``make_featurizer(name, config)`` rebuilds a featuriser from what a checkpoint recorded.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from aragog_jax.engines.http import TRANSPORT_ERRORS, LoopSessions, transport_error
from aragog_jax.errors import CheckpointError, UpstreamError

__all__ = [
    "EmbeddingsFeaturizer",
    "Featurizer",
    "HashedNgramFeaturizer",
    "make_featurizer",
]


@runtime_checkable
class Featurizer(Protocol):
    """Text to features. ``name`` and ``config()`` go into the checkpoint."""

    name: str

    @property
    def dim(self) -> int: ...

    def config(self) -> dict: ...

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim]."""
        ...


# ---------------------------------------------------------------------------------------
# Hashed n-grams

_P = np.uint64(0x100000001B3)  # FNV-64 prime, odd, so invertible mod 2**64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K_BIGRAM = np.uint64(0x9E3779B97F4A7C15)
_SALT = {"w1": 0x1F2E3D4C5B6A7988, "w2": 0x2B7E151628AED2A6, "c": 0x3C6EF372FE94F82B}


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps mod 2**64)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(0, np.uint64), np.ones(0, np.uint64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P^i, P^-i) mod 2**64`` for ``i < at least n``, cached (featurising is a hot path).

    The cache grows by doubling and is replaced as one tuple, so a concurrent caller
    sees either the old or the new pair, never a mix; the arrays are read-only.
    """
    global _POWERS
    cached = _POWERS
    if cached[0].shape[0] >= n:
        return cached
    size = 1 << max(16, (n - 1).bit_length())
    pair = []
    for base in (_P, _P_INV):
        a = np.full(size, base, np.uint64)
        a[0] = 1
        a = np.cumprod(a, dtype=np.uint64)
        a.setflags(write=False)
        pair.append(a)
    _POWERS = (pair[0], pair[1])
    return _POWERS


def _word_byte(buf: np.ndarray) -> np.ndarray:
    """bool per byte: a-z, 0-9, '_' or any non-ASCII byte (after lower-casing)."""
    return ((buf >= 97) & (buf <= 122)) | ((buf >= 48) & (buf <= 57)) | (buf == 95) | (buf >= 128)


@dataclass(frozen=True)
class HashedNgramFeaturizer:
    """Signed hashed n-gram features, ``sign(x) * log1p(|x|)`` then L2-normalised rows.

    Attributes:
      dim: output dimension, a power of two.
      word_ngrams: word n-gram orders (1 and/or 2; default unigrams: on the shipped
        synthetic data bigrams only add hash collisions and cut the flexibility kept at
        epsilon 0.02 from 0.54 to 0.37 on self_refine_humaneval/qwen). Words are maximal
        runs of ``[a-z0-9_]`` and non-ASCII bytes after lower-casing.
      char_ngrams: character (byte) n-gram orders over the text with every non-word byte
        mapped to a space; n-grams never cross texts.
      seed: salts every hash, so different seeds give independent hash functions.
    """

    dim: int = 1024
    word_ngrams: tuple[int, ...] = (1,)
    char_ngrams: tuple[int, ...] = ()
    seed: int = 0
    name: str = field(default="hashed-ngram", init=False)

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.dim & (self.dim - 1):
            raise CheckpointError(
                f"hashed-ngram featuriser: dim must be a power of two, got {self.dim}"
            )
        if not set(self.word_ngrams) <= {1, 2}:
            raise CheckpointError(
                f"hashed-ngram featuriser: word_ngrams must be among (1, 2), got {self.word_ngrams}"
            )
        if any(n < 1 or n > 16 for n in self.char_ngrams):
            raise CheckpointError(
                f"hashed-ngram featuriser: char_ngrams must be in 1..16, got {self.char_ngrams}"
            )
        object.__setattr__(self, "word_ngrams", tuple(self.word_ngrams))
        object.__setattr__(self, "char_ngrams", tuple(self.char_ngrams))

    def config(self) -> dict:
        d = asdict(self)
        d.pop("name")
        d["word_ngrams"] = list(self.word_ngrams)
        d["char_ngrams"] = list(self.char_ngrams)
        return d

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        num = len(texts)
        if num == 0:
            return np.zeros((0, self.dim), np.float32)
        if num <= SMALL_BATCH and self.word_ngrams == (1,) and not self.char_ngrams:
            return self._unigrams_small(texts)
        return self._vectorised(texts)

    def _vectorised(self, texts: Sequence[str]) -> np.ndarray:
        """The whole batch in NumPy, with no per-token Python loop."""
        num = len(texts)
        encoded = [t.lower().encode("utf-8") for t in texts]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=num)
        # One separator byte after every text: no n-gram crosses two texts.
        buf = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)
        row = np.repeat(np.arange(num, dtype=np.int64), lengths + 1)
        is_word = _word_byte(buf)
        buf = np.where(is_word, buf, np.uint8(32))
        n_bytes = buf.shape[0]

        # Prefix hashes: pre[i] = sum_{j<i} b_j * P^-j, so the polynomial hash of bytes
        # [s, e) is P^(e-1) * (pre[e] - pre[s]) (all mod 2**64; uint64 wraps).
        p_pow, p_inv_pow = _powers(n_bytes + 1)
        pre = np.zeros(n_bytes + 1, np.uint64)
        np.cumsum(buf.astype(np.uint64) * p_inv_pow[:n_bytes], dtype=np.uint64, out=pre[1:])

        def seg_hash(s: np.ndarray, e: np.ndarray) -> np.ndarray:
            return p_pow[e - 1] * (pre[e] - pre[s])

        seed = np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF)
        hashes: list[np.ndarray] = []
        rows: list[np.ndarray] = []

        if self.word_ngrams:
            prev = np.concatenate(([False], is_word[:-1]))
            nxt = np.concatenate((is_word[1:], [False]))
            starts = np.flatnonzero(is_word & ~prev)
            ends = np.flatnonzero(is_word & ~nxt) + 1
            words = seg_hash(starts, ends)
            word_rows = row[starts]
            if 1 in self.word_ngrams:
                hashes.append(_mix(words ^ np.uint64(_SALT["w1"]) ^ seed))
                rows.append(word_rows)
            if 2 in self.word_ngrams and words.shape[0] > 1:
                same = word_rows[1:] == word_rows[:-1]
                pair = _mix(words[:-1]) * _K_BIGRAM + words[1:]
                hashes.append(_mix(pair[same] ^ np.uint64(_SALT["w2"]) ^ seed))
                rows.append(word_rows[1:][same])
        word_cum = np.zeros(n_bytes + 1, np.int64)
        np.cumsum(is_word, out=word_cum[1:])
        for n in self.char_ngrams:
            if n_bytes < n:
                continue
            s = np.arange(n_bytes - n + 1, dtype=np.int64)
            # within one text, and not made of separator spaces only
            ok = (row[s] == row[s + n - 1]) & (word_cum[s + n] > word_cum[s])
            s = s[ok]
            salt = np.uint64((_SALT["c"] + n) & 0xFFFFFFFFFFFFFFFF)
            hashes.append(_mix(seg_hash(s, s + n) ^ salt ^ seed))
            rows.append(row[s])

        if not hashes:
            return np.zeros((num, self.dim), np.float32)
        h = np.concatenate(hashes)
        r = np.concatenate(rows)
        bucket = (h & np.uint64(self.dim - 1)).astype(np.int64)
        sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
        counts = np.bincount(r * self.dim + bucket, weights=sign, minlength=num * self.dim)
        # Transform only the non-zero cells: the dense [R, D] array is mostly zeros.
        nz = np.flatnonzero(counts)
        v = counts[nz]
        v = np.sign(v) * np.log1p(np.abs(v))
        nz_rows = nz // self.dim
        norm = np.sqrt(np.bincount(nz_rows, weights=v * v, minlength=num))
        out = np.zeros(num * self.dim, np.float32)
        out[nz] = v / norm[nz_rows]  # a row with a non-zero cell has a positive norm
        return out.reshape(num, self.dim)

    def _unigrams_small(self, texts: Sequence[str]) -> np.ndarray:
        """Word unigrams of a few texts, bit-identical to the vectorised path (a test
        proves it): one request's routing pays ~40 NumPy calls' fixed cost there, about
        0.2 ms, against about a microsecond per word here.

        The same hash per word: the polynomial hash by Horner's rule (what ``seg_hash``
        computes from prefix sums), the splitmix64 finaliser, the same salt and seed. A
        cell's count is a small integer, so ``sign * log1p(|count|)`` comes from a table
        NumPy computed; the squares are summed in ascending cell order, as ``bincount``
        sums them, and square root and division are correctly rounded in both paths."""
        out = np.zeros((len(texts), self.dim), np.float32)
        salt = (_SALT["w1"] ^ self.seed) & _MASK64
        low = self.dim - 1
        cache = _WORD_CELLS.setdefault((salt, low), {})
        if len(cache) > _WORD_CACHE_SIZE:
            cache.clear()  # bounded: a vocabulary's words come back at once
        for i, text in enumerate(texts):
            counts: dict[int, int] = {}
            for word in _WORD.findall(text.lower().encode("utf-8")):
                hit = cache.get(word)
                if hit is None:
                    h = 0
                    for b in word:
                        h = (h * _P_INT + b) & _MASK64
                    h = _mix_int(h ^ salt)
                    hit = cache[word] = (h & low, -1 if h >> 63 else 1)
                counts[hit[0]] = counts.get(hit[0], 0) + hit[1]
            cells = sorted(c for c, n in counts.items() if n)
            if not cells:
                continue
            if max(abs(counts[c]) for c in cells) >= len(_LOG1P):
                out[i] = self._vectorised([text])[0]
                continue
            vals = [_LOG1P[n] if n > 0 else -_LOG1P[-n] for n in (counts[c] for c in cells)]
            sq = 0.0
            for x in vals:
                sq += x * x
            norm = math.sqrt(sq)
            out[i, cells] = [x / norm for x in vals]
        return out


#: Batches up to this size featurise text by text in Python (unigram featurisers): the
#: vectorised path's fixed cost is larger than a few texts' per-word cost.
SMALL_BATCH = 4
_MASK64 = (1 << 64) - 1
_P_INT = int(_P)
_M1_INT, _M2_INT = int(_M1), int(_M2)
# A word: a maximal run of [a-z0-9_] and non-ASCII bytes (``_word_byte``) after lower-casing.
_WORD = re.compile(rb"[a-z0-9_\x80-\xff]+")
#: Each word's (cell, sign) per hash (salt, dim), up to this many words: natural text
#: repeats a vocabulary, so a request's words are mostly hashed already.
_WORD_CACHE_SIZE = 1 << 16
_WORD_CELLS: dict[tuple[int, int], dict[bytes, tuple[int, int]]] = {}
#: log1p(k) for the counts a cell takes in a short text, computed by NumPy (the batch
#: path's own function, so the two paths agree to the bit).
_LOG1P: list[float] = np.log1p(np.arange(1024, dtype=np.float64)).tolist()


def _mix_int(h: int) -> int:
    """``_mix`` on one Python int (the same splitmix64 finaliser, mod 2**64)."""
    h ^= h >> 30
    h = (h * _M1_INT) & _MASK64
    h ^= h >> 27
    h = (h * _M2_INT) & _MASK64
    return h ^ (h >> 31)


# ---------------------------------------------------------------------------------------
# OpenAI-compatible embeddings endpoint


@dataclass(frozen=True)
class EmbeddingsFeaturizer:
    """Embeddings from an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    Attributes:
      base_url: e.g. ``http://localhost:8000/v1`` (a vLLM embedding server).
      model: the embedding model name sent in every request.
      dim: expected embedding dimension; a different one is an error.
      batch_size: texts per HTTP request.
      max_concurrency: requests in flight at once.
      timeout_s: total timeout of one HTTP request.
      api_key_env: name of the environment variable holding a bearer token (read when a
        request is made, never at import); empty for none.
      normalize: L2-normalise the returned vectors.
    """

    base_url: str
    model: str
    dim: int
    batch_size: int = 64
    max_concurrency: int = 4
    timeout_s: float = 30.0
    api_key_env: str = ""
    normalize: bool = True
    name: str = field(default="openai-embeddings", init=False)

    def __post_init__(self) -> None:
        # One HTTP session (and its connection pool) per event loop that calls aembed;
        # not a field, so config(), equality and hashing ignore it.
        sessions = LoopSessions(max_connections=self.max_concurrency, timeout_s=self.timeout_s)
        object.__setattr__(self, "_sessions", sessions)

    def config(self) -> dict:
        d = asdict(self)
        d.pop("name")
        return d

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Synchronous batch embedding (training and offline jobs): one event loop and
        one session for the call.

        Must not be called from a running event loop; async code uses :meth:`aembed`.
        """

        async def once() -> np.ndarray:
            try:
                return await self.aembed(texts)
            finally:
                await self.aclose()

        return asyncio.run(once())

    def _session(self):
        """The running loop's session, opened on first use and kept until :meth:`aclose`."""
        return self._sessions.open()

    async def aclose(self) -> None:
        """Close the running loop's session (a server calls this when it stops)."""
        await self._sessions.aclose()

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim], batched with at most ``max_concurrency`` requests in flight,
        over the running loop's long-lived session (see :meth:`aclose`).

        Raises:
          UpstreamError: the endpoint is down, answers non-200, or returns malformed data
            or vectors of the wrong dimension.
          UpstreamTimeout: a request took longer than ``timeout_s``.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        url = self.base_url.rstrip("/") + "/embeddings"
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        sem = asyncio.Semaphore(max(1, self.max_concurrency))

        async def one(session, lo: int) -> None:
            batch = texts[lo : lo + self.batch_size]
            async with sem:
                try:
                    async with session.post(
                        url, json={"model": self.model, "input": batch}, headers=headers
                    ) as resp:
                        if resp.status != 200:
                            body = (await resp.text())[:200]
                            raise UpstreamError(
                                f"embeddings endpoint {url} answered HTTP {resp.status}: {body}"
                            )
                        payload = await resp.json(content_type=None)
                except UpstreamError:
                    raise
                except TRANSPORT_ERRORS as exc:
                    raise transport_error(
                        exc, f"embeddings endpoint {url}", self.timeout_s
                    ) from exc
            try:
                items = sorted(payload["data"], key=lambda d: d["index"])
                vecs = np.asarray([d["embedding"] for d in items], dtype=np.float32)
            except (KeyError, TypeError, ValueError) as exc:
                raise UpstreamError(
                    f"embeddings endpoint {url} sent a malformed reply: {exc!r}"
                ) from exc
            if vecs.ndim != 2 or vecs.shape[0] != len(batch):
                raise UpstreamError(
                    f"embeddings endpoint {url} returned {vecs.shape[0] if vecs.ndim else 0} "
                    f"vectors for {len(batch)} inputs"
                )
            if vecs.shape[1] != self.dim:
                raise UpstreamError(
                    f"embeddings endpoint {url} (model {self.model!r}) returned dimension {vecs.shape[1]}, "
                    f"the router expects {self.dim}; serve the model the router was trained with"
                )
            if self.normalize:
                norm = np.linalg.norm(vecs, axis=1, keepdims=True)
                vecs = vecs / np.where(norm > 0, norm, 1.0)
            out[lo : lo + len(batch)] = vecs

        session = self._session()
        await asyncio.gather(*(one(session, lo) for lo in range(0, len(texts), self.batch_size)))
        return out


_FEATURIZERS = {"hashed-ngram": HashedNgramFeaturizer, "openai-embeddings": EmbeddingsFeaturizer}


def make_featurizer(name: str, config: dict | None = None, **overrides) -> Featurizer:
    """Build a featuriser by name from its recorded ``config()`` plus overrides.

    Raises:
      CheckpointError: unknown featuriser name or config field.
    """
    cls = _FEATURIZERS.get(name)
    if cls is None:
        raise CheckpointError(
            f"unknown featuriser {name!r} (known: {', '.join(sorted(_FEATURIZERS))})"
        )
    cfg = dict(config or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("word_ngrams", "char_ngrams"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise CheckpointError(f"featuriser {name!r}: bad config {cfg}: {exc}") from exc
