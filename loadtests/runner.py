"""Run a load-test profile with locust and turn its per-request results into a gated report.

Usage::

    python -m loadtests.runner --profile short-chat --target http://localhost:8000 \\
        [--users N | --qps R] --duration 60 --out out/loadtest [--seed S]
    python -m loadtests.runner --profile short-chat --from-results results.jsonl --out DIR

Exit status: 0 when every SLO gate passes, 1 when a gate fails, 2 on usage errors or when the run
produced no results. ``--from-results`` re-reports a recorded JSONL run without starting locust.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import measure
from loadtests.profiles import Profile, ProfileError, load_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
THROUGHPUT_BIN_S = 5.0
OPEN_LOOP_USERS_PER_QPS = 8
USER_CLASSES = {"chat": "ChatUser", "completions": "CompletionUser"}


class UsageError(ValueError):
    """Bad arguments or environment (exit status 2)."""


@dataclass
class Report:
    passed: bool
    violations: list[str]
    summary: dict
    markdown: Path
    html: Path
    results: Path
    plots: dict[str, Path] = field(default_factory=dict)


def read_results(path: Path) -> list[dict]:
    """The per-request records of a run; blank or torn trailing lines are skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _timing(rec: dict) -> measure.StreamTiming | None:
    """Rebuild a StreamTiming from a record (a non-streamed answer arrives whole at E2E)."""
    if not rec.get("ok") or rec.get("e2e_s") is None:
        return None
    e2e = float(rec["e2e_s"])
    tokens = int(rec.get("output_tokens") or 0)
    first = rec.get("ttft_s")
    first = e2e if first is None else float(first)
    itl = rec.get("itl_s")
    last = first + float(itl) * (tokens - 1) if itl is not None and tokens > 1 else first
    return measure.StreamTiming(
        request_start=0.0, first_token_s=first, last_token_s=last, output_tokens=tokens, end_s=e2e
    )


def summarize(records: list[dict], profile: Profile) -> dict:
    """Percentiles, rates, error rate and goodput of a run's records."""
    ok = [r for r in records if r.get("ok")]
    starts = [r["start"] for r in records]
    ends = [r["start"] + (r.get("e2e_s") or 0.0) for r in records]
    span = max(ends) - min(starts) if records else 0.0
    timings = [_timing(r) for r in ok]
    per_request_tps = [v for t in timings if t for v in [measure.output_tokens_per_s(t)] if v]
    req_slo = profile.slo.request
    good = measure.goodput(
        [measure.RequestResult(ok=bool(r.get("ok")), timing=_timing(r)) for r in records],
        measure.Slo(ttft_s=req_slo.ttft_s, itl_s=req_slo.itl_s, e2e_s=req_slo.e2e_s),
        span,
    )
    output_tokens = sum(int(r.get("output_tokens") or 0) for r in ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "span_s": span,
        "ttft": measure.percentiles(r["ttft_s"] for r in ok if r.get("ttft_s") is not None),
        "itl": measure.percentiles(r["itl_s"] for r in ok if r.get("itl_s") is not None),
        "e2e": measure.percentiles(r["e2e_s"] for r in ok if r.get("e2e_s") is not None),
        "tps": measure.percentiles(per_request_tps),
        "error_rate": (len(records) - len(ok)) / len(records) if records else None,
        "goodput": good.good_fraction if records else None,
        "good_requests_per_s": good.good_requests_per_s,
        "requests_per_s": len(records) / span if span > 0 else 0.0,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / span if span > 0 else 0.0,
        "errors": sorted({str(r.get("error")) for r in records if not r.get("ok")})[:10],
    }


