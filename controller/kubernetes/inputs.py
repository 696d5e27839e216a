"""Which input fingerprints an Experiment's stage ids are made from, on a cluster (pure: no I/O).

Stage ids hash the content of their inputs (controller/fingerprint.py), so the operator, `sftrl
status` and `sftrl logs` must plan an Experiment with the very fingerprints its stages were
launched with, and keep them for the Experiment's life: an input edited in place while the
experiment runs must not rename its running stages. Two places hold them:

- the annotation ``sftrl.io/inputs`` (JSON ``{uri: fingerprint}``), written by ``sftrl submit``,
  which fingerprints every input with the user's credentials, after the preflight checks. A new
  submission writes new values: an input edited in place gives its stages new ids then, exactly
  as ``sftrl plan`` shows them;
- ``status.inputs`` (``{generation, values}``), written by the operator for the inputs the
  annotation does not cover (an Experiment made with ``kubectl apply``, or an input added by
  ``kubectl edit``): it fingerprints them itself, once per ``metadata.generation``, and records
  them before any job is created from them.

The annotation wins over the status record; a record of another generation is ignored (a new
spec is a new submission).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

ANNOTATION = "sftrl.io/inputs"


def encode(values: Mapping[str, str]) -> str:
    """The annotation's value: compact JSON, keys sorted (a resubmission of the same inputs is
    byte-identical, so `sftrl submit` can say "unchanged").

    >>> encode({"s3://b/rl.jsonl": "s3:e2:10", "s3://b/sft.jsonl": "s3:e1:20"})
    '{"s3://b/rl.jsonl":"s3:e2:10","s3://b/sft.jsonl":"s3:e1:20"}'
    """
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


def _str_map(raw: Any) -> dict[str, str] | None:
    if not isinstance(raw, Mapping):
        return None
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}


def from_annotation(obj: Mapping[str, Any]) -> dict[str, str] | None:
    """The fingerprints `sftrl submit` recorded, or None (no annotation, or not a JSON object).

    >>> from_annotation({"metadata": {"annotations": {ANNOTATION: '{"s3://b/k": "s3:e:1"}'}}})
    {'s3://b/k': 's3:e:1'}
    >>> from_annotation({"metadata": {}}) is None, from_annotation({"metadata": {"annotations": {ANNOTATION: "x"}}}) is None
    (True, True)
    """
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not isinstance(text, str):
        return None
    try:
        return _str_map(json.loads(text))
    except ValueError:
        return None


def generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


def from_status(obj: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprints the operator recorded for this very generation of the spec ({} otherwise).

    >>> obj = {"metadata": {"generation": 2}, "status": {"inputs": {"generation": 2, "values": {"s3://b/k": "s3:e:1"}}}}
    >>> from_status(obj), from_status({**obj, "metadata": {"generation": 3}})
    ({'s3://b/k': 's3:e:1'}, {})
    """
    rec = (obj.get("status") or {}).get("inputs")
    if not isinstance(rec, Mapping) or rec.get("generation") != generation(obj):
        return {}
    return _str_map(rec.get("values")) or {}


def recorded(obj: Mapping[str, Any]) -> dict[str, str]:
    """Every fingerprint recorded for the Experiment: the operator's record of this generation,
    overridden by what `sftrl submit` annotated."""
    return {**from_status(obj), **(from_annotation(obj) or {})}


def status_record(values: Mapping[str, str], annotated: Mapping[str, str] | None, uris: list[str],
                  gen: int) -> dict[str, Any] | None:
    """``status.inputs`` for the fingerprints of ``uris`` that the annotation does not hold, or
    None when it holds them all.

    >>> status_record({"a": "1", "b": "2"}, {"a": "1"}, ["a", "b"], 3)
    {'generation': 3, 'values': {'b': '2'}}
    >>> status_record({"a": "1"}, {"a": "1"}, ["a"], 3) is None
    True
    """
    own = {u: values[u] for u in uris if u in values and u not in (annotated or {})}
    return {"generation": gen, "values": own} if own else None
