"""Timestamps along one request's path through the live server (bench only; no cost when
not loaded: nothing in the package knows of it).

``bench/request_profile.py --trace`` starts ``python -m aragog_jax.serve`` through
:func:`main`, which wraps a few functions of the server (and of aiohttp under it) with
``time.perf_counter()`` stamps before the server is built, then runs the server as usual.
Each request gets one record (a dict: point -> first time it was reached), keyed by its
run; ``GET /_trace`` answers the records finished since the last call (and forgets them).

The points, in the order a one-stage request passes them:

* ``recv``: the request's bytes reached the server (``Lane.data_received``, or aiohttp's
  ``RequestHandler.data_received``);
* ``handler``: the OpenAI front's handler starts (``Api.fast`` in the fast lane, ``Api.chat``
  through aiohttp);
* ``admitted``: validated and admitted (``Executor.admit`` returned);
* ``round``: the scheduling round that routes it starts (``Executor._round``);
* ``routed``: routed and queued (``Intake.route_admitted`` returned);
* ``planned``: the round's decision is made (``SchedulerPort.round`` returned);
* ``dispatched``: its stage task is created (``StageDispatcher.dispatch``);
* ``task``: the stage task starts running (``StageDispatcher._run_stage``);
* ``call``: the engine call starts (``EngineClient.chat``);
* ``sent``: the request is written to the engine's connection (``_Conn.send`` in
  ``engines/_h1.py``);
* ``headers``: the engine's whole reply is parsed (``_Conn.on_message_complete``);
* ``replied``: the engine call returned, its body decoded;
* ``completed``: the run's result is set (``Executor.complete``);
* ``resumed``: the handler has the result (``Executor.wait`` returned);
* ``response``: the handler returns its response (receipt and body encoded);
* ``finishing``: aiohttp starts finishing the response (``RequestHandler.finish_response``;
  not in the fast lane);
* ``prepared``: the response head is prepared (``Response.prepare``; not in the fast lane);
* ``written``: the response is written (the fast lane's ``Lane._answer`` or aiohttp's
  ``finish_response`` returned).
"""

from __future__ import annotations

import contextvars
import functools
import json
import runpy
import sys
import time

CUR: contextvars.ContextVar[dict | None] = contextvars.ContextVar("aragog_trace", default=None)
RECORDS: dict[str, dict] = {}  # run id -> its record
DONE: list[dict] = []
_last_recv = [0.0]
now = time.perf_counter


def _stamp(rec: dict | None, point: str) -> None:
    if rec is not None and point not in rec:
        rec[point] = now()


def _wrap_async(cls, name: str, before=None, after=None) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    async def wrapper(self, *a, **kw):
        if before is not None:
            before(self, *a, **kw)
        out = await fn(self, *a, **kw)
        if after is not None:
            after(self, out, *a, **kw)
        return out

    setattr(cls, name, wrapper)


def _wrap_sync(cls, name: str, before=None, after=None) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        if before is not None:
            before(self, *a, **kw)
        out = fn(self, *a, **kw)
        if after is not None:
            after(self, out, *a, **kw)
        return out

    setattr(cls, name, wrapper)


