"""Several Prometheus text expositions merged into one, each sample labelled by its source.

With ``--workers N`` every worker process has its own registry; the master serves
them as one ``/metrics`` page where each worker's samples carry ``worker="i"``, so
``sum()`` gives the whole proxy and ``by (worker)`` shows the balance.  Pure code:
text in, text out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


class _Families(Collector):
    """What ``generate_latest`` needs: something with ``collect()``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def merge_expositions(
    parts: Sequence[tuple[str | None, str]], label: str = "worker"
) -> tuple[str, list[str]]:
    """Merge ``(source, exposition text)`` pairs into one exposition.

    Every sample of a part whose source is not None gets ``label="source"`` (replacing
    a label of that name); a part with source None is copied as it is (the master's own
    series).  ``HELP`` and ``TYPE`` appear once per family, taken from its first part;
    a later part that gives the family another type loses those samples rather than
    making the page invalid.  Returns the text and the sources whose text did not
    parse (left out whole).
    """
    merged: dict[str, Metric] = {}
    unparsable: list[str] = []
    for source, text in parts:
        try:
            families = list(text_string_to_metric_families(text))
        except Exception:  # the parser's errors are not one documented type
            unparsable.append(str(source))
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif into.type != family.type:
                continue
            for sample in family.samples:
                if source is not None:
                    sample = sample._replace(labels={**sample.labels, label: source})
                into.samples.append(sample)
    text = generate_latest(_Families(merged.values())).decode()
    return text, unparsable
