"""Turn a DSPy program into a workflow.

    python -m aragog_jax.dspy export module:program --example "..." [--example "..."] --out W.toml

Traces the program on each example input (a program with one parameter takes the text;
one with several a JSON object), refuses a program whose structure depends on the input
(naming the predictor where the traces diverged), and writes ``W.toml`` plus the stages
module ``W_stages.py`` it references. Without ``--lm`` the trace needs no engine: DSPy
parses placeholder replies and token counts are estimated; with ``--lm MODEL --api-base
URL`` it runs on a real OpenAI-compatible engine and counts come from its usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aragog_jax._cli import run_cli
from aragog_jax.errors import AragogError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aragog_jax.dspy", description="DSPy programs as aragog_jax workflows."
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser(
        "export",
        help="trace a DSPy program and write the workflow TOML and its stages module",
        description="Trace a DSPy program on example inputs and write the workflow TOML (and <out>_stages.py, "
        "the stage functions it references). Refuses a program whose structure depends on its input.",
    )
    e.add_argument(
        "program",
        help="module:name or path/to/file.py:name: a dspy.Module, or a class/function returning one",
    )
    e.add_argument(
        "--example",
        action="append",
        required=True,
        metavar="TEXT",
        help="an example input (repeat it: two or more check that the structure does not depend on the input); "
        "a JSON object when the program takes several arguments",
    )
    e.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the workflow TOML to write (the stages module goes next to it)",
    )
    e.add_argument("--name", default="", help="workflow name (default: the file name of --out)")
    e.add_argument(
        "--lm",
        default="",
        help="trace on a real LM instead of placeholders, e.g. openai/MODEL (with --api-base)",
    )
    e.add_argument(
        "--api-base",
        default="",
        help="OpenAI-compatible base URL of --lm, e.g. http://127.0.0.1:8001/v1",
    )
    e.add_argument(
        "--output-tokens",
        type=int,
        default=128,
        help="output tokens per call without --lm (default 128)",
    )
    e.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        help="reply cap of a predictor that sets none itself, when served (default 1024)",
    )
    return p


def _export(args) -> int:
    from aragog_jax.dspy import export_workflow, load_program, trace_program
    from aragog_jax.spec import load_workflow

    if args.output_tokens < 1 or args.max_tokens < 1:
        raise AragogError("--output-tokens and --max-tokens must be >= 1")
    if bool(args.lm) != bool(args.api_base):
        raise AragogError("--lm and --api-base go together")
    program = load_program(args.program)
    lm = None
    if args.lm:
        import dspy

        lm = dspy.LM(
            args.lm,
            api_base=args.api_base,
            api_key="unused",
            cache=False,
            num_retries=0,
            temperature=0.0,
        )
    traced = trace_program(program, args.example, lm=lm, default_output_tokens=args.output_tokens)
    toml_path, stages_path = export_workflow(
        program, args.program, traced, args.out, name=args.name, max_tokens=args.max_tokens
    )
    wf = load_workflow(toml_path)  # what every tool will read: fail here, not there
    for note in traced.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {toml_path} and {stages_path}: workflow {wf.name!r}, {len(wf.stage)} stages")
    for c in traced.calls:
        ups = f" <- {', '.join(c.upstream)}" if c.upstream else ""
        print(
            f"  {c.stage}{ups}  ({c.predictor}; {c.input_tokens} in / {c.output_tokens} out tokens)"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _export(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
