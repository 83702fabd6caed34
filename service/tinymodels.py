"""Tiny random-weight Gemma 4 checkpoints for offline tests.

The real checkpoints are tens of GiB and cannot be downloaded in CI, but vLLM, Ray Serve LLM and
the gateway only need something with the real architecture, the real special-token inventory and
the real chat format. These stand-ins are built locally in about a quarter of a second (plus
the torch/transformers import):

- ``dense``: ``Gemma4ForCausalLM`` for gemma-4-31b-it (hybrid sliding/global attention).
- ``moe``: the same with the MoE block enabled, for gemma-4-26b-a4b-it.
- ``multimodal``: ``Gemma4ForConditionalGeneration`` for gemma-4-e4b-it: the dense text model
  with a vision tower and an audio tower (the E2B/E4B shape), and a processor for images
  (PIL backend), audio (Gemma 4's feature extractor) and video (frames as images, in vLLM).

All share one small byte-level BPE tokenizer trained on an embedded corpus. What they are is in
`service/tiny_recipe.py`; this module builds, caches and locks them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service import tiny_recipe as recipe
from service.tiny_recipe import TINY_VARIANTS

__all__ = ["TINY_VARIANTS", "build_tiny_checkpoints", "tiny_checkpoint_path"]

# Bump when anything below changes in a way the hash cannot see (e.g. the build code itself).
_RECIPE_VERSION = 2
_MARKER = ".gemma-serve-tiny.json"
_LOCK = ".gemma-serve-tiny.lock"


def tiny_checkpoint_path(cache_dir: Path, variant: str) -> Path:
    """Directory that holds (or will hold) the ``variant`` checkpoint under ``cache_dir``."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; expected one of {TINY_VARIANTS}")
    return Path(cache_dir) / f"gemma4-tiny-{variant}"


def build_tiny_checkpoints(cache_dir: Path, *, force: bool = False) -> dict[str, Path]:
    """Build every tiny variant under ``cache_dir`` unless an up-to-date copy is already there.

    Returns ``{variant: checkpoint_dir}``. Each directory is a complete Hugging Face checkpoint
    that transformers and vLLM load offline. ``force=True`` rebuilds even up-to-date copies.
    """
    cache_dir = Path(cache_dir)
    paths = {variant: tiny_checkpoint_path(cache_dir, variant) for variant in TINY_VARIANTS}
    # Up-to-date caches are only read, so one baked into a read-only image layer works too.
    if not force and all(_read_recipe(paths[v]) == _recipe_hash(v) for v in TINY_VARIANTS):
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / _LOCK):
        _remove_leftovers(cache_dir)
        stale = [
            variant
            for variant in TINY_VARIANTS
            if force or _read_recipe(paths[variant]) != _recipe_hash(variant)
        ]
        if stale:
            tokenizer = _train_tokenizer()
            for variant in stale:
                _build_variant(variant, paths[variant], tokenizer)
    return paths


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # Test workers and Ray replicas may build the same cache concurrently; one builds, the
    # others then find it current.
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path) -> None:
    # Under the lock, any temp or retired directory belongs to a build that was interrupted.
    for entry in cache_dir.iterdir():
        if entry.is_dir() and entry.name.startswith((".tmp-gemma4-tiny-", ".old-gemma4-tiny-")):
            shutil.rmtree(entry, ignore_errors=True)


def _library_versions() -> dict[str, str]:
    # The saved bytes (and config layout: see research/gemma4.md section 3) depend on these.
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "tokenizers", "safetensors")}


