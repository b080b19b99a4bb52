"""DSPy test programs, a fake engine whose replies DSPy parses, and an export helper."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import dspy

from aragog_jax.dspy import export_workflow, load_program, trace_program
from aragog_jax.serving import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dspy_self_refine.py"
EXAMPLE_REF = f"{EXAMPLE}:SelfRefine"
EXAMPLES = [
    "What is the boiling point of water at sea level?",
    "Name three prime numbers greater than 10.",
]

_OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)")


class DSPyFakeEngine(FakeEngine):
    """A loopback fake engine that answers DSPy's ChatAdapter prompts in its format.

    It reads the output fields and their types from the system message ("Your output
    fields are: 1. `issues` (list[str]) ...") and fills each with a value derived from the
    served model's name and the whole prompt, so the text depends on the model and on
    every upstream output, and DSPy parses it.
    """

    def text_for(self, prompt: str) -> str:
        h = hashlib.blake2b(prompt.encode(), digest_size=4).hexdigest()
        lines = prompt.split("Your output fields are:", 1)[-1].splitlines()
        parts = []
        for line in lines[1:]:
            m = _OUTPUT_FIELD.match(line.strip())
            if not m:
                break
            name, typ = m.groups()
            if typ.startswith("list"):
                value = json.dumps([f"{self.served}-{h}-{name}-0", f"{self.served}-{h}-{name}-1"])
            elif typ == "bool":
                value = "True" if int(h, 16) % 2 else "False"
            elif typ == "int":
                value = str(int(h, 16) % 100)
            else:
                value = f"{self.served}-{h}-{name}"
            parts.append(f"[[ ## {name} ## ]]\n{value}")
        return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]\n"


def export_example(
    tmp: Path, *, ref: str = EXAMPLE_REF, examples=EXAMPLES, name: str = "self_refine_dspy"
) -> tuple[Path, Path]:
    program = load_program(ref)
    traced = trace_program(program, list(examples))
    return export_workflow(program, ref, traced, tmp / f"{name}.toml")


# -- programs the tests trace -----------------------------------------------------------------


class Draft(dspy.Signature):
    """Draft an answer."""

    question: str = dspy.InputField()
    draft: str = dspy.OutputField()


class Review(dspy.Signature):
    """Review the draft."""

    question: str = dspy.InputField()
    draft: str = dspy.InputField()
    notes: str = dspy.OutputField()
    confident: bool = dspy.OutputField()


class Rewrite(dspy.Signature):
    """Rewrite the draft."""

    question: str = dspy.InputField()
    context: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Branchy(dspy.Module):
    """Reviews only long questions: the structure depends on the input."""

    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict(Draft)
        self.review = dspy.Predict(Review)
        self.rewrite = dspy.Predict(Rewrite)

    def forward(self, question):
        d = self.draft(question=question)
        context = d.draft
        if len(question) > 30:
            context = self.review(question=question, draft=d.draft).notes
        return self.rewrite(question=question, context=context)


class TrustsItself(Branchy):
    """Rewrites only when the review is not confident: the structure depends on an LM output."""

    def forward(self, question):
        d = self.draft(question=question)
        r = self.review(question=question, draft=d.draft)
        if r.confident:
            return r
        return self.rewrite(question=question, context=r.notes)


class Formatted(Branchy):
    """Formats upstream outputs into one text input, with a constant hint; fans in."""

    def forward(self, question):
        d = self.draft(question=question)
        r = self.review(question=question, draft=d.draft)
        return self.rewrite(
            question=question, context=f"Draft: {d.draft}\nNotes: {r.notes}\n(be brief)"
        )


class Shouty(Branchy):
    """Transforms an upstream output before passing it on: not replayable."""

    def forward(self, question):
        d = self.draft(question=question)
        return self.rewrite(question=question, context=d.draft.upper())


class TwiceWithCoT(dspy.Module):
    """Calls one ChainOfThought predictor twice (a fixed loop)."""

    def __init__(self):
        super().__init__()
        self.rewrite = dspy.ChainOfThought(Rewrite)

    def forward(self, question):
        first = self.rewrite(question=question, context="none")
        return self.rewrite(question=question, context=first.answer)


class FakesInThread:
    """DSPy fake engines served on loopback from a background event loop, for CLIs that
    run their own loop (``python -m aragog_jax.label``)::

        with FakesInThread({"e-small": "small", "e-big": "big"}) as fakes:
            fakes.urls  # [(engine name, model, url)]
    """

    def __init__(self, engines: dict[str, str]):
        import asyncio
        import threading

        self.engines = engines
        self.fakes = {name: DSPyFakeEngine(model) for name, model in engines.items()}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list = []
        self.urls: list[tuple[str, str, str]] = []

    def __enter__(self) -> FakesInThread:
        import asyncio

        from aragog_jax.serving import LoopbackServer

        self.thread.start()
        for name, fake in self.fakes.items():
            srv = LoopbackServer(fake.app)
            url = asyncio.run_coroutine_threadsafe(srv.start(), self.loop).result(10)
            self.servers.append(srv)
            self.urls.append((name, self.engines[name], url))
        return self

    def __exit__(self, *exc) -> None:
        import asyncio

        for srv in self.servers:
            asyncio.run_coroutine_threadsafe(srv.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def not_a_program():
    return "a string, not a dspy.Module"
