"""Tests of the load-test runner: report computation from a recorded run, and one real locust run
against a tiny in-process fake of an OpenAI streaming endpoint."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests import runner
from loadtests.profiles import load_profile

FIXTURE = Path(__file__).parent / "fixtures" / "loadtest_results.jsonl"

PROFILE_YAML = """\
name: tiny
description: test profile
endpoint: chat
stream: true
prompt:
  kind: short_chat
  prompt_tokens: {{min: 5, max: 20}}
  max_tokens: {{min: 4, max: 8}}
arrival:
  users: 2
duration_s: 3
slo:
{slo}
"""


def _profile(tmp_path: Path, slo: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(PROFILE_YAML.format(slo=slo))
    return path


def test_report_from_recorded_results(tmp_path):
    out = tmp_path / "out"
    report = runner.build_report(load_profile("short-chat"), FIXTURE, out)
    assert report.passed, report.violations
    for path in [report.markdown, report.html, *report.plots.values()]:
        assert path.is_file() and path.stat().st_size > 0
    assert set(report.plots) == {"latency", "ttft_cdf", "throughput"}
    md = report.markdown.read_text()
    assert "| metric | p50 | p90 | p95 | p99 |" in md
    assert "| TTFT (s) |" in md and "| E2E (s) |" in md and "| ITL (s) |" in md
    assert "PASS" in md
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    assert report.summary["requests"] == 24 and report.summary["error_rate"] == 0.0


def test_impossible_gate_fails_with_exit_1(tmp_path, capsys):
    profile = _profile(tmp_path, "  ttft_p95_s: 0.001\n  error_rate_max: 0.0")
    code = runner.main(
        ["--profile", str(profile), "--from-results", str(FIXTURE), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    assert "TTFT p95" in capsys.readouterr().out
    assert "TTFT p95" in (tmp_path / "o" / "report.md").read_text()


def test_failed_requests_count_in_error_rate(tmp_path):
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    records[0].update(ok=False, status=500, error="HTTP 500: boom", ttft_s=None, itl_s=None)
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = runner.build_report(load_profile("short-chat"), results, tmp_path / "o")
    assert not report.passed
    assert report.summary["failed"] == 1
    assert any(v.startswith("error rate") for v in report.violations)


def test_usage_errors_exit_2(tmp_path):
    assert runner.main(["--profile", "no-such-profile", "--target", "http://x", "--out", "o"]) == 2
    assert runner.main(["--profile", "short-chat", "--users", "1", "--qps", "1"]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["--profile", "short-chat", "--from-results", str(empty), "--out", str(tmp_path)]
    assert runner.main(args) == 2


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Streams a few chat chunks, a usage chunk and [DONE] using chunked transfer encoding."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _chunk(self, data: str) -> None:
        raw = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or not body.get("stream"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": "x", "object": "chat.completion.chunk", "model": body["model"]}
        self._chunk(json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for word in ["Hello", " there", " friend", "!"]:
            time.sleep(0.01)
            delta = {"index": 0, "delta": {"content": word}}
            self._chunk(json.dumps({**base, "choices": [delta]}))
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        self._chunk(json.dumps({**base, "choices": [], "usage": usage}))
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 resets connections when users spawn
    daemon_threads = True


@pytest.fixture
def fake_server():
    server = _Server(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_end_to_end_against_fake_sse_server(tmp_path, fake_server):
    profile = _profile(
        tmp_path, "  ttft_p95_s: 2.0\n  error_rate_max: 0.0\n  request: {ttft_s: 2.0}"
    )
    out = tmp_path / "out"
    args = ["--profile", str(profile), "--target", fake_server, "--users", "2"]
    code = runner.main([*args, "--duration", "3", "--out", str(out), "--seed", "5"])
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert code == 0, log
    records = runner.read_results(out / "results.jsonl")
    assert records and all(r["ok"] for r in records), records[:3]
    assert all(r["output_tokens"] == 4 and r["ttft_s"] is not None for r in records)
    assert all(r["itl_s"] is not None for r in records)
    for name in ["report.md", "report.html", "latency_over_time.png", "ttft_cdf.png"]:
        assert (out / name).is_file()
    assert (out / "throughput.png").is_file() and (out / "locust_stats.csv").is_file()
    assert "| TTFT (s) |" in (out / "report.md").read_text()
