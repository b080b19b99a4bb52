"""A DSPy self-refine program (generate -> critique -> refine, typed signatures).

Export it as a workflow and serve it (README, "DSPy programs"):

    python -m aragog_jax.dspy export examples/dspy_self_refine.py:SelfRefine \
        --example "What is the boiling point of water at sea level?" \
        --example "Name three prime numbers greater than 10." --out out/self_refine_dspy.toml
"""

import dspy


class Draft(dspy.Signature):
    """Answer the question with a short first draft."""

    question: str = dspy.InputField()
    draft: str = dspy.OutputField()


class Critique(dspy.Signature):
    """List what is wrong or missing in the draft answer."""

    question: str = dspy.InputField()
    draft: str = dspy.InputField()
    issues: list[str] = dspy.OutputField(desc="concrete problems; empty when there are none")
    confident: bool = dspy.OutputField(desc="whether the draft is right as it stands")


class Refine(dspy.Signature):
    """Rewrite the draft so that it fixes every issue; reply with the final answer only."""

    question: str = dspy.InputField()
    draft: str = dspy.InputField()
    issues: list[str] = dspy.InputField()
    answer: str = dspy.OutputField()


class SelfRefine(dspy.Module):
    def __init__(self):
        super().__init__()
        self.generate = dspy.Predict(Draft)
        self.critique = dspy.Predict(Critique)
        self.refine = dspy.Predict(Refine)

    def forward(self, question: str):
        draft = self.generate(question=question).draft
        review = self.critique(question=question, draft=draft)
        return self.refine(question=question, draft=draft, issues=review.issues)
