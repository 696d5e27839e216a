"""Prompt templates shared by the RL stage, the SFT data and the eval stage."""

from __future__ import annotations

# EasyR1's format prompt (the study's default), verbatim.
FORMAT_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)


def format_question(question: str) -> str:
    """The study's prompt for a question.

    >>> format_question("What is 2 + 3?").startswith("What is 2 + 3? You FIRST think")
    True
    """
    return f"{question.strip()} {FORMAT_PROMPT}"
