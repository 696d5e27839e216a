"""The benchmark registry: name -> Benchmark class, imported lazily.

>>> sorted(names())[:3]
['gpqa', 'hallusionbench', 'math500']
>>> get("mathvista").hf_id
'AI4Math/MathVista'
"""

from __future__ import annotations

import difflib
import importlib

from job_runtime.eval.benchmarks.base import Benchmark

# name -> "module:Class" under job_runtime.eval.benchmarks
REGISTRY: dict[str, str] = {
    "mathvista": "mathvista:MathVista",
    "mathvision": "mathvision:MathVision",
    "mathvision_testmini": "mathvision:MathVisionTestmini",
    "mathverse": "mathverse:MathVerse",
    "wemath": "wemath:WeMath",
    "gpqa": "gpqa:GPQA",
    "math500": "math500:Math500",
    "mmlu": "mmlu:MMLU",
    "hallusionbench": "hallusionbench:HallusionBench",
    "mmbench": "mmbench:MMBench",
    "synthetic": "synthetic:Synthetic",
}


class UnknownBenchmark(KeyError):
    """A benchmark name that is not registered; str() is the user-facing message."""

    def __str__(self) -> str:
        return str(self.args[0])


def names() -> list[str]:
    """Every registered benchmark name."""
    return list(REGISTRY)


def get(name: str) -> Benchmark:
    """A fresh instance of the named benchmark, or UnknownBenchmark listing the known ones."""
    key = name.strip().lower().replace("-", "_")
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownBenchmark(
            f"Benchmark '{name}' is unknown, because it is not in the registry.{hint} Use one of: {', '.join(REGISTRY)}."
        )
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(f"job_runtime.eval.benchmarks.{module}"), cls)()
