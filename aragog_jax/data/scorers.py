"""Scorers shipped with the labeller: ``(input_row, output_text) -> float`` in [0, 1].

Both read the reference answer from the input row: ``answer`` (a string) or ``answers``
(a list of strings; any match counts). Text is normalised SQuAD-style before comparing:
lower case, punctuation and the articles a/an/the dropped, whitespace collapsed.

Use them as ``--scorer aragog_jax.data.scorers:exact_match`` or
``--scorer aragog_jax.data.scorers:contains_answer``; a user scorer is any importable
function with the same signature.
"""

from __future__ import annotations

import re
import string

from aragog_jax.errors import DatasetError

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def reference_answers(row: dict) -> list[str]:
    """The row's reference answers (``answer`` or ``answers``); DatasetError when absent."""
    if "answers" in row:
        ans = row["answers"]
        if isinstance(ans, str):
            return [ans]
        if isinstance(ans, list) and all(isinstance(a, (str, int, float)) for a in ans):
            return [str(a) for a in ans]
        raise DatasetError(
            f"row {row.get('id', '?')}: answers: expected a list of strings, got {type(ans).__name__}"
        )
    if "answer" in row:
        return [str(row["answer"])]
    raise DatasetError(f"row {row.get('id', '?')}: no 'answer' or 'answers' field for the scorer")


def exact_match(row: dict, output: str) -> float:
    """1.0 when the normalised output equals a normalised reference answer."""
    out = normalize(output)
    return 1.0 if any(out == normalize(a) for a in reference_answers(row)) else 0.0


def contains_answer(row: dict, output: str) -> float:
    """1.0 when a (non-empty) normalised reference answer occurs in the normalised output."""
    out = f" {normalize(output)} "
    return (
        1.0 if any((n := normalize(a)) and f" {n} " in out for a in reference_answers(row)) else 0.0
    )


__all__ = ["contains_answer", "exact_match", "normalize", "reference_answers"]
