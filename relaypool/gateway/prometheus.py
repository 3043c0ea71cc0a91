"""
A renderer for the Prometheus text exposition format (version 0.0.4), for the
gateway's C{/metrics} page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from relaypool.errors import InvalidMetric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """
    One metric: its name, type, help text and samples.

    @ivar name: the metric name (counters conventionally end in C{_total}).
    @ivar type: C{"counter"} or C{"gauge"}.
    @ivar help: a one-line description; any text, escaped when rendered.
    @ivar samples: C{(labels, value)} pairs; label values are any text.
    @raise InvalidMetric: if the name, type or a label name is not valid.
    """

    name: str
    type: Literal["counter", "gauge"]
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]]

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise InvalidMetric(f"invalid metric name {self.name!r}")
        if self.type not in ("counter", "gauge"):
            raise InvalidMetric(f"{self.name}: invalid metric type {self.type!r}")
        for labels, _ in self.samples:
            for label in labels:
                if not _LABEL_NAME.match(label) or label.startswith("__"):
                    raise InvalidMetric(f"{self.name}: invalid label name {label!r}")


def render(families: Iterable[MetricFamily]) -> str:
    """
    Render metric families in the Prometheus text exposition format.

    @return: the page, one C{# HELP} and one C{# TYPE} line per family then
        one line per sample, ending with a newline.
    """
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escapeHelp(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_formatLabels(labels)} {_formatValue(value)}")
    return "".join(line + "\n" for line in lines)


def _escapeHelp(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _formatLabels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{name}="{_escapeLabelValue(value)}"' for name, value in labels.items())
    return "{" + pairs + "}"


def _escapeLabelValue(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _formatValue(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


__all__ = ["CONTENT_TYPE", "MetricFamily", "render"]
