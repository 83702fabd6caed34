"""Gemma 4 model facts and what each pool's checkpoint can take."""

from pathlib import Path

import pytest

from service import catalog, engine_config
from service.settings import PoolSettings, load_settings

CONFIGS = Path(__file__).parents[2] / "configs"
CACHE = Path("/cache")


def pools(name: str) -> dict[str, PoolSettings]:
    return {p.id: p for p in load_settings(CONFIGS / name).pools}


def test_online_fp8_uses_the_per_tensor_scheme_of_current_vllm():
    pool = PoolSettings(id="gemma-4-31b-it", weights="fp8-online")
    engine = engine_config.engine_kwargs(pool)
    assert engine["quantization"] == "fp8_per_tensor"
    assert catalog.checkpoint_source(pool, CACHE) == "google/gemma-4-31B-it"


def test_context_defaults_to_the_model_and_is_capped_by_settings():
    assert catalog.max_model_len(PoolSettings(id="gemma-4-31b-it")) == 262144
    assert catalog.max_model_len(PoolSettings(id="gemma-4-e4b-it")) == 131072


def test_embedded_text_pools_take_text_and_the_e4b_pool_takes_every_medium():
    taken = {pool.id: catalog.modalities(pool) for pool in load_settings().pools}
    assert taken == {
        "gemma-4-26b-a4b-it": {"text"},
        "gemma-4-31b-it": {"text"},
        "gemma-4-e4b-it": {"text", "image", "video", "audio"},
    }


def test_a_text_only_tiny_checkpoint_refuses_image_modalities():
    with pytest.raises(ValueError, match="not accepted by tiny:dense"):
        PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense", modalities=["text", "image"])


def test_an_unknown_tiny_checkpoint_names_the_known_ones():
    with pytest.raises(ValueError, match="tiny:dense or tiny:moe or tiny:multimodal"):
        PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:e2b")


def test_no_fp8_checkpoint_for_e4b_is_refused():
    with pytest.raises(ValueError, match="fp8-online"):
        PoolSettings(id="gemma-4-e4b-it", weights="fp8")


@pytest.mark.parametrize("bind", ["0-3", "0,2,5-7", "auto", "nobind"])
def test_core_bindings_in_vllms_syntax_are_accepted(bind):
    PoolSettings(id="gemma-4-31b-it", checkpoint="tiny:dense", device="cpu", cpu_threads_bind=bind)


@pytest.mark.parametrize("bind", ["", "0-", "cores 0", "0|1"])
def test_a_malformed_core_binding_is_refused(bind):
    with pytest.raises(ValueError, match="cpu_threads_bind"):
        PoolSettings(
            id="gemma-4-31b-it", checkpoint="tiny:dense", device="cpu", cpu_threads_bind=bind
        )
