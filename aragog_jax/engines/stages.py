"""How one stage runs on the engine the scheduler chose: a chat call, or the user's coroutine.

A stage without ``function`` is one chat completion of its prompt template rendered
with the input and the upstream outputs. A stage with ``function = "module:fn"`` (or
``"path/to/file.py:fn"``) runs the user's coroutine in the paper's ``execute_stage``
shape instead::

    async def critique(stage, model, lm, state) -> str:
        draft = await lm(state.prompt)                      # the rendered template
        return await lm(f"Fix any bug in:\\n{draft}", max_tokens=256)

* ``stage``: the :class:`~aragog_jax.spec.StageSpec`;
* ``model``: the catalog name of the model the scheduler chose for this stage;
* ``lm``: an :class:`LM` bound to the chosen engine: ``await lm(prompt, max_tokens=...)``
  returns the completion text (``prompt``: a string, sent as one user message, or a list
  of ``{"role", "content"}`` chat messages, e.g. a DSPy predictor's). Every call goes to
  that engine, so the scheduler's load accounting and the receipt stay right; token counts add up over the calls;
* ``state``: a :class:`StageState` with the request ``input``, the upstream ``outputs``
  by stage name, and the rendered ``prompt``.

Both the server's executor and the labeller build a stage's view with
:func:`stage_state` and run it with :func:`run_stage`, so a router is trained on exactly
what is served. Engine errors raised inside a function
propagate unchanged (the executor fails the stage over to another engine); any other
exception becomes a :class:`StageFunctionError` naming the stage and the function.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aragog_jax._imports import load_callable
from aragog_jax.engines.client import ChatResult, EngineClient
from aragog_jax.errors import AragogError, SpecError, StageFunctionError, UpstreamError
from aragog_jax.spec import StageSpec, WorkflowSpec

StageFunction = Callable[[StageSpec, str, "LM", "StageState"], Awaitable[str]]


class _SafeDict(dict):
    """Template values; a placeholder without a value is left as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_prompt(template: str, text: str, upstream: Mapping[str, str]) -> str:
    """A stage's prompt template with ``{input}`` and ``{<upstream stage>}`` filled in."""
    values = _SafeDict(input=text)
    values.update(upstream)
    return template.format_map(values)


@dataclass(frozen=True)
class StageState:
    """What a stage function sees of the request."""

    input: str
    outputs: Mapping[str, str]  # upstream stage name -> its output text
    prompt: str  # the stage's template rendered with ``input`` and ``outputs``


def stage_state(stage: StageSpec, text: str, upstream: Mapping[str, str]) -> StageState:
    """What ``stage`` sees of a request with input ``text`` and upstream outputs by name:
    the one place a stage's prompt is rendered (the server and the labeller call it)."""
    return StageState(text, upstream, render_prompt(stage.prompt, text, upstream))


@dataclass
class LM:
    """The engine chosen for one stage, as a coroutine ``await lm(prompt) -> str``.

    Attributes:
      model: catalog name of the chosen model.
      calls / prompt_tokens / completion_tokens: totals over this stage's calls.
    """

    model: str
    _client: EngineClient
    _max_tokens: int
    _seed: int
    _timeout_s: float | None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last: ChatResult | None = field(default=None, repr=False)
    _issued: int = field(default=0, repr=False)  # calls started (the next call's seed offset)
    _on_delta: Callable[[str], None] | None = field(default=None, repr=False)  # streams the calls

    async def __call__(
        self, prompt: str | list[dict[str, str]], *, max_tokens: int | None = None
    ) -> str:
        """``prompt``: the text of one user message, or the chat messages themselves
        (``[{"role": "system", "content": ...}, {"role": "user", ...}]``, e.g. DSPy's)."""
        if not isinstance(prompt, str) and not _is_messages(prompt):
            raise StageFunctionError(
                f"lm(prompt): prompt must be str or a list of {{'role', 'content'}} messages, got "
                f"{type(prompt).__name__}"
            )
        # Seeded per call so that a stage's calls are reproducible and distinct; the index
        # is taken before the await, so concurrent calls (asyncio.gather) differ too.
        index, self._issued = self._issued, self._issued + 1
        streamed = {"on_delta": self._on_delta} if self._on_delta is not None else {}
        res = await self._client.chat(
            prompt,
            max_tokens=max(1, max_tokens or self._max_tokens),
            seed=(self._seed + index) % 2**31,
            timeout_s=self._timeout_s,
            **streamed,
        )
        self.calls += 1
        self.prompt_tokens += res.prompt_tokens
        self.completion_tokens += res.completion_tokens
        self.last = res
        return res.text


def _is_messages(prompt: object) -> bool:
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in prompt
        )
    )


async def _template_stage(stage: StageSpec, model: str, lm: LM, state: StageState) -> str:
    return await lm(state.prompt)


def load_stage_functions(wf: WorkflowSpec) -> dict[int, StageFunction]:
    """Stage index -> coroutine function, for the stages that name one.

    Imports the user's modules: call it once at start-up, so a missing module or a
    non-async function is reported before anything is served.

    Raises:
      SpecError: naming the workflow, the stage and what is wrong.
    """
    out: dict[int, StageFunction] = {}
    for i, s in enumerate(wf.stage):
        if not s.function:
            continue
        what = f"workflow {wf.name!r}: stage[{i}] ({s.name}).function {s.function!r}"
        try:
            fn = load_callable(s.function, what, "my_stages:critique")
        except AragogError as exc:
            raise SpecError(str(exc)) from exc
        if not inspect.iscoroutinefunction(fn):
            raise SpecError(
                f"{what}: must be an async function (async def {getattr(fn, '__name__', 'f')}(stage, model, lm, state))"
            )
        out[i] = fn
    return out


@dataclass(frozen=True)
class StageOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    calls: int
    last: ChatResult | None  # the last engine reply (its load report, if any)


async def run_stage(
    stage: StageSpec,
    fn: StageFunction | None,
    model: str,
    client: EngineClient,
    state: StageState,
    *,
    seed: int,
    timeout_s: float | None = None,
    on_delta: Callable[[str], None] | None = None,
) -> StageOutput:
    """Run one stage on ``client``: ``fn`` if given, else one chat call of ``state.prompt``.

    ``on_delta`` streams a template stage's call: it gets each piece of text as the engine
    sends it. A stage function's calls are not streamed (its result is whatever it
    returns, known only when it returns), so ``on_delta`` is not used for it.

    Raises:
      UpstreamError: an engine call failed (also from inside ``fn``).
      StageFunctionError: ``fn`` raised anything else or returned a non-str.
    """
    lm = LM(
        model,
        client,
        max(1, stage.output_tokens),
        seed,
        timeout_s,
        _on_delta=on_delta if fn is None else None,
    )
    if fn is None:
        text = await _template_stage(stage, model, lm, state)
    else:
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            text = await fn(stage, model, lm, state)
        except (UpstreamError, StageFunctionError):
            raise
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this stage was cancelled (its run ended)
            # The function's own (an inner task it awaited was cancelled): not the stage's
            # cancellation, which would leave the run waiting for its deadline.
            raise StageFunctionError(
                f"stage {stage.name!r}: function {name} raised CancelledError"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - the user's code: name it, keep the cause
            raise StageFunctionError(
                f"stage {stage.name!r}: function {name} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(text, str):
            raise StageFunctionError(
                f"stage {stage.name!r}: function {name} returned {type(text).__name__}, expected str"
            )
    return StageOutput(text, lm.prompt_tokens, lm.completion_tokens, lm.calls, lm.last)
