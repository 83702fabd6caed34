"""What the tiny Gemma 4 stand-ins are: tokens, model configs, tokenizer corpus, chat template.

`service/tinymodels.py` builds checkpoints from this recipe; anything changed here changes the
recipe hash, so caches rebuild by themselves.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

TINY_VARIANTS: tuple[str, ...] = ("dense", "moe", "multimodal")

SEED = 20260402  # Gemma 4 release date; any constant works.

# Gemma 4's special tokens, in id order. The first five carry the real ids (so pad/eos/bos/unk
# checks written against the real tokenizer hold here too); the rest are packed after them because
# their real ids (up to ~258k) do not fit a 512-token vocab.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|think|>",
    '<|"|>',
    "<|tool_call>",
    "<tool_call|>",
    "<|tool>",
    "<tool|>",
    "<|tool_response>",
    "<tool_response|>",
    "<|image>",
    "<image|>",
    "<|image|>",
    "<|audio>",
    "<audio|>",
    "<|audio|>",
    "<|video|>",
)
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
TURN_END_ID = SPECIAL_TOKENS.index("<turn|>")

# Named attributes of the real tokenizer_config.json (tokenizer.sot_token, ...). Naming them also
# registers each as a special token, which vLLM checks before keeping <|channel>, <|tool_call>,
# <|"|> in output text for its gemma4 reasoning and tool parsers.
NAMED_SPECIAL_TOKENS: dict[str, str] = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "video_token": "<|video|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}

VOCAB_SIZE = 512

TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "vocab_size_per_layer_input": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    # Six layers give the default 5:1 sliding/global pattern of the real models without
    # transformers having to force the last layer to global attention.
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # vLLM's CPU attention kernels take head sizes of 32 and up (16 fails at the first forward);
    # global layers keep the real models' doubled head size.
    "head_dim": 32,
    "global_head_dim": 64,
    "num_global_key_value_heads": 1,
    "attention_k_eq_v": True,
    "sliding_window": 16,
    "max_position_embeddings": 4096,
    "hidden_size_per_layer_input": 0,
    "final_logit_softcapping": 30.0,
    "tie_word_embeddings": True,
    "bos_token_id": BOS_ID,
    "eos_token_id": [EOS_ID, TURN_END_ID],
    "pad_token_id": PAD_ID,
}

VARIANT_CONFIG: dict[str, dict[str, Any]] = {
    "dense": {},
    "moe": {
        "enable_moe_block": True,
        "num_experts": 8,
        "top_k_experts": 2,
        "moe_intermediate_size": 32,
    },
    "multimodal": {},
}

# The real towers' layout at toy sizes. Head sizes of 32 and up, as vLLM's CPU kernels need.
VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 1024,
    # Soft tokens per image, as the real processor's default max_soft_tokens; vLLM reads it
    # from here (gemma4_mm.py), and Gemma4VisionConfig does not save it unless set.
    "default_output_length": 280,
}
AUDIO_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    # The first must be 128, the feature extractor's mel bins: transformers sizes the
    # subsampler's projection from it (modeling_gemma4.py, Gemma4AudioSubSampleConvProjection).
    "subsampling_conv_channels": [128, 8],
    "output_proj_dims": 64,
}
# As the real processor_config.json: 280 soft tokens per image, up to 750 per audio clip
# (30 s at 40 ms each).
PROCESSOR_CONFIG: dict[str, Any] = {
    "image_seq_length": 280,
    "audio_seq_length": 750,
    "audio_ms_per_token": 40,
}

# Real checkpoints ship bf16 weights; matching that exercises the same dtype path in vLLM.
DTYPE = "bfloat16"

# In tiny_chat_template.jinja, written for this project. Its output follows the official Gemma 4
# template as shipped in vllm-project/vllm examples/tool_chat_template_gemma4.jinja (the 26B/31B
# flavour, which closes an empty thought channel after the generation prompt when thinking is
# off); legacy branches (Gemma-native `tool_responses`, `response` declarations) are left out.
CHAT_TEMPLATE = files("service").joinpath("tiny_chat_template.jinja").read_text().strip()

# Enough varied English for a 512-token BPE to learn common words and word pieces. Kept here, in the
# recipe, so the tokenizer, and hence the checkpoint bytes, depend on nothing outside it.
CORPUS: tuple[str, ...] = (
    "The weather in Paris is mild today, with a light breeze from the west and a few clouds over "
    "the river. Tomorrow it will be warmer, and the afternoon should be sunny until about six.",
    "You are a helpful assistant. Answer the question briefly and clearly. If you do not know the "
    "answer, say that you do not know, and suggest where the user could look for more information.",
    "To make a simple soup, cut two onions, three carrots and a potato into small pieces. Cook "
    "them in a little oil for five minutes, add one litre of water and some salt, and let it boil "
    "for twenty minutes before you serve it with fresh bread.",
    "The service receives a request, checks the model name and the length of the prompt, and then "
    "sends it to one of the replicas. Each replica runs the language model on its own accelerator "
    "and streams the generated tokens back to the client as soon as they are ready.",
    "Hello! How are you? I am fine, thank you. What would you like to do this weekend? We could "
    "walk in the park, read a good book, or visit the old museum near the station.",
    "Call the function get_weather with the city name and the unit of temperature. The tool "
    "returns a small object with the temperature, the humidity and a short description of the sky.",
    "Numbers and dates matter: 1, 2, 3, 10, 42, 100, 2026-04-02, 3.14, and 99 percent. Lists use "
    'commas; code uses brackets, braces and quotes such as [a, b], {key: value} and "text".',
    "A long time ago, in a small town by the sea, there lived an old fisherman who told stories to "
    "the children every evening. They listened, laughed and asked him to tell one more.",
)

TOKENIZER_SPEC: dict[str, Any] = {
    "kind": "byte-level-bpe",
    "vocab_size": VOCAB_SIZE,
    "min_frequency": 2,
    "special_tokens": list(SPECIAL_TOKENS),
    "named_special_tokens": NAMED_SPECIAL_TOKENS,
    "corpus": list(CORPUS),
    "chat_template": CHAT_TEMPLATE,
}