def _plots(records: list[dict], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(r["start"] for r in records)
    ok = [r for r in records if r.get("ok")]
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(8, 4))
    ttft = [(r["start"] - t0, r["ttft_s"]) for r in ok if r.get("ttft_s") is not None]
    e2e = [(r["start"] - t0, r["e2e_s"]) for r in ok if r.get("e2e_s") is not None]
    if ttft:
        ax.scatter(*zip(*ttft, strict=True), s=8, label="TTFT")
    if e2e:
        ax.scatter(*zip(*e2e, strict=True), s=8, label="E2E")
    ax.set(xlabel="request start (s)", ylabel="latency (s)", title="Latency over time")
    ax.legend()
    paths["latency"] = out_dir / "latency_over_time.png"
    fig.tight_layout()
    fig.savefig(paths["latency"], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    values = sorted(v for _, v in ttft)
    if values:
        ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post")
    ax.set(xlabel="TTFT (s)", ylabel="fraction of requests", title="TTFT CDF", ylim=(0, 1.02))
    paths["ttft_cdf"] = out_dir / "ttft_cdf.png"
    fig.tight_layout()
    fig.savefig(paths["ttft_cdf"], dpi=90)
    plt.close(fig)

    end = max(r["start"] + (r.get("e2e_s") or 0.0) for r in records) - t0
    bins = max(1, math.ceil(end / THROUGHPUT_BIN_S))
    reqs = [0.0] * bins
    toks = [0.0] * bins
    for r in ok:
        i = min(bins - 1, int((r["start"] + r["e2e_s"] - t0) // THROUGHPUT_BIN_S))
        reqs[i] += 1 / THROUGHPUT_BIN_S
        toks[i] += int(r.get("output_tokens") or 0) / THROUGHPUT_BIN_S
    xs = [i * THROUGHPUT_BIN_S for i in range(bins)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(xs, reqs, where="post", label="requests/s", color="tab:blue")
    ax.set(xlabel="time (s, 5 s bins by completion)", ylabel="requests/s", title="Throughput")
    ax2 = ax.twinx()
    ax2.step(xs, toks, where="post", label="output tokens/s", color="tab:orange")
    ax2.set_ylabel("output tokens/s")
    fig.legend(loc="upper right")
    paths["throughput"] = out_dir / "throughput.png"
    fig.tight_layout()
    fig.savefig(paths["throughput"], dpi=90)
    plt.close(fig)
    return paths


_ROWS = (("TTFT (s)", "ttft"), ("ITL (s)", "itl"), ("E2E (s)", "e2e"), ("output tok/s", "tps"))


def _tables(summary: dict, violations: list[str], profile: Profile) -> tuple[list, list, list]:
    ps = measure.DEFAULT_PERCENTILES
    pct_head = ["metric", *[f"p{p}" for p in ps]]
    pct_rows = []
    for label, key in _ROWS:
        values = summary[key]
        pct_rows.append([label, *[f"{values[p]:.3f}" if p in values else "-" for p in ps]])
    totals = [
        ["requests", str(summary["requests"])],
        ["failed", str(summary["failed"])],
        ["error rate", f"{summary['error_rate']:.2%}"],
        ["goodput (within request SLO)", f"{summary['goodput']:.2%}"],
        ["requests/s", f"{summary['requests_per_s']:.2f}"],
        ["output tokens/s", f"{summary['output_tokens_per_s']:.1f}"],
        ["span (s)", f"{summary['span_s']:.1f}"],
    ]
    gates = [[k, f"{v:g}"] for k, v in profile.slo.thresholds().items()]
    return [pct_head, *pct_rows], totals, gates


def _md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out + ["</table>"])


def build_report(profile: Profile, results: Path, out_dir: Path) -> Report:
    """Summarize recorded results, evaluate the profile's gates and write the report files."""
    records = read_results(results)
    if not records:
        raise UsageError(f"no results in {results}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, profile)
    violations = measure.gate(summary, profile.slo.thresholds())
    passed = not violations
    plots = _plots(records, out_dir)
    pct, totals, gates = _tables(summary, violations, profile)
    verdict = "PASS" if passed else "FAIL"
    failures = "\n".join(f"- {v}" for v in violations) or "- none"
    errors = "\n".join(f"- `{e}`" for e in summary["errors"])
    md = [
        f"# Load test: {profile.name} — {verdict}",
        "",
        profile.description,
        "",
        "## Latency percentiles",
        "",
        _md_table(pct),
        "",
        "## Totals",
        "",
        _md_table([["figure", "value"], *totals]),
        "",
        "## SLO gates",
        "",
        _md_table([["gate", "limit"], *gates]) if gates else "No gates set.",
        "",
        "Violations:",
        "",
        failures,
        "",
    ]
    if errors:
        md += ["## Errors (first 10 distinct)", "", errors, ""]
    md += [f"![{name}]({p.name})" for name, p in plots.items()]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(md) + "\n", encoding="utf-8")

    imgs = "\n".join(
        f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode("ascii")}">'
        for name, p in plots.items()
    )
    viol_html = "".join(f"<li>{html.escape(v)}</li>" for v in violations) or "<li>none</li>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Load test {html.escape(profile.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #aaa;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Load test: {html.escape(profile.name)} — {verdict}</h1>
<p>{html.escape(profile.description)}</p>
<h2>Latency percentiles</h2>
{_html_table(pct)}
<h2>Totals</h2>
{_html_table([["figure", "value"], *totals])}
<h2>SLO gates</h2>
{_html_table([["gate", "limit"], *gates])}
<p>Violations:</p><ul>{viol_html}</ul>
{imgs}
</body></html>
"""
    page_path = out_dir / "report.html"
    page_path.write_text(page, encoding="utf-8")
    (out_dir / "summary.json").write_text(
        json.dumps({**summary, "passed": passed, "violations": violations}, indent=2, default=str)
    )
    return Report(passed, violations, summary, markdown, page_path, results, plots)


def run(
    profile: str | Path | Profile,
    target: str,
    users: int | None = None,
    qps: float | None = None,
    duration_s: float | None = None,
    out_dir: str | Path = "loadtest-out",
    seed: int | None = None,
    profile_ref: str | None = None,
) -> Report:
    """Run locust headless against ``target`` and build the report from its results."""
    if users is not None and qps is not None:
        raise UsageError("give --users or --qps, not both")
    if isinstance(profile, Profile):
        if profile_ref is None:
            raise UsageError("a Profile object needs profile_ref (its name or YAML path)")
        prof, ref = profile, profile_ref
    else:
        prof, ref = load_profile(profile), str(profile)
    missing = [t.key_env for t in prof.tenants if not os.environ.get(t.key_env)]
    if missing:
        raise UsageError(f"tenant API key variables not set: {', '.join(missing)}")
    if users is None and qps is None:
        users, qps = prof.arrival.users, prof.arrival.qps
    if users is None:
        users = max(1, math.ceil(qps * OPEN_LOOP_USERS_PER_QPS))
    duration = prof.duration_s if duration_s is None else duration_s
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["GEMMA_LOADTEST_PROFILE"] = str(Path(ref).resolve()) if Path(ref).suffix else ref
    env["GEMMA_LOADTEST_RESULTS"] = str(results.resolve())
    env["GEMMA_LOADTEST_USERS"] = str(users)
    env.pop("GEMMA_LOADTEST_QPS", None)
    env.pop("GEMMA_LOADTEST_SEED", None)
    if qps is not None:
        env["GEMMA_LOADTEST_QPS"] = str(qps)
    if seed is not None:
        env["GEMMA_LOADTEST_SEED"] = str(seed)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        target.rstrip("/").removesuffix("/v1"),
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{max(1, math.ceil(duration))}s",
        "--csv",
        str(out / "locust"),
        "--only-summary",
        USER_CLASSES[prof.endpoint],
    ]
    with open(out / "locust.log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    # locust exits non-zero when any request failed; the gates decide, so its status is ignored.
    if not read_results(results):
        raise UsageError(f"the run produced no results (see {out / 'locust.log'})")
    return build_report(prof, results, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True, help="shipped profile name or YAML path")
    parser.add_argument("--target", help="base URL of the service, e.g. http://localhost:8000")
    arrival = parser.add_mutually_exclusive_group()
    arrival.add_argument("--users", type=int, help="closed loop with N concurrent users")
    arrival.add_argument("--qps", type=float, help="open-loop Poisson arrivals at R requests/s")
    parser.add_argument("--duration", type=float, help="seconds (default: the profile's)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, help="payload seed (default: the profile's)")
    parser.add_argument("--from-results", help="report on a recorded JSONL instead of running")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if (args.users is not None and args.users < 1) or (args.qps is not None and args.qps <= 0):
            raise UsageError("--users must be >= 1 and --qps > 0")
        if args.from_results:
            report = build_report(
                load_profile(args.profile), Path(args.from_results), Path(args.out)
            )
        else:
            if not args.target:
                raise UsageError("--target is required unless --from-results is given")
            report = run(
                args.profile, args.target, args.users, args.qps, args.duration, args.out, args.seed
            )
    except (UsageError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'PASS' if report.passed else 'FAIL'}: {report.markdown}")
    for v in report.violations:
        print(f"  gate failed: {v}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
