"""Featurisers: the hashed n-gram featuriser against a plain-Python reference; the embeddings client
against a loopback fake ``/v1/embeddings`` endpoint."""

from __future__ import annotations

import asyncio
import math
import socket
import threading

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from aragog_jax.errors import CheckpointError, UpstreamError, UpstreamTimeout
from aragog_jax.router import EmbeddingsFeaturizer, HashedNgramFeaturizer, make_featurizer
from aragog_jax.router import _featurize as F

MASK = (1 << 64) - 1


def _mix(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def _poly(bs: bytes) -> int:
    h = 0
    for b in bs:
        h = (h * 0x100000001B3 + b) & MASK
    return h


def _is_word(b: int) -> bool:
    return 97 <= b <= 122 or 48 <= b <= 57 or b == 95 or b >= 128


def reference_features(texts, dim, word_ngrams, char_ngrams, seed=0):
    """The hashed n-gram featuriser written as the obvious loops."""
    out = np.zeros((len(texts), dim))
    for r, t in enumerate(texts):
        raw = t.lower().encode("utf-8")
        buf = bytes(b if _is_word(b) else 32 for b in raw) + b" "
        words = [w for w in buf.split(b" ") if w]
        hashes = []
        wh = [_poly(w) for w in words]
        if 1 in word_ngrams:
            hashes += [_mix(h ^ F._SALT["w1"] ^ seed) for h in wh]
        if 2 in word_ngrams:
            hashes += [
                _mix((((_mix(a) * int(F._K_BIGRAM)) & MASK) + b) & MASK ^ F._SALT["w2"] ^ seed)
                for a, b in zip(wh, wh[1:], strict=False)
            ]
        for n in char_ngrams:
            for i in range(len(buf) - n + 1):
                g = buf[i : i + n]
                if g.strip(b" "):
                    hashes.append(_mix(_poly(g) ^ ((F._SALT["c"] + n) & MASK) ^ seed))
        for h in hashes:
            out[r, h & (dim - 1)] += -1.0 if h >> 63 else 1.0
    x = np.sign(out) * np.log1p(np.abs(out))
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


TEXTS = [
    "Write a function that returns the n-th Fibonacci number.",
    "def add(a, b):\n    return a + b  # Ünïcode façade, naïve café",
    "",
    "   ",
    "x",
    "SELECT name FROM users WHERE id = 3; select NAME from USERS",
]


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(word_ngrams=(1, 2), char_ngrams=(3, 5)), dict(word_ngrams=(2,), dim=64, seed=7)],
)
def test_hashed_ngram_matches_reference_loops(kw):
    f = HashedNgramFeaturizer(**kw)
    got = f(TEXTS)
    want = reference_features(TEXTS, f.dim, f.word_ngrams, f.char_ngrams, f.seed)
    assert got.shape == (len(TEXTS), f.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    norms = np.linalg.norm(got, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 5]], 1.0, rtol=1e-5)
    assert norms[2] == 0.0 and norms[3] == 0.0  # nothing to hash
    assert norms[4] == pytest.approx(
        0.0 if f.word_ngrams == (2,) else 1.0, abs=1e-6
    )  # one word, no bigram