def _recipe_hash(variant: str) -> str:
    described = {
        "recipe_version": _RECIPE_VERSION,
        "variant": variant,
        "seed": recipe.SEED,
        "dtype": recipe.DTYPE,
        "text_config": {**recipe.TEXT_CONFIG, **recipe.VARIANT_CONFIG[variant]},
        "tokenizer": recipe.TOKENIZER_SPEC,
        "libraries": _library_versions(),
    }
    if variant == "multimodal":
        described |= {
            "vision": recipe.VISION_CONFIG,
            "audio": recipe.AUDIO_CONFIG,
            "processor": recipe.PROCESSOR_CONFIG,
        }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _read_recipe(checkpoint: Path) -> str | None:
    try:
        return json.loads((checkpoint / _MARKER).read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Byte-level, so any Unicode input encodes without <unk>.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.TOKENIZER_SPEC["vocab_size"],
        min_frequency=recipe.TOKENIZER_SPEC["min_frequency"],
        special_tokens=list(recipe.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(recipe.CORPUS, trainer=trainer)
    # Plain encode() prepends <bos> like the real GemmaTokenizer (add_bos_token=True). Chat
    # prompts get their <bos> from the template instead: vLLM and transformers tokenize
    # templated prompts with add_special_tokens=False, so it is not doubled.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", recipe.BOS_ID)],
    )
    for token_id, token in enumerate(recipe.SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token!r} did not get id {token_id}")
    return tokenizer


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens=dict(recipe.NAMED_SPECIAL_TOKENS),
        padding_side="left",
        chat_template=recipe.CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(directory)


def _save_model(variant: str, directory: Path) -> None:
    import torch
    from transformers import GenerationConfig

    model_cls, config = _model_config(variant)
    # Seed a forked RNG so building is reproducible without touching the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.SEED)
        model = model_cls(config).to(getattr(torch, recipe.DTYPE)).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=recipe.BOS_ID,
        eos_token_id=[recipe.EOS_ID, recipe.TURN_END_ID],
        pad_token_id=recipe.PAD_ID,
    )
    model.save_pretrained(directory)


def _model_config(variant: str) -> tuple[Any, Any]:
    from transformers import (
        Gemma4Config,
        Gemma4ForCausalLM,
        Gemma4ForConditionalGeneration,
        Gemma4TextConfig,
    )

    text = Gemma4TextConfig(**recipe.TEXT_CONFIG, **recipe.VARIANT_CONFIG[variant])
    if variant != "multimodal":
        return Gemma4ForCausalLM, text
    token_ids = {token: i for i, token in enumerate(recipe.SPECIAL_TOKENS)}
    config = Gemma4Config(
        text_config=text.to_dict(),
        vision_config=recipe.VISION_CONFIG,
        audio_config=recipe.AUDIO_CONFIG,
        boi_token_id=token_ids["<|image>"],
        eoi_token_id=token_ids["<image|>"],
        image_token_id=token_ids["<|image|>"],
        boa_token_id=token_ids["<|audio>"],
        eoa_token_index=token_ids["<audio|>"],
        audio_token_id=token_ids["<|audio|>"],
        video_token_id=token_ids["<|video|>"],
        tie_word_embeddings=True,
    )
    return Gemma4ForConditionalGeneration, config


def _save_processor(directory: Path) -> None:
    """processor_config.json, written out because `Gemma4Processor.save_pretrained` needs a
    video processor, which needs torchvision (service/multimodal_compat.py). Saved without
    one, the checkpoint loads with torchvision or without it."""
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    def as_config(processor: Any) -> dict[str, Any]:
        config = json.loads(processor.to_json_string())  # drops arrays such as mel filters
        config.pop("processor_class", None)
        return config

    image = as_config(Gemma4ImageProcessorPil())
    # The PIL backend by name; the base name would pick torchvision wherever it is installed.
    image["image_processor_type"] = Gemma4ImageProcessorPil.__name__
    config = {
        "processor_class": "Gemma4Processor",
        "image_processor": image,
        "feature_extractor": as_config(Gemma4AudioFeatureExtractor()),
        **recipe.PROCESSOR_CONFIG,
    }
    (directory / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _build_variant(variant: str, target: Path, tokenizer: Any) -> None:
    # Build beside the target and swap it in with renames, so the target path never holds a
    # partial checkpoint (the marker, written last, is what marks a build as complete).
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        _save_model(variant, staging)
        _save_tokenizer(tokenizer, staging)
        if variant == "multimodal":
            _save_processor(staging)
        marker = {"recipe": _recipe_hash(variant), "variant": variant}
        (staging / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the dir 0700 and safetensors writes 0600; serving containers and Ray
        # workers may run as other users.
        os.chmod(staging, 0o755)
        for path in staging.iterdir():
            os.chmod(path, 0o644)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.parent / f".old-{target.name}-{uuid.uuid4().hex}"
    if target.exists():
        target.rename(retired)
    try:
        staging.rename(target)
    except BaseException:
        if retired.exists():
            retired.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
