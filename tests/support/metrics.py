"""Reading a Prometheus exposition the way Prometheus does (prometheus_client's parser)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Exposition:
    """Every sample of one scrape: (name, labels) -> value, and the family names."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: set[str]

    def value(self, name: str, /, **labels: str) -> float:
        """The one sample of `name` whose labels include `labels`."""
        found = self.all(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples: {found}"
        return next(iter(found.values()))

    def all(self, name: str, /, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        want = set(labels.items())
        return {lb: v for (n, lb), v in self.samples.items() if n == name and want <= lb}

    def sum(self, name: str, /, **labels: str) -> float:
        return sum(self.all(name, **labels).values())

    def names(self) -> set[str]:
        """Every name a query may use: the samples' (with _total, _bucket, ... suffixes), and
        those of families that have no sample in this scrape."""
        suffixes = ("", "_total", "_bucket", "_count", "_sum")
        return {n for n, _ in self.samples} | {f + s for f in self.families for s in suffixes}


def parse(text: str) -> Exposition:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Exposition(samples, families)


def scrape(url: str) -> Exposition:
    r = httpx.get(url, timeout=15)
    assert r.status_code == 200, f"GET {url}: {r.status_code} {r.text[:500]}"
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return parse(r.text)


def endpoints(data_dir: Path) -> dict[str, object]:
    """What serve wrote to <data_dir>/endpoints.json."""
    return dict(json.loads((data_dir / "endpoints.json").read_text()))


def need_binary(binary: str, package: str = "prometheus") -> str:
    """The path of a monitoring tool. scripts/setup installs it when run as root, so
    there it must be present; elsewhere its absence skips the test."""
    path = shutil.which(binary)
    if path is not None:
        return path
    if os.geteuid() == 0:
        pytest.fail(f"{binary} is missing although scripts/setup installs Debian's {package} as root")
    pytest.skip(f"{binary} is not installed (Debian package {package}; scripts/setup installs it as root)")


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_NAME = re.compile(r"\b(openevs_[a-zA-Z0-9_]+)")


def deployed_exprs() -> list[str]:
    """Every PromQL expression of the dashboard and of the alert rules."""
    dashboard = json.loads((DEPLOY / "grafana" / "openevs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "openevs.rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The openevs_* series an expression reads (as exposed: with _total, _bucket, ...)."""
    return set(_NAME.findall(expr))
