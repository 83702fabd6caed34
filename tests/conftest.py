import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Running pytest directly (not through make) still keeps caches in the checkout and offline.
for name, value in {
    "GEMMA_SERVE_CACHE_DIR": str(ROOT / ".cache" / "gemma-serve"),
    "RAY_TMPDIR": str(ROOT / ".cache" / "ray"),
    "VLLM_CACHE_ROOT": str(ROOT / ".cache" / "vllm"),
    "XDG_CACHE_HOME": str(ROOT / ".cache" / "xdg"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(name, value)
