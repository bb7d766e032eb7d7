"""The alert rules in `contrib/prometheus/`: Prometheus loads them, they fire when
meant and not before (`promtool test rules` on `tests/data/prometheus`), and every
metric they name is one the gateway serves: a metric renamed in the code would
otherwise leave its alert silent for ever.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from mailgateway.monitoring import GatewayCollector
from mailgateway.service import Gateway
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "contrib" / "prometheus" / "mailgateway-alerts.yml"
CASES = ROOT / "tests" / "data" / "prometheus" / "alerts_test.yml"
# The samples each metric type is exposed as (a counter's TYPE line names it with
# `_total` in some prometheus-client versions, without in others).
_SUFFIXES = {"counter": ("", "_total"), "histogram": ("_bucket", "_count", "_sum"),
             "gauge": ("",)}


def _promtool(*args: str, cwd: Path) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian package prometheus)")
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_prometheus_loads_the_rules_and_they_fire_when_meant() -> None:
    assert "SUCCESS: 7 rules found" in _promtool("check", "rules", str(RULES), cwd=ROOT)
    assert "SUCCESS" in _promtool("test", "rules", CASES.name, cwd=CASES.parent)


def test_the_rules_name_only_metrics_the_gateway_serves(gateway: Gateway) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    exposition = generate_latest(registry).decode()
    served = {name + suffix
              for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE)
              for suffix in _SUFFIXES[kind]}
    named = set(re.findall(r"\bmailgateway_[a-z_]+", RULES.read_text()))
    assert len(named) == 6  # the seventh rule watches Prometheus's own `up`
    assert named <= served, sorted(named - served)
