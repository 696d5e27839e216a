"""The operator's Kubernetes permissions: the one list the Helm chart, the kustomize install and
the operator code agree on.

Pure data, no kubernetes import. ``tests/charts`` renders the chart's Role/ClusterRole and
``manifests/operator/rbac.yaml`` and checks they grant exactly these permissions, in both
directions, and never a wildcard. The operator may import it to explain a 403 ("the operator
needs pods/log get; reinstall the chart").

Example:
    >>> allowed("sftrl.io", "experiments/status", "patch")
    True
    >>> allowed("", "secrets", "get")
    False
"""

from __future__ import annotations

# (apiGroup, resource, verbs); "" is the core API group.
Permission = tuple[str, str, tuple[str, ...]]

OPERATOR_PERMISSIONS: list[Permission] = [
    # Each stage runs as a Kubeflow PyTorchJob: one label-selected list per cycle, create, and
    # delete on cancel. (The CLI's `status`/`logs` run with the user's own credentials.)
    ("kubeflow.org", "pytorchjobs", ("list", "create", "delete")),
    # One list of Experiments per cycle.
    ("sftrl.io", "experiments", ("list",)),
    # Phase, per-stage state, counts, conditions, observedGeneration.
    ("sftrl.io", "experiments/status", ("patch",)),
    # Warning events for permanent API errors.
    ("", "events", ("create",)),
    # Training pods: why a job's master failed (OOM kill, image pull).
    ("", "pods", ("list",)),
]


def allowed(api_group: str, resource: str, verb: str) -> bool:
    """Whether OPERATOR_PERMISSIONS grants ``verb`` on ``api_group``/``resource``.

    >>> allowed("kubeflow.org", "pytorchjobs", "create")
    True
    >>> allowed("kubeflow.org", "pytorchjobs", "patch")
    False
    """
    return any(g == api_group and r == resource and verb in verbs for g, r, verbs in OPERATOR_PERMISSIONS)
