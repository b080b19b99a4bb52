"""Tracing DSPy programs: stages, edges, bindings, token counts, and refused structures."""

from __future__ import annotations

import pytest

from aragog_jax.dspy import load_program, trace_program
from aragog_jax.errors import ProgramTraceError

from ._dspykit import EXAMPLE_REF, EXAMPLES, Branchy, Formatted, Shouty, TrustsItself, TwiceWithCoT

SHORT, LONG = "2+2?", "Why is the sky blue during the day but red at sunset?"


def test_three_stage_program_traces_to_its_dag_with_pass_through_bindings():
    traced = trace_program(load_program(EXAMPLE_REF), EXAMPLES)
    assert [c.stage for c in traced.calls] == ["generate", "critique", "refine"]
    assert [c.upstream for c in traced.calls] == [[], ["generate"], ["generate", "critique"]]
    refine = traced.calls[2].dump()["inputs"]
    assert refine == {
        "question": {"input": "question"},
        "draft": {"stage": "generate", "field": "draft"},
        "issues": {"stage": "critique", "field": "issues"},
    }
    assert traced.calls[1].output_fields == ["issues", "confident"]
    # Estimated tokens: the rendered prompt, plus each upstream output at its estimate.
    gen, crit, ref = traced.calls
    assert traced.token_source == "estimate" and all(c.output_tokens == 128 for c in traced.calls)
    assert 50 < gen.input_tokens < crit.input_tokens < ref.input_tokens
    assert crit.input_tokens > gen.input_tokens + 128 and ref.input_tokens > 2 * 128
    assert traced.arguments == ["question"] and traced.num_examples == 2 and not traced.notes


def test_formatted_text_becomes_a_template_and_fans_in():
    traced = trace_program(Formatted(), [SHORT, LONG])
    rewrite = traced.calls[2]
    assert rewrite.upstream == ["draft", "review"]
    b = rewrite.inputs["context"]
    assert b.kind == "template" and b.parts == ("Draft: ", "\nNotes: ", "\n(be brief)")
    assert [s.label() for s in b.slots] == ["draft.draft", "review.notes"]
    assert (
        b.resolve({"question": "q"}, {"draft": {"draft": "D"}, "review": {"notes": "N"}})
        == "Draft: D\nNotes: N\n(be brief)"
    )


def test_repeated_chain_of_thought_calls_are_numbered_stages_with_constants():
    traced = trace_program(TwiceWithCoT(), [SHORT, LONG])
    assert [(c.stage, c.predictor, c.occurrence) for c in traced.calls] == [
        ("rewrite", "rewrite.predict", 0),
        ("rewrite_2", "rewrite.predict", 1),
    ]
    first, second = traced.calls
    assert first.inputs["context"].kind == "const" and first.inputs["context"].value == "none"
    assert second.inputs["context"].dump() == {"stage": "rewrite", "field": "answer"}
    assert first.output_fields == ["reasoning", "answer"]


def test_input_dependent_branch_is_refused_naming_the_predictor():
    with pytest.raises(
        ProgramTraceError,
        match=r"traces diverged after predictor 'draft' \(call 1\): call 2 runs predictor "
        r"'rewrite' on example 1 but predictor 'review' on example 2",
    ):
        trace_program(Branchy(), [SHORT, LONG])


def test_branch_on_an_lm_output_is_refused_when_the_examples_differ():
    # The placeholder LM's bool outputs depend on the example: one of these pairs differs.
    with pytest.raises(
        ProgramTraceError,
        match=r"diverged after predictor 'review' \(call 2\): example \d goes on to predictor 'rewrite' \(call 3\)",
    ):
        for other in ("a", "b", "c", "d", "e", "f"):
            trace_program(TrustsItself(), [SHORT, other])


def test_a_transformed_upstream_value_is_refused_naming_predictor_and_field():
    with pytest.raises(
        ProgramTraceError,
        match=r"predictor 'rewrite' \(stage 'rewrite'\): input field 'context' is computed",
    ):
        trace_program(Shouty(), [SHORT, LONG])


def test_one_example_traces_with_a_note():
    traced = trace_program(Branchy(), [SHORT])
    assert [c.stage for c in traced.calls] == [
        "draft",
        "rewrite",
    ] and "one example" in traced.notes[0]


@pytest.mark.parametrize(
    ("examples", "message"),
    [([], "at least one example"), (["{}"], None)],
)
def test_bad_examples(examples, message):
    if message is None:  # a one-parameter program takes any text, JSON or not
        assert len(trace_program(Branchy(), examples).calls) == 2
    else:
        with pytest.raises(ProgramTraceError, match=message):
            trace_program(Branchy(), examples)


def test_a_predictors_own_lm_is_set_aside_while_tracing_and_restored():
    import dspy

    class Refuses:
        def complete(self, request):
            raise AssertionError("the trace called the predictor's own LM")

        def stream(self, request):
            raise AssertionError

        def close(self):
            pass

    program = Formatted()
    own = dspy.LM("openai/elsewhere", engine=Refuses(), cache=False)
    program.review.lm = own
    assert len(trace_program(program, [SHORT, LONG]).calls) == 3
    assert program.review.lm is own and program.draft.lm is None


def test_serving_keeps_no_dspy_trace_or_history(tmp_path):
    """DSPy's default global trace list would grow with every served call."""
    import asyncio

    import dspy

    from aragog_jax.dspy import ProgramStages
    from aragog_jax.engines.client import ChatResult
    from aragog_jax.engines.stages import LM, StageState

    from ._dspykit import DSPyFakeEngine

    program = load_program(EXAMPLE_REF)
    stages = ProgramStages(program, trace_program(program, EXAMPLES), max_tokens=32)
    fake = DSPyFakeEngine("small")

    class Client:
        async def chat(self, prompt, *, max_tokens, seed=0, timeout_s=None):
            return ChatResult(
                fake.text_for("\n".join(m["content"] for m in prompt)), 5, 5, "stop", None
            )

    before = len(dspy.settings.trace)
    out = asyncio.run(
        stages.run("generate", "small", LM("small", Client(), 32, 0, None), StageState("q", {}, ""))
    )
    assert out.startswith("small-") and out.endswith("-draft")
    assert len(dspy.settings.trace) == before and not program.generate.history
