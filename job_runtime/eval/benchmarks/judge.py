"""An optional LLM answer extractor behind any OpenAI-compatible endpoint (off by default).

Rules decide every item; the judge is asked only about responses in which the rules found no
answer at all. It returns the answer it reads in the response (not a verdict), and the
benchmark's own rules score that answer, so the judge can rescue formatting, never change what
counts as equal. Verdicts it produced say ``method="judge"``; results.json's scorer records the
endpoint and model.

Endpoint: ``EvalParams.judge`` = ``https://host/v1`` or ``https://host/v1#model-name`` (default
model: env SFTRL_JUDGE_MODEL, else gpt-4o-mini). A key, when the endpoint needs one, comes from
env SFTRL_JUDGE_API_KEY or OPENAI_API_KEY. Plain urllib: no extra dependency.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from job_runtime.eval.benchmarks.base import SCORER, Benchmark, Verdict

log = logging.getLogger(__name__)

PROMPT = (
    "Read the response to the question and write only the final answer the response gives: an option letter for a "
    "multiple-choice question, a number or expression otherwise, 'yes' or 'no' for a yes/no question. Write NONE if "
    "the response gives no answer.\n\nQuestion:\n{question}\n\nResponse:\n{response}\n\nExtracted answer:"
)


class Judge:
    """Client of one OpenAI-compatible chat endpoint."""

    def __init__(self, endpoint: str, timeout: float = 60.0, retries: int = 3):
        url, _, model = endpoint.partition("#")
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model = model or os.environ.get("SFTRL_JUDGE_MODEL", "gpt-4o-mini")
        self.key = os.environ.get("SFTRL_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries = timeout, retries
        self.calls = self.failures = 0

    def describe(self) -> dict[str, Any]:
        return {**SCORER, "judge": {"endpoint": self.url, "model": self.model, "calls": self.calls, "failures": self.failures}}

    def extract(self, question: str, response: str) -> str | None:
        """The answer the judge reads in a response, or None (no answer, or the endpoint failed)."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": PROMPT.format(question=question, response=response[-6000:])}],
                "temperature": 0,
                "max_tokens": 64,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self.calls += 1
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    text = json.loads(r.read())["choices"][0]["message"]["content"].strip()
                return None if not text or text.upper().startswith("NONE") else text
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError, OSError) as e:
                if attempt + 1 == self.retries:
                    self.failures += 1
                    log.warning("judge %s failed (%s); keeping the rule verdict", self.url, e)
                    return None
                time.sleep(min(2**attempt, 10))
        return None

    def rescue(self, bench: Benchmark, rows: list[dict[str, Any]], responses: list[str], verdicts: list[Verdict],
               protocol: str = "official") -> list[Verdict]:
        """Verdicts with the judge's extraction scored by the benchmark's rules (under `protocol`) where rules
        found nothing. Under MathVista's official protocol this is the authors' own pipeline: an LLM extracts,
        their normalisation decides."""
        out = list(verdicts)
        for i, (row, resp, v) in enumerate(zip(rows, responses, verdicts)):
            if v.extracted is not None or not resp:
                continue
            answer = self.extract(bench.question(row), resp)
            if answer is None:
                continue
            judged = bench.verdict(row, f"The answer is \\boxed{{{answer}}}", protocol)
            out[i] = Verdict(judged.extracted, judged.correct, "judge")
        return out
