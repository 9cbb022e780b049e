"""The monitoring stack against a running Assay: Prometheus (Debian's `prometheus` package)
scrapes two API processes and a worker on loopback with the repository's scrape jobs and alert
rules, jobs run, and every PromQL expression of the Grafana dashboard and of the alert rules
returns data.

An alert rule is written `<figure> <comparison> <threshold>`; its figure is what must return
data (the comparison alone is empty while nothing is wrong). A rule not written so fails here.
"""

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.e2e.conftest import Stack, free_port
from tests.e2e.test_metrics_e2e import metrics_stack  # noqa: F401 - the stack this test scrapes
from tests.services import services_required

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations"
ALERTS = OPERATIONS / "alerts.yml"
DASHBOARD = OPERATIONS / "grafana" / "dashboards" / "assay.json"
# Grafana's variables, as a query over the last minutes would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
RULE = re.compile(r"^(?P<figure>.*\S)\s*(?P<comparison>[<>]=?|[!=]=)\s*(?P<threshold>[-0-9.e+]+)$")
JOB_SCRAPES = {"assay-api", "assay-worker"}

CSV = b"x,y,z\n" + b"".join(b"%d,%d,%d\n" % (i, i * 3 % 7, i * i % 11) for i in range(300))
COMPLETED_JOBS = 6


def prometheus_binary() -> str:
    """The `prometheus` executable: skip without it on a laptop, fail when CI requires it."""
    found = shutil.which("prometheus")
    if found:
        return found
    message = (
        "the `prometheus` binary is not installed (Debian: apt-get install prometheus;"
        " .ci/run installs it)"
    )
    if services_required():
        pytest.fail(f"{message} (CI=true or ASSAY_REQUIRE_SERVICES=1: it is required)")
    pytest.skip(message)


def scrape_config(api: str, worker: str, rules: Path) -> dict[str, Any]:
    """docs/operations/prometheus.yml with the Assay scrape jobs aimed at loopback (where the
    API needs no key) and a one-second interval; jobs this test does not run are dropped."""
    config: dict[str, Any] = yaml.safe_load((OPERATIONS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= JOB_SCRAPES, f"prometheus.yml must scrape {JOB_SCRAPES}"
    targets = {"assay-api": api, "assay-worker": worker}
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [targets[name]]}]}
            for name in sorted(JOB_SCRAPES)
        ],
    }


@pytest.fixture(scope="module")
def prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """Prometheus scraping the stack: (stack, Prometheus's base URL)."""
    binary = prometheus_binary()  # before the stack starts: a skip costs nothing
    stack, worker_metrics = request.getfixturevalue("metrics_stack")
    folder = tmp_path_factory.mktemp("prometheus")
    config = scrape_config(urlsplit(stack.base_url).netloc, urlsplit(worker_metrics).netloc, ALERTS)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, lambda: log.read_text(errors="replace"))
        yield stack, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Any, timeout: float, explain: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, explain()
        time.sleep(0.25)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result (fails the test on a PromQL error)."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def targets_up(url: str) -> bool:
    active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in active if t["health"] == "up"}
    return jobs == JOB_SCRAPES


def dashboard_expressions() -> dict[str, str]:
    """Every panel query of the dashboard, Grafana's variables filled in: {where: expr}."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown variable in {expr}"
            found[f"panel {panel['title']!r} {target['refId']}"] = expr
    return found


def alert_figures() -> dict[str, str]:
    """The figure (left of the threshold) of every alert rule: {where: expr}."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    found = {}
    for rule in (rule for group in groups for rule in group["rules"]):
        written = RULE.match(" ".join(rule["expr"].split()))
        assert written, f"alert {rule['alert']}: write it as `<figure> <comparison> <threshold>`"
        found[f"alert {rule['alert']}"] = written["figure"]
    return found


def upload(stack: Stack) -> str:
    with stack.client() as client:
        uploaded = client.post("/api/v1/datasets", files={"file": ("numbers.csv", CSV)})
        assert uploaded.status_code == 201, uploaded.text
        return str(uploaded.json()["id"])


def run_jobs(stack: Stack, dataset_id: str, completing: int) -> int:
    """`completing` jobs that complete and one that fails in its step; the number of jobs."""
    steps: list[list[dict[str, Any]]] = [[{"processor": "metrics"}]] * completing
    # Three factors need more than three columns: the step fails in the worker.
    fails = {"processor": "factor_analysis", "params": {"columns": ["x", "y", "z"], "n_factors": 3}}
    steps.append([fails])
    with stack.client() as client:
        ids = []
        for job_steps in steps:
            submitted = client.post(
                "/api/v1/jobs", json={"dataset_id": dataset_id, "steps": job_steps}
            )
            assert submitted.status_code == 202, submitted.text
            ids.append(submitted.json()["id"])

        def finished() -> bool:
            statuses = [client.get(f"/api/v1/jobs/{i}").json()["status"] for i in ids]
            return all(s in ("completed", "failed") for s in statuses)

        wait_for(finished, 90, stack.logs_text)
        assert client.get(f"/api/v1/jobs/{ids[-1]}").json()["status"] == "failed"
    return len(ids)


def wait_until_scraped(url: str, jobs: int) -> None:
    """Until Prometheus holds the worker's count of `jobs` ended jobs."""
    wait_for(
        lambda: (
            [float(r["value"][1]) for r in query(url, "sum(assay_jobs_finished_total)")]
            == [float(jobs)]
        ),
        30,
        lambda: str(query(url, "assay_jobs_finished_total")),
    )


def test_every_dashboard_and_alert_expression_returns_data(
    prometheus: tuple[Stack, str],
) -> None:
    stack, url = prometheus
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True)
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    wait_for(lambda: targets_up(url), 30, lambda: httpx.get(f"{url}/api/v1/targets").text)

    # Two waves: a counter's series starts at its first value, so a rate needs the second wave
    # to raise it within the query window (as traffic would).
    dataset_id = upload(stack)
    jobs = run_jobs(stack, dataset_id, completing=1)
    wait_until_scraped(url, jobs)
    upload(stack)  # a second validation, for the validation latency
    jobs += run_jobs(stack, dataset_id, completing=COMPLETED_JOBS)
    wait_until_scraped(url, jobs)
    time.sleep(2)  # a few samples after the last change

    expressions = dashboard_expressions() | alert_figures()
    empty, not_a_number = [], []
    for where, expr in expressions.items():
        values = [float(r["value"][1]) for r in query(url, expr)]
        if not values:
            empty.append(f"{where}: {expr}")
        elif all(math.isnan(v) for v in values):
            not_a_number.append(f"{where}: {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)
    assert not not_a_number, "only NaN:\n" + "\n".join(not_a_number)
    # A fallback (`or vector(0)`) must not hide a misspelt metric or scrape job.
    text = " ".join(expressions.values())
    for name in set(re.findall(r"\b(assay_\w+|up)\b", text)):
        assert query(url, f'count({{__name__="{name}"}})'), f"no series named {name}"
    for job in set(re.findall(r'job="([^"]+)"', text)):
        assert query(url, f'up{{job="{job}"}}'), f"no scrape job {job}"

    # Prometheus loaded every rule and evaluates it without error.
    wait_for(
        lambda: _rules(url) and all(r["lastEvaluation"][:4] != "0001" for r in _rules(url)), 10
    )
    rules = _rules(url)
    assert {f"alert {r['name']}" for r in rules} == set(alert_figures())
    assert all(r["health"] == "ok" for r in rules), rules


def _rules(url: str) -> list[dict[str, Any]]:
    groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]
