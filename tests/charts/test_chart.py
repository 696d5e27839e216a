"""The chart as a whole: `helm lint --strict` per scenario, every rendered object valid against the
real schemas, bad values refused by values.schema.json, values.yaml documented and strict.

Real helm (scripts/install-helm.sh), real Kubernetes schemas (kubernetes-validate) and the real
prometheus-operator CRDs from ../shared/crds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.charts.helpers import (
    CHART,
    CI_VALUES,
    K8S_VERSION,
    MONITORING_KINDS,
    crd_schema,
    helm,
    render,
    unknown_fields,
)

MINIMAL = CHART / "ci" / "minimal-values.yaml"
SCENARIOS = {"minimal", "monitoring-off", "kueue-on", "external-s3"}


def test_every_scenario_has_a_ci_values_file():
    assert {p.name.removesuffix("-values.yaml") for p in CI_VALUES} == SCENARIOS


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict_passes(values):
    out = helm("lint", "--strict", str(CHART), "-f", str(values)).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects_validate(values):
    docs = render(values)
    assert docs, "helm template rendered nothing"
    kinds = set()
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        kinds.add(kind)
        if kind in MONITORING_KINDS:
            schema = crd_schema(MONITORING_KINDS[kind])
            jsonschema.Draft7Validator(schema).validate(doc)
            assert list(unknown_fields(doc, schema)) == [], f"{kind}/{name} has fields its CRD does not know"
        else:
            # Core kinds and the Experiment CRD itself (apiextensions.k8s.io/v1), strictly.
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{values.name}: {kind}/{name}: {e.message} at {list(e.path)}")
    assert {"Deployment", "Service", "ServiceAccount", "CustomResourceDefinition", "Pod"} <= kinds


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--set", "operator.replicas=2", "additional properties 'replicas' not allowed"),
        ("--set", "storage.s3.bucket=x", "additional properties 'bucket' not allowed"),
        ("--set", "operator.port=http", "want integer"),
        ("--set-string", "monitoring.enabled=yes", "want boolean"),
        ("--set", "rbac.scope=everything", "rbac/scope"),
        ("--set", "storage.uri=gs://bucket", "storage/uri"),
    ],
    ids=["unknown-key", "unknown-nested-key", "wrong-type-int", "wrong-type-bool", "bad-enum", "bad-uri"],
)
def test_lint_refuses_bad_values(flag, value, expected):
    proc = helm("lint", "--strict", str(CHART), "-f", str(MINIMAL), flag, value, check=False)
    assert proc.returncode != 0, f"helm lint accepted {value}"
    assert expected in proc.stdout + proc.stderr


def test_install_without_storage_uri_says_what_to_do():
    proc = helm("template", "x", str(CHART), check=False)
    assert proc.returncode != 0
    assert "storage.uri is required, because" in proc.stderr and "--set storage.uri=s3://" in proc.stderr


def test_kueue_without_queue_says_what_to_do():
    proc = helm("template", "x", str(CHART), "-f", str(MINIMAL), "--set", "kueue.enabled=true", check=False)
    assert proc.returncode != 0
    assert "kueue.queue is required when kueue.enabled is true" in proc.stderr


def test_notes_tell_the_user_what_to_do_next():
    out = helm("install", "sftrl", str(CHART), "-f", str(MINIMAL), "--dry-run=client", "-n", "ml").stdout
    assert "sftrl submit examples/quickstart.yaml" in out
    assert "helm test sftrl -n ml" in out
    assert "s3://sftrl-artifacts/sftrl" in out


# --- values.yaml and values.schema.json --------------------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _walk_schema(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk_schema(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk_schema(node["additionalProperties"], f"{path}.*")


def test_schema_is_strict_at_every_object_level():
    jsonschema.Draft7Validator.check_schema(_schema())
    for path, node in _walk_schema(_schema()):
        if node.get("type") != "object":
            continue
        extra = node.get("additionalProperties")
        if "properties" in node:
            assert extra is False, f"{path or '<root>'}: an object with properties must set additionalProperties: false"
        else:  # a map: its values must be typed, and never free-form objects
            assert isinstance(extra, dict) and extra.get("type") not in (None, "object"), f"{path}: untyped map"


def _value_paths(node: Any, path: str = "") -> set[str]:
    out = {path} if path else set()
    if isinstance(node, dict):
        for k, v in node.items():
            out |= _value_paths(v, f"{path}.{k}")
    return out


def _schema_paths(node: dict[str, Any], path: str = "") -> set[str]:
    out = {path} if path else set()
    for k, child in node.get("properties", {}).items():
        out |= _schema_paths(child, f"{path}.{k}")
    return out


def test_values_yaml_and_schema_declare_the_same_keys():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(_schema()).validate(values)
    in_values = _value_paths(values)
    in_schema = _schema_paths(_schema())
    # Maps (resources.requests, nodeSelector, ...) have entries in values.yaml that are not properties.
    maps = {p for p, n in _walk_schema(_schema()) if n.get("type") == "object" and "properties" not in n}
    in_values = {p for p in in_values if not any(p.startswith(m + ".") for m in maps)}
    assert in_values - in_schema == set(), "keys in values.yaml the schema does not declare"
    assert in_schema - in_values == set(), "schema keys without a documented default in values.yaml"


def test_every_values_key_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not above.strip().startswith("#"):
            undocumented.append(f"line {i + 1}: {m.group(2)}")
    assert undocumented == []

