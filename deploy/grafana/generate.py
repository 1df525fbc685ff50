"""Generate the bestofk Grafana dashboard from the panel definitions below.

    python deploy/grafana/generate.py          # rewrite dashboards/bestofk.json
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is stale

The committed JSON is what Grafana provisioning (compose) and the Kubernetes ConfigMap (the
kustomization beside it) load; edit the definitions here, never the JSON. The tests run every
query against a real Prometheus scraping a real server and check each metric name against a
live ``/metrics``, so a query here that names a metric nobody exports fails the build.

Queries use Grafana's ``$__rate_interval`` (at least four scrape intervals, so ``rate()`` always
has two samples) and ``$__range`` (the dashboard's time range) for the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "bestofk.json"
UID = "bestofk-overview"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
W = "$__rate_interval"
# Scrapes of /metrics and probes of /health would swamp the request rate and dilute error ratios.
API = 'endpoint!~"/metrics|/health"'
QUANTILES = (0.5, 0.95, 0.99)
STAGES = ("queue", "generate", "verify", "total")


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel and the legend of its series."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: a title, its queries, the unit of their values and how to draw them."""

    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"
    stack: bool = False
    max: float | None = None


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out two (or ``per_line``) to a line."""

    title: str
    panels: tuple[Panel, ...]
    per_line: int = 2


def quantiles(metric: str, by: str = "", selector: str = "") -> tuple[Target, ...]:
    """p50/p95/p99 of a histogram, one series per value of the ``by`` label (if any)."""
    labels = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({metric}_bucket{{{selector}}}[{W}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in QUANTILES
    )


def ratio(numerator: str, denominator: str, window: str = W) -> str:
    """sum(rate(numerator)) / sum(rate(denominator)) over ``window``."""
    fn = "increase" if window == "$__range" else "rate"
    return f"sum({fn}({numerator}[{window}])) / sum({fn}({denominator}[{window}]))"


STAGE_DESCRIPTIONS = {
    "queue": "From arrival to the pipeline starting (admission wait).",
    "generate": "Engine time for all K candidates (0 for /verify).",
    "verify": "From the first candidate in to the last verdict.",
    "total": "From arrival to the response, the whole request.",
}


def stage_panel(stage: str) -> Panel:
    """p50/p95/p99 of one pipeline stage."""
    return Panel(
        f"{stage.capitalize()} latency",
        STAGE_DESCRIPTIONS[stage],
        quantiles("bestofk_stage_duration_seconds", selector=f'stage="{stage}"'),
        unit="s",
    )


PASS_AT_1 = "bestofk_first_candidate_passed_total"
PASS_AT_K = "bestofk_requests_with_passing_candidate_total"
RERANKED = "bestofk_reranked_requests_total"

ROWS: tuple[Row, ...] = (
    Row(
        "Traffic",
        (
            Panel(
                "Requests/s by endpoint",
                "Answered requests per second, every status (health probes and scrapes left out).",
                (
                    Target(
                        f"sum by (endpoint) (rate(bestofk_requests_total{{{API}}}[{W}]))",
                        "{{endpoint}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Errors/s by endpoint and status",
                "4xx (the client's fault: bad specs, limits, overload 429) and 5xx (ours).",
                (
                    Target(
                        "sum by (endpoint, code) "
                        f'(rate(bestofk_requests_total{{code=~"4..|5.."}}[{W}]))',
                        "{{endpoint}} {{code}}",
                    ),
                ),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Server error ratio (5xx)",
                "Share of API requests answered with a 5xx; the BestofkHighErrorRate alert "
                "fires above 5%.",
                (
                    Target(
                        f'(sum(rate(bestofk_requests_total{{code=~"5..",{API}}}[{W}])) '
                        "or vector(0)) / "
                        f"sum(rate(bestofk_requests_total{{{API}}}[{W}]))",
                        "5xx share",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "In-flight requests",
                "Requests inside the rerank pipeline now, summed over workers and replicas.",
                (Target("sum(bestofk_inflight_requests)", "in flight"),),
            ),
            Panel(
                "Backends up",
                "1 while a backend takes requests; 0 while its health check fails or it is "
                'ejected as an outlier (the least over replicas). backend="in-process" is the '
                "in-process engine (0: loading or dead).",
                (Target("min by (backend) (bestofk_backend_up)", "{{backend}}"),),
                max=1.0,
            ),
        ),
    ),
    Row(
        "Latency by stage",
        (
            *(stage_panel(stage) for stage in STAGES),
            Panel(
                "Request latency p95 by endpoint",
                "HTTP time per endpoint, as the client sees it (SSE included).",
                (
                    Target(
                        "histogram_quantile(0.95, sum by (le, endpoint) "
                        f"(rate(bestofk_request_duration_seconds_bucket{{{API}}}[{W}])))",
                        "{{endpoint}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Generation time per request",
                "Engine time to produce all K candidates, requests that generated only.",
                quantiles("bestofk_generation_duration_seconds"),
                unit="s",
            ),
        ),
    ),
    Row(
        "Best-of-K",
        (
            Panel(
                "K requested",
                "Candidates asked for per request: mean and p95.",
                (
                    Target(
                        f"sum(rate(bestofk_k_sum[{W}])) / sum(rate(bestofk_k_count[{W}]))",
                        "mean K",
                    ),
                    Target(
                        f"histogram_quantile(0.95, sum by (le) (rate(bestofk_k_bucket[{W}])))",
                        "p95 K",
                    ),
                ),
            ),
            Panel(
                "Candidates/s",
                "Candidates generated or given for verification.",
                (Target(f"sum(rate(bestofk_candidates_total[{W}]))", "candidates"),),
                unit="ops",
            ),
            Panel(
                "pass@1 vs pass@K",
                "Of reranked requests: the share whose first sample passed every verifier "
                "(pass@1, what one sample would give), the share with any passing candidate "
                "(pass@K, what best-of-K can give), and the lift between them.",
                (
                    Target(ratio(PASS_AT_1, RERANKED), "pass@1"),
                    Target(ratio(PASS_AT_K, RERANKED), "pass@K"),
                    Target(
                        f"(sum(rate({PASS_AT_K}[{W}])) - sum(rate({PASS_AT_1}[{W}]))) / "
                        f"sum(rate({RERANKED}[{W}]))",
                        "lift",
                    ),
                ),
                unit="percentunit",
                max=1.0,
            ),
            Panel(
                "pass@1, pass@K and lift over the time range",
                "The same shares over the whole dashboard range: the value the service buys.",
                (
                    Target(ratio(PASS_AT_1, RERANKED, "$__range"), "pass@1"),
                    Target(ratio(PASS_AT_K, RERANKED, "$__range"), "pass@K"),
                    Target(
                        f"(sum(increase({PASS_AT_K}[$__range])) - "
                        f"sum(increase({PASS_AT_1}[$__range]))) / "
                        f"sum(increase({RERANKED}[$__range]))",
                        "lift",
                    ),
                ),
                unit="percentunit",
                kind="stat",
            ),
            Panel(
                "Selected score",
                "Combined score of the returned candidate: mean and median.",
                (
                    Target(
                        f"sum(rate(bestofk_selected_score_sum[{W}])) / "
                        f"sum(rate(bestofk_selected_score_count[{W}]))",
                        "mean",
                    ),
                    Target(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(bestofk_selected_score_bucket[{W}])))",
                        "median",
                    ),
                ),
                max=1.0,
            ),
            Panel(
                "Early exits",
                "Share of reranked requests whose generation stopped at the first good-enough "
                "candidate (the rest were aborted in the engine).",
                (Target(ratio("bestofk_early_exits_total", RERANKED), "early-exit share"),),
                unit="percentunit",
            ),
        ),
    ),
    Row(
        "Verifiers, sandbox and tokens",
        (
            Panel(
                "Verifier latency by verifier",
                "Time one verifier takes on one candidate.",
                quantiles("bestofk_verification_duration_seconds", by="verifier")[:2],
                unit="s",
            ),
            Panel(
                "Verdicts/s by verifier and outcome",
                "pass / fail / error (an error scores 0 and never fails the request).",
                (
                    Target(
                        f"sum by (verifier, outcome) (rate(bestofk_verdicts_total[{W}]))",
                        "{{verifier}} {{outcome}}",
                    ),
                ),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Sandbox runs/s by outcome",
                "Sandboxed code runs: ok, fail, timeout, memory, killed, error.",
                (
                    Target(
                        f"sum by (outcome) (rate(bestofk_sandbox_runs_total[{W}]))",
                        "{{outcome}}",
                    ),
                ),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Tokens/s",
                "Prompt tokens sent to the engine and tokens generated over all K candidates "
                "(aborted ones too).",
                (
                    Target(f"sum(rate(bestofk_prompt_tokens_total[{W}]))", "prompt"),
                    Target(f"sum(rate(bestofk_generated_tokens_total[{W}]))", "generated"),
                ),
                unit="short",
            ),
        ),
    ),
    Row(
        "Request records",
        (
            Panel(
                "Recording healthy",
                "1 while request records are written (--record-dir); 0 from a failed write "
                "(disk full, read-only, permission) until one succeeds again, the least over "
                "workers and replicas. The BestofkRecordingFailing alert fires after 2 minutes "
                "at 0.",
                (Target("min by (directory) (bestofk_records_healthy)", "{{directory}}"),),
                max=1.0,
            ),
            Panel(
                "Records/s written and dropped",
                "Records appended to a record file, and records lost by reason (queue_full: "
                "the writer fell behind; no_space, read_only, permission: the directory; "
                "deleted, too_large, closed, error). BestofkRecordsDropped fires above 1%.",
                (
                    Target(f"sum(rate(bestofk_records_written_total[{W}]))", "written"),
                    Target(
                        f"sum by (reason) (rate(bestofk_records_dropped_total[{W}]))",
                        "dropped {{reason}}",
                    ),
                ),
                unit="ops",
            ),
        ),
    ),
    Row(
        "vLLM engine",
        (
            Panel(
                "Engine requests running / waiting",
                "vLLM's scheduler: requests running and queued. vLLM runs each of the K "
                "samples of a best-of-K request as a child request, so one request counts K.",
                (
                    Target("sum(vllm:num_requests_running)", "running"),
                    Target("sum(vllm:num_requests_waiting)", "waiting"),
                ),
            ),
            Panel(
                "KV-cache usage",
                "Share of the KV cache in use, per engine.",
                (Target("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}"),),
                unit="percentunit",
                max=1.0,
            ),
            Panel(
                "Time to first token",
                "vLLM's time to the first token of a request (the shared prompt's prefill).",
                quantiles("vllm:time_to_first_token_seconds"),
                unit="s",
            ),
            Panel(
                "Engine tokens/s",
                "Prompt and generation throughput as vLLM counts it.",
                (
                    Target(f"sum(rate(vllm:prompt_tokens_total[{W}]))", "prompt"),
                    Target(f"sum(rate(vllm:generation_tokens_total[{W}]))", "generation"),
                ),
            ),
            Panel(
                "Prefix-cache hit rate",
                "Share of prompt tokens served from the prefix cache.",
                (
                    Target(
                        ratio("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
                        "hit rate",
                    ),
                ),
                unit="percentunit",
                max=1.0,
            ),
            Panel(
                "Preemptions/s",
                "Requests preempted for lack of KV cache; sustained preemption means K or "
                "concurrency is too high for the cache.",
                (Target(f"sum(rate(vllm:num_preemptions_total[{W}]))", "preemptions"),),
                unit="ops",
            ),
        ),
    ),
)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.max is not None:
        defaults["min"] = 0
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 20 if panel.stack else 5,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stack else "none"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                "range": panel.kind == "timeseries",
                "instant": panel.kind != "timeseries",
            }
            for i, target in enumerate(panel.targets)
        ],
    }


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        width = 24 // row.per_line
        for i, panel in enumerate(row.panels):
            x = (i % row.per_line) * width
            panels.append(_panel_json(panel, len(panels) + 1, x, y, width))
            if i % row.per_line == row.per_line - 1 or i == len(row.panels) - 1:
                y += 8
    return {
        "uid": UID,
        "title": "bestofk",
        "description": "Best-of-K reranking: traffic, latency by stage, pass@1 vs pass@K, "
        "verifiers, sandbox, request records and the vLLM engine. Generated by "
        "deploy/grafana/generate.py.",
        "tags": ["bestofk", "vllm"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                    "includeAll": False,
                    "multi": False,
                }
            ]
        },
        "panels": panels,
    }


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard, in panel order."""
    return [(p.title, t.expr) for row in ROWS for p in row.panels for t in p.targets]


def render() -> str:
    """The dashboard JSON exactly as committed."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` report whether the committed one is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(queries())} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