def test_hashed_ngram_is_deterministic_batch_invariant_and_case_insensitive():
    f = HashedNgramFeaturizer(dim=256, word_ngrams=(1, 2))
    batch = f(TEXTS)
    for i, t in enumerate(TEXTS):
        np.testing.assert_array_equal(f([t])[0], batch[i])
    np.testing.assert_array_equal(f(["Hello World"]), f(["hello world"]))
    assert not np.array_equal(f(["hello world"]), f(["world hello"]))  # bigrams see order
    assert not np.array_equal(
        HashedNgramFeaturizer(dim=256, word_ngrams=(1, 2), seed=1)(TEXTS[:1]), batch[:1]
    )
    uni = HashedNgramFeaturizer(dim=256)
    np.testing.assert_array_equal(
        uni(["hello world"]), uni(["world hello"])
    )  # the default is a bag of words
    assert f([]).shape == (0, 256)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(
        st.one_of(
            st.text(max_size=80),
            st.text(alphabet="ab_ZÉ9 .,\n", max_size=60),
            st.lists(st.sampled_from(["x", "Yy", "z_1", "é"]), max_size=40).map(" ".join),
        ),
        min_size=1,
        max_size=F.SMALL_BATCH,
    ),
    dim=st.sampled_from([2, 64, 1024]),
    seed=st.integers(0, 2**64 - 1),
)
def test_the_small_batch_path_is_bit_identical_to_the_vectorised_one(texts, dim, seed):
    """One request's texts go through the per-word Python path (and its word cache); it
    must give the very bits the batch path gives, so routing never depends on the batch a
    request arrives in. Counts past the log1p table fall back to the batch path."""
    f = HashedNgramFeaturizer(dim=dim, seed=seed)
    want = f._vectorised(texts)
    for _ in range(2):  # cold, then through the word cache
        got = f(texts)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_the_small_batch_path_handles_counts_past_its_table():
    f = HashedNgramFeaturizer(dim=2)
    text = " ".join(["same"] * (len(F._LOG1P) + 5) + ["other"])
    assert np.array_equal(f([text]), f._vectorised([text]))
    assert np.array_equal(f([text, "a b"]), f._vectorised([text, "a b"]))


def test_featurizer_config_round_trip_and_validation():
    f = HashedNgramFeaturizer(dim=512, char_ngrams=(4,))
    g = make_featurizer(f.name, f.config())
    assert g == f
    with pytest.raises(CheckpointError, match="power of two"):
        HashedNgramFeaturizer(dim=1000)
    with pytest.raises(CheckpointError, match="unknown featuriser"):
        make_featurizer("bag-of-magic", {})
    e = EmbeddingsFeaturizer(base_url="http://x/v1", model="m", dim=8)
    assert make_featurizer(e.name, e.config(), base_url="http://y/v1").base_url == "http://y/v1"


# -- embeddings client against a loopback fake endpoint ----------------------------------


class FakeEmbeddings:
    """``POST /v1/embeddings`` returning deterministic vectors; modes: ok, wrong_dim, slow, error."""

    def __init__(self, dim: int):
        self.dim = dim
        self.mode = "ok"
        self.batches: list[int] = []
        self.auth: list[str | None] = []
        self.peers: list[int] = []  # client port of every request (one per TCP connection)
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    @staticmethod
    def vector(text: str, dim: int) -> list[float]:
        return [math.sin(len(text) + i) + 0.01 * sum(map(ord, text)) for i in range(dim)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.batches.append(len(body["input"]))
        self.auth.append(request.headers.get("Authorization"))
        self.peers.append(request.transport.get_extra_info("peername")[1])
        if self.mode == "slow":
            await asyncio.sleep(2.0)
        if self.mode == "error":
            return web.json_response({"error": "boom"}, status=500)
        dim = self.dim + (1 if self.mode == "wrong_dim" else 0)
        data = [
            {"index": i, "embedding": self.vector(t, dim), "object": "embedding"}
            for i, t in enumerate(body["input"])
        ]
        data.reverse()  # clients must order by index
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc):
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake():
    with FakeEmbeddings(dim=8) as f:
        yield f


