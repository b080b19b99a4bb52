"""A continuous-batching engine on a virtual clock, built from an engine profile.

The simulator drives it on virtual time; the emulated engine drives it on wall time.

The model (what a vLLM-style engine does, at iteration granularity):

* Sequences wait in a FIFO queue and join the running batch at an iteration boundary
  while the batch has fewer than ``max_batch`` sequences (the profile's saturation
  batch) and the KV cache can hold the sequence's prompt plus its full output
  (reserved at admission, released at completion, so there is no preemption).
* Every iteration decodes one token for every running sequence and prefills the
  prompts of the sequences that joined at that boundary. Its duration is
  ``decode_base_s + decode_per_seq_s * b + decode_per_ctx_token_s * ctx`` plus
  ``prefill_tokens / prefill_tokens_per_s``, where b is the running batch and ctx the
  context tokens it holds (:func:`aragog_jax.engines.model.decode_step_s`).
* A sequence that joins at iteration j with a prompt of p tokens and o output tokens
  produces its first token at the end of iteration j (the prefill iteration) and its
  last at the end of iteration j + o - 1; during iteration i it holds p + (i - j)
  context tokens.

Between two events (a completion or an admission) the batch is fixed, so iteration
k after the last boundary takes ``A + c * k`` with c = decode_per_ctx_token_s * b: the
engine jumps straight to the next event with the closed form
``T(k) = prefill + k A + c k (k - 1) / 2`` instead of stepping through iterations. A and
c are computed once per boundary, the running sequences are grouped by the iteration
they finish in, and an event costs O(log b).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

from aragog_jax.engines.model import decode_step_s
from aragog_jax.errors import SpecError
from aragog_jax.spec import EngineProfile

INF = math.inf


class BatchingEngine:
    """One engine. The driver calls :meth:`submit`, and :meth:`on_event` at ``next_time``.

    Attributes:
      name: engine name.
      model: model name it serves.
      max_batch: most sequences running at once.
      kv_capacity: KV-cache tokens.
      next_time: virtual time of the next boundary this engine must process (inf: idle).
      version: bumped whenever ``next_time`` changes, so stale heap entries are skipped.
    """

    __slots__ = (
        "name",
        "model",
        "profile",
        "max_batch",
        "kv_capacity",
        "_base",
        "_per_seq",
        "_per_ctx",
        "_prefill_rate",
        "t_b",
        "i_b",
        "_finish_iters",
        "_finishing",
        "b",
        "_sum_p",
        "_sum_j",
        "kv_reserved",
        "_prefill_s",
        "_step_s",
        "_ctx_slope",
        "_next_span",
        "waiting",
        "next_time",
        "_next_k",
        "version",
        "busy_s",
        "tokens_out",
        "completed",
    )

    def __init__(
        self, name: str, model: str, profile: EngineProfile, max_batch: int | None = None
    ) -> None:
        self.name = name
        self.model = model
        self.profile = profile
        self.max_batch = int(max_batch or profile.saturation_batch)
        self.kv_capacity = int(profile.kv_capacity_tokens)
        self._base = profile.decode_base_s
        self._per_seq = profile.decode_per_seq_s
        self._per_ctx = profile.decode_per_ctx_token_s
        self._prefill_rate = profile.prefill_tokens_per_s
        self.t_b = 0.0  # time of the last processed boundary
        self.i_b = 0  # index of the iteration that starts at t_b
        # Running sequences by the iteration they finish in: a heap of the distinct finish
        # iterations, and each one's (job, prompt, reserve, join_iter) in admission order,
        # the order they leave in.
        self._finish_iters: list[int] = []
        self._finishing: dict[int, list[tuple[Any, int, int, int]]] = {}
        self.b = 0
        self._sum_p = 0  # sum of prompts of running sequences
        self._sum_j = 0  # sum of join iterations of running sequences
        self.kv_reserved = 0
        self._prefill_s = 0.0  # prefill seconds charged to iteration i_b
        # The batch is fixed between two boundaries, so the first decode step after t_b
        # (A) and the growth of each later one (c) are computed once per boundary
        # (on_event), as is the span to the next boundary (_set_next).
        self._step_s = 0.0  # A of the running batch (valid while b > 0)
        self._ctx_slope = 0.0  # c = decode_per_ctx_token_s * b
        self._next_span = 0.0  # _span(_next_k), so on_event does not recompute it
        self.waiting: deque[tuple[Any, int, int]] = deque()
        self.next_time = INF
        self._next_k = 0  # iterations from t_b to next_time
        self.version = 0
        self.busy_s = 0.0
        self.tokens_out = 0
        self.completed = 0

    # -- load as a monitor sees it -------------------------------------------------
    @property
    def num_running(self) -> int:
        return self.b

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def kv_usage(self) -> float:
        """Share of KV capacity held by running sequences at the last boundary."""
        return (self._sum_p - self._sum_j + self.b * self.i_b) / self.kv_capacity

    # -- closed-form iteration time ---------------------------------------------------
    def _span(self, k: int) -> float:
        """Seconds from t_b to the end of the k-th iteration (k >= 1) with the batch fixed."""
        return self._prefill_s + k * self._step_s + self._ctx_slope * k * (k - 1) * 0.5

    def _first_boundary_after(self, now: float) -> int:
        """Smallest k >= 1 with t_b + T(k) >= now (the batch is running)."""
        dt = now - self.t_b
        a = self._step_s
        c = self._ctx_slope
        rem = dt - self._prefill_s
        if rem <= a:
            k = 1
        elif c <= 0.0:
            k = max(1, math.ceil(rem / a))
        else:
            # c/2 k^2 + (a - c/2) k - rem >= 0
            h = a - 0.5 * c
            k = max(1, math.ceil((-h + math.sqrt(h * h + 2.0 * c * rem)) / c))
        while k > 1 and self.t_b + self._span(k - 1) >= now:
            k -= 1
        while self.t_b + self._span(k) < now:
            k += 1
        return k

    def _set_next(self, k: int) -> None:
        """The next boundary is k >= 1 iterations after t_b."""
        self._next_k = k
        span = self._span(k)
        self._next_span = span
        self.next_time = self.t_b + span
        self.version += 1

    # -- driver interface -------------------------------------------------------------
    def submit(self, now: float, job: Any, prompt_tokens: int, output_tokens: int) -> bool:
        """Queue a sequence at ``now``. Returns True when ``next_time`` changed.

        Raises:
          SpecError: the sequence can never fit this engine's KV cache.
        """
        output_tokens = int(output_tokens)
        if output_tokens < 1:
            output_tokens = 1
        if prompt_tokens + output_tokens > self.kv_capacity:
            raise SpecError(
                f"engine {self.name}: a sequence of {prompt_tokens}+{output_tokens} tokens exceeds "
                f"the KV capacity of {self.kv_capacity} tokens"
            )
        self.waiting.append((job, int(prompt_tokens), output_tokens))
        if self.b == 0:
            if self.next_time == INF:  # idle: start an iteration now
                self.t_b = now
                self._prefill_s = 0.0
                self._next_k = 0
                self.next_time = now
                self.version += 1
                return True
            return False  # a boundary is already pending
        if self.b >= self.max_batch or len(self.waiting) > 1:
            # Full, or queued behind earlier sequences whose boundary is already set
            # (or which wait for KV space until the next completion).
            return False
        k = self._first_boundary_after(now)
        if k < self._next_k:
            self._set_next(k)
            return True
        return False

    def on_event(self, now: float) -> list[Any]:
        """Process the boundary at ``now`` (== ``next_time``); return the finished jobs."""
        k = self._next_k
        b = self.b
        if b > 0 and k > 0:
            self.busy_s += self._next_span
            self.tokens_out += k * b
            self.i_b += k
        i_b = self.i_b
        self.t_b = now
        done: list[Any] = []
        iters, finishing = self._finish_iters, self._finishing
        if iters and iters[0] < i_b:  # sequences whose last token was iteration i_b - 1
            sum_p = sum_j = reserved = 0
            while iters and iters[0] < i_b:
                for job, p, reserve, j in finishing.pop(heapq.heappop(iters)):
                    sum_p += p
                    sum_j += j
                    reserved += reserve
                    done.append(job)
            b -= len(done)
            self._sum_p -= sum_p
            self._sum_j -= sum_j
            self.kv_reserved -= reserved
            self.completed += len(done)
        # Admit waiting sequences FIFO while the batch and the KV cache have room.
        waiting = self.waiting
        prefill_tokens = 0
        if waiting and b < self.max_batch:
            max_batch, capacity, reserved = self.max_batch, self.kv_capacity, self.kv_reserved
            b0 = b
            while waiting and b < max_batch:
                job, p, o = waiting[0]
                if reserved + p + o > capacity:
                    break
                waiting.popleft()
                f = i_b + o - 1
                seqs = finishing.get(f)
                if seqs is None:
                    finishing[f] = [(job, p, p + o, i_b)]
                    heapq.heappush(iters, f)
                else:
                    seqs.append((job, p, p + o, i_b))
                b += 1
                reserved += p + o
                prefill_tokens += p
            self.kv_reserved = reserved
            self._sum_p += prefill_tokens
            self._sum_j += (b - b0) * i_b
        self.b = b
        self._prefill_s = prefill_tokens / self._prefill_rate
        if b == 0:
            self._next_k = 0
            self.next_time = INF
            self.version += 1
        else:
            # Sequences still waiting (batch full or KV blocked) are retried at the next
            # completion boundary, the first moment anything frees up.
            # The batch is now fixed until the next boundary: A and c once for all of it.
            self._step_s = decode_step_s(
                self._base, self._per_seq, self._per_ctx, b, self._sum_p - self._sum_j + b * i_b
            )
            self._ctx_slope = self._per_ctx * b
            self._set_next(iters[0] - i_b + 1)
        return done


def run_standalone(engine: BatchingEngine, jobs: list[tuple[float, int, int]]) -> list[float]:
    """Feed ``(arrival_time, prompt_tokens, output_tokens)`` jobs straight into one engine.

    Returns the completion time of every job, in input order. For tests and for
    checking a profile by hand; the fleet driver does the same with a scheduler between.
    """
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    done_at = [INF] * len(jobs)
    pos = 0
    while True:
        t_arr = jobs[order[pos]][0] if pos < len(order) else INF
        if t_arr == INF and engine.next_time == INF:
            break
        if t_arr <= engine.next_time and t_arr < INF:
            i = order[pos]
            engine.submit(t_arr, i, jobs[i][1], jobs[i][2])
            pos += 1
        else:
            now = engine.next_time
            for i in engine.on_event(now):
                done_at[i] = now
    return done_at
