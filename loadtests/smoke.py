"""`make loadtest-smoke`: start the embedded default, run a short profile against it, stop it.

.venv/bin/python -m loadtests.smoke [--profile short-chat] [--users 4] [--duration 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtests import runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest-smoke", description=__doc__)
    parser.add_argument("--profile", default="short-chat")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument("--out", type=Path, default=Path(".cache/loadtest-smoke"))
    args = parser.parse_args(argv)

    from service.cli import embedded_default_on_free_ports

    with embedded_default_on_free_ports() as settings:
        return runner.main(
            [
                "--profile", args.profile,
                "--target", f"http://127.0.0.1:{settings.server.port}",
                "--users", str(args.users),
                "--duration", str(args.duration),
                "--out", str(args.out),
            ]
        )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