def test_embeddings_batches_orders_and_normalises(fake, monkeypatch):
    fake.mode = "ok"
    fake.batches.clear()
    monkeypatch.setenv("FAKE_EMB_KEY", "sekrit")
    f = EmbeddingsFeaturizer(
        base_url=f"http://127.0.0.1:{fake.port}/v1",
        model="m",
        dim=8,
        batch_size=3,
        api_key_env="FAKE_EMB_KEY",
    )
    texts = [f"text number {i}" for i in range(8)]
    x = f(texts)
    assert x.shape == (8, 8) and x.dtype == np.float32
    assert sorted(fake.batches) == [2, 3, 3]
    assert fake.auth[-1] == "Bearer sekrit"
    want = np.asarray([FakeEmbeddings.vector(t, 8) for t in texts], np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(x, want, rtol=1e-5)


def test_embeddings_wrong_dimension_is_a_clear_error(fake):
    fake.mode = "wrong_dim"
    f = EmbeddingsFeaturizer(base_url=f"http://127.0.0.1:{fake.port}/v1", model="m", dim=8)
    with pytest.raises(UpstreamError, match="returned dimension 9, the router expects 8"):
        f(["a", "b"])


def test_embeddings_http_error_and_timeout(fake):
    url = f"http://127.0.0.1:{fake.port}/v1"
    fake.mode = "error"
    with pytest.raises(UpstreamError, match="HTTP 500"):
        EmbeddingsFeaturizer(base_url=url, model="m", dim=8)(["a"])
    fake.mode = "slow"
    with pytest.raises(UpstreamTimeout, match="no reply within 0.2 s"):
        EmbeddingsFeaturizer(base_url=url, model="m", dim=8, timeout_s=0.2)(["a"])
    fake.mode = "ok"


def test_embeddings_endpoint_down_is_a_clear_error():
    port = _free_port()  # nothing listens there
    f = EmbeddingsFeaturizer(base_url=f"http://127.0.0.1:{port}/v1", model="m", dim=8, timeout_s=2)
    with pytest.raises(UpstreamError, match="unreachable"):
        f(["a"])


def test_embeddings_session_lives_across_batches_on_one_loop(fake):
    """aembed keeps one session (one connection here) per event loop until aclose; a
    synchronous call opens and closes its own."""
    fake.mode = "ok"
    f = EmbeddingsFeaturizer(
        base_url=f"http://127.0.0.1:{fake.port}/v1", model="m", dim=8, max_concurrency=1
    )

    async def three_batches():
        fake.peers.clear()
        for i in range(3):
            await f.aembed([f"batch {i}"])
        session = f._session()
        await f.aclose()
        return set(fake.peers), session

    peers, session = asyncio.run(three_batches())
    assert len(peers) == 1 and session.closed
    fake.peers.clear()
    f(["a"])
    f(["b"])
    assert len(set(fake.peers)) == 2 and not f._sessions  # each call closed its own


def test_serving_awaits_embeddings_on_the_loop_then_routes_the_features(fake):
    """The server's router worker awaits an embeddings featuriser on the event loop (no
    thread, no new loop per batch) and closes its session when the server stops."""
    from types import SimpleNamespace

    from aragog_jax.router._router import RouteResult
    from aragog_jax.serving._routing import RouterWorker

    fake.mode = "ok"
    feat = EmbeddingsFeaturizer(base_url=f"http://127.0.0.1:{fake.port}/v1", model="m", dim=8)
    seen: list[tuple[int, bool]] = []

    def route_features(x):
        seen.append((x.shape[0], threading.current_thread() is threading.main_thread()))
        mask = np.zeros((x.shape[0], 3), dtype=bool)
        mask[:, 2] = True
        return RouteResult(mask, np.zeros(mask.shape, np.float32), 1.0, 0.0)

    router = SimpleNamespace(featurizer=feat, route_features=route_features)
    wf = SimpleNamespace(
        router=router, servable=np.ones(3, dtype=bool), space=SimpleNamespace(num_configs=3)
    )
    worker = RouterWorker(wf)
    assert worker.in_thread

    async def go():
        fake.peers.clear()
        routed = await asyncio.gather(*(worker.route(f"q{i}") for i in range(4)))
        session = feat._session()
        await worker.aclose()
        return routed, session

    routed, session = asyncio.run(go())
    assert [r.num_admitted for r in routed] == [1] * 4 and all(
        r.router == "trained" for r in routed
    )
    assert sum(n for n, _ in seen) == 4 and all(
        on_main for _, on_main in seen
    )  # on the loop's thread
    assert len(set(fake.peers)) == 1 and session.closed
