"""Kubernetes naming rules as pydantic types (pure; no kubernetes import).

Used by the experiment file's models so `sftrl validate` refuses, with the field named, any value
that would make an invalid Kubernetes object.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_value(v: str) -> str:
    if len(v) > 63 or not LABEL_VALUE.match(v):
        raise ValueError(
            f"'{v}' is not a valid Kubernetes label value, because label values are at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit. Fix the value"
        )
    return v


def subdomain(v: str) -> str:
    if len(v) > 253 or not DNS1123_SUBDOMAIN.match(v):
        raise ValueError(
            f"'{v}' is not a valid Kubernetes object name, because names are lowercase letters, digits, '-' and "
            "'.', starting and ending with a letter or digit. Fix the name"
        )
    return v


def not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty. Set a container image reference")
    return v


LabelValue = Annotated[str, AfterValidator(label_value)]
ObjectName = Annotated[str, AfterValidator(subdomain)]
Image = Annotated[str, AfterValidator(not_blank)]
