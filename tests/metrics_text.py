"""Reading Prometheus text (``/metrics``): one parser for the tests and the benchmark."""

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Return every sample of a Prometheus text exposition as ``{(name, sorted labels): value}``."""
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    """Return the sample ``name`` with exactly ``labels`` (None if there is none)."""
    return samples.get((name, tuple(sorted(labels.items()))))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    """Return the values label ``label`` takes in the samples of ``name``."""
    return {dict(lbls)[label] for (n, lbls), _ in samples.items() if n == name}


def metric_sum(samples: Samples, name: str) -> float:
    """Sum every sample of ``name`` over all its labels (0 if there is none)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def metric_by_label(samples: Samples, name: str) -> dict[str, float]:
    """Return ``{"label=value,…": value}`` for every labelled sample of ``name``."""
    return {",".join(f"{k}={v}" for k, v in lbls): v for (n, lbls), v in samples.items() if n == name and lbls}