def install() -> None:
    from aiohttp import web, web_protocol

    from aragog_jax.engines import _h1
    from aragog_jax.engines.client import EngineClient
    from aragog_jax.serving import _api, _dispatch, _executor, _intake, _sched, _server

    try:
        from aragog_jax.serving import _lane
    except ImportError:  # a checkout from before the fast lane (--baseline)
        _lane = None

    def data_received(self, data):
        _last_recv[0] = now()

    _wrap_sync(web_protocol.RequestHandler, "data_received", before=data_received)
    if _lane is not None:
        _wrap_sync(_lane.Lane, "data_received", before=data_received)

    def chat_in(self, request):
        CUR.set({"recv": _last_recv[0], "handler": now()})

    def chat_out(self, resp, request):
        _stamp(CUR.get(), "response")

    _wrap_async(_api.Api, "chat", before=chat_in, after=chat_out)

    # The fast lane (serving/_lane.py): Api.fast runs in the protocol's callback, and the
    # task answering the request starts with its context (the record).
    def fast_in(self, path, raw):
        if path == _api.CHAT_PATH:
            CUR.set({"recv": _last_recv[0], "handler": now()})

    if _lane is not None:
        _wrap_sync(_api.Api, "fast", before=fast_in)
        _wrap_async(
            _api.Api, "_chat_reply", after=lambda self, out, *a: _stamp(CUR.get(), "response")
        )

    def lane_written(self, out, *a):
        rec = CUR.get()
        for run_id, r in list(RECORDS.items()):
            if r is rec:
                del RECORDS[run_id]
                _stamp(rec, "written")
                DONE.append(rec)

    if _lane is not None:
        _wrap_async(_lane.Lane, "_answer", after=lane_written)

    def admitted(self, run, *a, **kw):
        rec = CUR.get()
        if rec is not None:
            _stamp(rec, "admitted")
            RECORDS[run.id] = rec

    _wrap_sync(_executor.Executor, "admit", after=admitted)

    def round_in(self):
        for run in self.intake._unrouted:
            _stamp(RECORDS.get(run.id), "round")

    _wrap_sync(_executor.Executor, "_round", before=round_in)

    def routed_in(self):
        self._trace_batch = list(self._unrouted)

    def routed_out(self, out):
        for run in self._trace_batch:
            _stamp(RECORDS.get(run.id), "routed")

    _wrap_sync(_intake.Intake, "route_admitted", before=routed_in, after=routed_out)

    def planned(self, plan, *a):
        if plan is not None:
            for asg in plan.assignments:
                _stamp(RECORDS.get(asg.request_id), "planned")

    _wrap_sync(_sched.SchedulerPort, "round", after=planned)

    def dispatched(self, run, *a):
        _stamp(RECORDS.get(run.id), "dispatched")

    _wrap_sync(_dispatch.StageDispatcher, "dispatch", before=dispatched)

    def task_in(self, run, *a):
        rec = RECORDS.get(run.id)
        CUR.set(rec)
        _stamp(rec, "task")

    _wrap_async(_dispatch.StageDispatcher, "_run_stage", before=task_in)
    _wrap_async(
        EngineClient,
        "chat",
        before=lambda self, *a, **kw: _stamp(CUR.get(), "call"),
        after=lambda self, out, *a, **kw: _stamp(CUR.get(), "replied"),
    )
    on_conn: dict[int, dict] = {}  # id(connection) -> the record of the call on it

    def sent(self, out, *a):
        rec = CUR.get()
        if rec is not None:
            _stamp(rec, "sent")
            on_conn[id(self)] = rec

    _wrap_sync(_h1._Conn, "send", after=sent)
    _wrap_sync(
        _h1._Conn,
        "on_message_complete",
        before=lambda self: _stamp(on_conn.pop(id(self), None), "headers"),
    )
    _wrap_sync(
        _executor.Executor,
        "complete",
        before=lambda self, run: _stamp(RECORDS.get(run.id), "completed"),
    )
    _wrap_async(
        _executor.Executor,
        "wait",
        after=lambda self, out, run: _stamp(RECORDS.get(run.id), "resumed"),
    )

    def written(self, out, request, *a):
        run = request.get(_api.RUN_KEY)
        rec = RECORDS.pop(run.id, None) if run is not None else None
        if rec is not None:
            _stamp(rec, "written")
            DONE.append(rec)

    _wrap_async(web_protocol.RequestHandler, "finish_response", after=written)

    def of_request(request) -> dict | None:
        run = request.get(_api.RUN_KEY)
        return RECORDS.get(run.id) if run is not None else None

    _wrap_async(
        web_protocol.RequestHandler,
        "finish_response",
        before=lambda self, request, *a: _stamp(of_request(request), "finishing"),
    )
    _wrap_async(
        web.Response,
        "prepare",
        after=lambda self, out, request: _stamp(of_request(request), "prepared"),
    )

    async def trace(request):
        out = list(DONE)
        DONE.clear()
        return web.Response(text=json.dumps(out), content_type="application/json")

    def make_app(self, app):
        app.router.add_get("/_trace", trace)

    _wrap_sync(_server.Server, "_make_app", after=make_app)


def main() -> None:
    """``python bench/_trace.py TREE ARGS...``: the server from checkout ``TREE``, traced."""
    tree, *args = sys.argv[1:]
    sys.path.insert(0, tree)
    install()
    sys.argv = ["aragog_jax.serve", *args]
    runpy.run_module("aragog_jax.serve", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
