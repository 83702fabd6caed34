"""Download every pool's checkpoint, at its pinned revision, into the Hugging Face cache.

The chart's warm-up Job (modelCache.warmup.enabled) runs it in the service image, with HF_HOME on
the model-cache volume and the chart's `config` (the service settings) as its argument:

    python3 warmup_cache.py /etc/gemma-serve/warmup/config.yaml

The settings are read with the service's own code, so the Job fetches exactly what vLLM will load:
each pool's checkpoint (`checkpoint`, else the catalog's, FP8 or bf16) at
`engine_kwargs.revision`. Tiny checkpoints, local paths and bucket URIs are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path


def plan(config_path: str | Path) -> list[tuple[str, str | None]]:
    """(Hub repo id, revision) per distinct checkpoint the settings' pools load."""
    from service import catalog
    from service.settings import load_settings

    settings = load_settings(Path(config_path))
    wanted: list[tuple[str, str | None]] = []
    for pool in settings.pools:
        if catalog.is_tiny(pool):
            continue
        source = catalog.checkpoint_source(pool, settings.resolved_cache_dir)
        if "://" in source or source.startswith(("/", ".", "~")):
            continue
        item = (source, pool.engine_kwargs.get("revision"))
        if item not in wanted:
            wanted.append(item)
    return wanted


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: warmup_cache.py SETTINGS_YAML", file=sys.stderr)
        return 2
    from huggingface_hub import snapshot_download

    wanted = plan(argv[0])
    if not wanted:
        print("warm-up: no pool loads a checkpoint from the Hub; nothing to download")
    for repo, revision in wanted:
        if revision is None:
            print(
                f"warm-up: WARNING: {repo} has no engine_kwargs.revision; downloading the "
                "default branch, which can change under you",
                flush=True,
            )
        print(f"warm-up: {repo} @ {revision or 'main'}", flush=True)
        path = snapshot_download(repo_id=repo, revision=revision)
        print(f"warm-up: {repo} is in {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
