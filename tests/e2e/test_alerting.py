"""The alerting rules pass ``promtool check rules``, and every metric the rules and the Grafana dashboard query is
one a running dispatcher really exports on ``/metrics``."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import running_worker

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hookpost-dashboard.json"
METRIC = re.compile(r"\bhookpost_[a-z_]+\b")


def exported_names(text: str) -> set[str]:
    """Names a query may use: every ``# TYPE`` family (with ``_total`` for counters and ``_bucket``/``_count``/
    ``_sum`` for histograms, which exist once the first sample is taken) and every sample name."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            names.update({"counter": [f"{name}_total"],
                          "histogram": [f"{name}_bucket", f"{name}_count", f"{name}_sum"]}.get(kind, []))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_promtool_accepts_the_alerting_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
    res = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


async def test_every_queried_metric_is_exported_by_a_live_dispatcher(settings):
    async with running_worker(settings) as worker:
        url = f"http://127.0.0.1:{worker.ops.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
    exported = exported_names(text)
    queried = set(METRIC.findall(ALERTS.read_text()))
    queries = dashboard_queries()
    assert queries and all(METRIC.search(q) for q in queries), "every dashboard query names a hookpost metric"
    queried |= {m for q in queries for m in METRIC.findall(q)}
    assert not queried - exported, f"queried but not exported: {sorted(queried - exported)}"
