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

All share one small byte-level BPE tokenizer trained on an embedded corpus.
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

__all__ = ["TINY_VARIANTS", "build_tiny_checkpoints", "tiny_checkpoint_path"]

TINY_VARIANTS: tuple[str, ...] = ("dense", "moe", "multimodal")

# Bump when anything below changes in a way the hash cannot see (e.g. the build code itself).
_RECIPE_VERSION = 2
_MARKER = ".gemma-serve-tiny.json"
_LOCK = ".gemma-serve-tiny.lock"
_SEED = 20260402  # Gemma 4 release date; any constant works.

# Gemma 4's special tokens, in id order. The first five carry the real ids (so pad/eos/bos/unk
# checks written against the real tokenizer hold here too); the rest are packed after them because
# their real ids (up to ~258k) do not fit a 512-token vocab.
_SPECIAL_TOKENS: tuple[str, ...] = (
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
_PAD_ID, _EOS_ID, _BOS_ID = 0, 1, 2
_TURN_END_ID = _SPECIAL_TOKENS.index("<turn|>")

# Named attributes of the real tokenizer_config.json (tokenizer.sot_token, ...). Naming them also
# registers each as a special token, which vLLM checks before keeping <|channel>, <|tool_call>,
# <|"|> in output text for its gemma4 reasoning and tool parsers.
_NAMED_SPECIAL_TOKENS: dict[str, str] = {
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

_VOCAB_SIZE = 512

_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": _VOCAB_SIZE,
    "vocab_size_per_layer_input": _VOCAB_SIZE,
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
    "bos_token_id": _BOS_ID,
    "eos_token_id": [_EOS_ID, _TURN_END_ID],
    "pad_token_id": _PAD_ID,
}

_VARIANT_CONFIG: dict[str, dict[str, Any]] = {
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
_VISION_CONFIG: dict[str, Any] = {
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
_AUDIO_CONFIG: dict[str, Any] = {
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
_PROCESSOR_CONFIG: dict[str, Any] = {
    "image_seq_length": 280,
    "audio_seq_length": 750,
    "audio_ms_per_token": 40,
}

# Real checkpoints ship bf16 weights; matching that exercises the same dtype path in vLLM.
_DTYPE = "bfloat16"

# Written for this module. Its output follows the official Gemma 4 template as shipped in
# vllm-project/vllm examples/tool_chat_template_gemma4.jinja (the 26B/31B flavour, which closes an
# empty thought channel after the generation prompt when thinking is off); legacy branches
# (Gemma-native `tool_responses`, `response` declarations) are left out.
_CHAT_TEMPLATE = r"""
{%- macro render_value(value, quote_keys) -%}
  {%- if value is string -%}
    {{- '<|"|>' ~ value ~ '<|"|>' -}}
  {%- elif value is boolean -%}
    {{- 'true' if value else 'false' -}}
  {%- elif value is mapping -%}
    {%- set ns = namespace(items=[]) -%}
    {%- for k, v in value | dictsort -%}
      {%- set key = ('<|"|>' ~ k ~ '<|"|>') if quote_keys else k -%}
      {%- set ns.items = ns.items + [key ~ ':' ~ render_value(v, quote_keys)] -%}
    {%- endfor -%}
    {{- '{' ~ ns.items | join(',') ~ '}' -}}
  {%- elif value is sequence -%}
    {%- set ns = namespace(items=[]) -%}
    {%- for v in value -%}
      {%- set ns.items = ns.items + [render_value(v, quote_keys)] -%}
    {%- endfor -%}
    {{- '[' ~ ns.items | join(',') ~ ']' -}}
  {%- else -%}
    {{- value -}}
  {%- endif -%}
{%- endmacro -%}

{%- macro quoted_list(values) -%}
  {%- set ns = namespace(items=[]) -%}
  {%- for v in values -%}
    {%- set ns.items = ns.items + ['<|"|>' ~ v ~ '<|"|>'] -%}
  {%- endfor -%}
  {{- '[' ~ ns.items | join(',') ~ ']' -}}
{%- endmacro -%}

{#- JSON-schema properties as `name:{description:..,type:<|"|>STRING<|"|>},...`, keys sorted. -#}
{%- macro schema_properties(properties, skip_schema_keys) -%}
  {%- set schema_keys = ['description', 'type', 'properties', 'required', 'nullable'] -%}
  {%- set ns = namespace(props=[]) -%}
  {%- for name, schema in properties | dictsort -%}
  {%- if not (skip_schema_keys and name in schema_keys) -%}
    {%- set kind = schema['type'] | upper -%}
    {%- set f = namespace(fields=[]) -%}
    {%- if schema['description'] -%}
      {%- set f.fields = f.fields
            + ['description:<|"|>' ~ schema['description'] ~ '<|"|>'] -%}
    {%- endif -%}
    {%- if kind == 'STRING' and schema['enum'] -%}
      {%- set f.fields = f.fields + ['enum:' ~ render_value(schema['enum'], true)] -%}
    {%- elif kind == 'ARRAY' and schema['items'] is mapping and schema['items'] -%}
      {%- set it = namespace(fields=[]) -%}
      {%- for key, val in schema['items'] | dictsort if val is not none -%}
        {%- if key == 'properties' -%}
          {%- set nested = schema_properties(val, false) if val is mapping else '' -%}
          {%- set it.fields = it.fields + ['properties:{' ~ nested ~ '}'] -%}
        {%- elif key == 'required' -%}
          {%- set it.fields = it.fields + ['required:' ~ quoted_list(val)] -%}
        {%- elif key == 'type' -%}
          {%- set upper = val | upper if val is string else val | map('upper') | list -%}
          {%- set it.fields = it.fields + ['type:' ~ render_value(upper, true)] -%}
        {%- else -%}
          {%- set it.fields = it.fields + [key ~ ':' ~ render_value(val, true)] -%}
        {%- endif -%}
      {%- endfor -%}
      {%- set f.fields = f.fields + ['items:{' ~ it.fields | join(',') ~ '}'] -%}
    {%- endif -%}
    {%- if schema['nullable'] -%}
      {%- set f.fields = f.fields + ['nullable:true'] -%}
    {%- endif -%}
    {%- if kind == 'OBJECT' -%}
      {%- if schema['properties'] is defined and schema['properties'] is mapping -%}
        {%- set nested = schema_properties(schema['properties'], false) -%}
      {%- else -%}
        {%- set nested = schema_properties(schema, true) -%}
      {%- endif -%}
      {%- set f.fields = f.fields + ['properties:{' ~ nested ~ '}'] -%}
      {%- if schema['required'] -%}
        {%- set f.fields = f.fields + ['required:' ~ quoted_list(schema['required'])] -%}
      {%- endif -%}
    {%- endif -%}
    {%- set f.fields = f.fields + ['type:<|"|>' ~ kind ~ '<|"|>'] -%}
    {%- set ns.props = ns.props + [name ~ ':{' ~ f.fields | join(',') ~ '}'] -%}
  {%- endif -%}
  {%- endfor -%}
  {{- ns.props | join(',') -}}
{%- endmacro -%}

{%- macro tool_declaration(tool) -%}
  {%- set fn = tool['function'] -%}
  {%- set f = namespace(fields=['description:<|"|>' ~ (fn['description'] or '') ~ '<|"|>']) -%}
  {%- set params = fn['parameters'] -%}
  {%- if params -%}
    {%- set p = namespace(fields=[]) -%}
    {%- if params['properties'] -%}
      {%- set nested = schema_properties(params['properties'], false) -%}
      {%- set p.fields = p.fields + ['properties:{' ~ nested ~ '}'] -%}
    {%- endif -%}
    {%- if params['required'] -%}
      {%- set p.fields = p.fields + ['required:' ~ quoted_list(params['required'])] -%}
    {%- endif -%}
    {%- if params['type'] -%}
      {%- set p.fields = p.fields + ['type:<|"|>' ~ params['type'] | upper ~ '<|"|>'] -%}
    {%- endif -%}
    {%- set f.fields = f.fields + ['parameters:{' ~ p.fields | join(',') ~ '}'] -%}
  {%- endif -%}
  {{- '<|tool>declaration:' ~ fn['name'] ~ '{' ~ f.fields | join(',') ~ '}<tool|>' -}}
{%- endmacro -%}

{%- macro tool_response(name, response) -%}
  {%- if response is mapping -%}
    {%- set ns = namespace(items=[]) -%}
    {%- for k, v in response | dictsort -%}
      {%- set ns.items = ns.items + [k ~ ':' ~ render_value(v, false)] -%}
    {%- endfor -%}
    {%- set body = ns.items | join(',') -%}
  {%- else -%}
    {%- set body = 'value:' ~ render_value(response, false) -%}
  {%- endif -%}
  {{- '<|tool_response>response:' ~ name ~ '{' ~ body ~ '}<tool_response|>' -}}
{%- endmacro -%}

{#- Earlier reasoning is dropped from history: keep what is outside <|channel>..<channel|>. -#}
{%- macro strip_thinking(text) -%}
  {%- set ns = namespace(out='') -%}
  {%- for part in text.split('<channel|>') -%}
    {%- set ns.out = ns.out ~ part.split('<|channel>')[0] -%}
  {%- endfor -%}
  {{- ns.out | trim -}}
{%- endmacro -%}

{%- macro render_content(content, is_model) -%}
  {%- if content is string -%}
    {{- strip_thinking(content) if is_model else content | trim -}}
  {%- elif content is sequence -%}
    {%- for part in content -%}
      {%- if part['type'] == 'text' -%}
        {{- strip_thinking(part['text']) if is_model else part['text'] | trim -}}
      {%- elif part['type'] in ['image', 'image_url'] -%}
        {{- '<|image|>' -}}
      {%- elif part['type'] in ['audio', 'input_audio', 'audio_url'] -%}
        {{- '<|audio|>' -}}
      {%- elif part['type'] in ['video', 'video_url'] -%}
        {{- '<|video|>' -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}

{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- set loop_messages = messages -%}
{{- bos_token -}}
{%- if thinking or tools or messages[0]['role'] in ['system', 'developer'] -%}
  {{- '<|turn>system\n' -}}
  {%- if thinking -%}
    {{- '<|think|>\n' -}}
  {%- endif -%}
  {%- if messages[0]['role'] in ['system', 'developer'] -%}
    {%- set system = messages[0]['content'] -%}
    {%- if system is string -%}
      {{- system | trim -}}
    {%- else -%}
      {#- Each part is followed by a space, as in the official template. -#}
      {%- for part in system if part['type'] == 'text' -%}
        {{- part['text'] | trim ~ ' ' -}}
      {%- endfor -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
  {%- endif -%}
  {%- for tool in tools or [] -%}
    {{- tool_declaration(tool) -}}
  {%- endfor -%}
  {{- '<turn|>\n' -}}
{%- endif -%}

{%- set scan = namespace(last_user=-1) -%}
{%- for m in loop_messages -%}
  {%- if m['role'] == 'user' -%}
    {%- set scan.last_user = loop.index0 -%}
  {%- endif -%}
{%- endfor -%}

{#- Tool results are rendered inside the model turn that called them, so `tool` messages are
    consumed by the forward scan below rather than rendered as turns of their own. -#}
{%- set state = namespace(last='') -%}
{%- for message in loop_messages -%}
{%- if message['role'] != 'tool' -%}
  {%- set i = loop.index0 -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {%- set prev = namespace(role=none) -%}
  {%- for j in range(i) if loop_messages[j]['role'] != 'tool' -%}
    {%- set prev.role = loop_messages[j]['role'] -%}
  {%- endfor -%}
  {#- An assistant message right after an assistant tool-call turn continues that turn. -#}
  {%- if not (role == 'model' and prev.role == 'assistant') -%}
    {{- '<|turn>' ~ role ~ '\n' -}}
  {%- endif -%}
  {%- set reasoning = message.get('reasoning') or message.get('reasoning_content') -%}
  {%- if reasoning and i > scan.last_user and message.get('tool_calls') -%}
    {{- '<|channel>thought\n' ~ reasoning ~ '\n<channel|>' -}}
  {%- endif -%}
  {%- for call in message.get('tool_calls') or [] -%}
    {%- set fn = call['function'] -%}
    {%- if fn['arguments'] is mapping -%}
      {%- set a = namespace(items=[]) -%}
      {%- for k, v in fn['arguments'] | dictsort -%}
        {%- set a.items = a.items + [k ~ ':' ~ render_value(v, false)] -%}
      {%- endfor -%}
      {%- set args = a.items | join(',') -%}
    {%- else -%}
      {%- set args = fn['arguments'] or '' -%}
    {%- endif -%}
    {{- '<|tool_call>call:' ~ fn['name'] ~ '{' ~ args ~ '}<tool_call|>' -}}
  {%- endfor -%}
  {%- set resp = namespace(any=false, stopped=false) -%}
  {%- if message.get('tool_calls') -%}
    {%- for k in range(i + 1, loop_messages | length) -%}
      {%- if resp.stopped or loop_messages[k]['role'] != 'tool' -%}
        {%- set resp.stopped = true -%}
      {%- else -%}
        {%- set result = loop_messages[k] -%}
        {%- set t = namespace(name=result.get('name') or 'unknown') -%}
        {%- for call in message['tool_calls'] -%}
          {%- if call.get('id') and call.get('id') == result.get('tool_call_id') -%}
            {%- set t.name = call['function']['name'] -%}
          {%- endif -%}
        {%- endfor -%}
        {%- set body = result.get('content') -%}
        {%- if body is sequence and body is not string and body is not mapping -%}
          {%- set txt = namespace(s='') -%}
          {%- for part in body if part['type'] == 'text' -%}
            {%- set txt.s = txt.s ~ part['text'] -%}
          {%- endfor -%}
          {%- set body = txt.s -%}
        {%- endif -%}
        {{- tool_response(t.name, body) -}}
        {%- set resp.any = true -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- set content = render_content(message['content'], role == 'model') -%}
  {{- content -}}
  {%- if message.get('tool_calls') and not resp.any -%}
    {#- A pending call: the prompt ends where the tool's answer goes. -#}
    {{- '<|tool_response>' -}}
    {%- set state.last = 'tool_call' -%}
  {%- else -%}
    {%- if not (resp.any and not content | trim) -%}
      {{- '<turn|>\n' -}}
    {%- endif -%}
    {%- set state.last = 'tool_response' if resp.any else 'text' -%}
  {%- endif -%}
{%- endif -%}
{%- endfor -%}

{%- if add_generation_prompt and state.last not in ['tool_call', 'tool_response'] -%}
  {{- '<|turn>model\n' -}}
  {%- if not thinking -%}
    {{- '<|channel>thought\n<channel|>' -}}
  {%- endif -%}
{%- endif -%}
""".strip()

# Enough varied English for a 512-token BPE to learn common words and word pieces. Embedded (not
# read from disk) so the tokenizer, and hence the checkpoint bytes, depend on nothing outside
# this file.
_CORPUS: tuple[str, ...] = (
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

_TOKENIZER_SPEC: dict[str, Any] = {
    "kind": "byte-level-bpe",
    "vocab_size": _VOCAB_SIZE,
    "min_frequency": 2,
    "special_tokens": list(_SPECIAL_TOKENS),
    "named_special_tokens": _NAMED_SPECIAL_TOKENS,
    "corpus": list(_CORPUS),
    "chat_template": _CHAT_TEMPLATE,
}


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
    recipe = {
        "recipe_version": _RECIPE_VERSION,
        "variant": variant,
        "seed": _SEED,
        "dtype": _DTYPE,
        "text_config": {**_TEXT_CONFIG, **_VARIANT_CONFIG[variant]},
        "tokenizer": _TOKENIZER_SPEC,
        "libraries": _library_versions(),
    }
    if variant == "multimodal":
        recipe |= {"vision": _VISION_CONFIG, "audio": _AUDIO_CONFIG, "processor": _PROCESSOR_CONFIG}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


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
        vocab_size=_TOKENIZER_SPEC["vocab_size"],
        min_frequency=_TOKENIZER_SPEC["min_frequency"],
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    # Plain encode() prepends <bos> like the real GemmaTokenizer (add_bos_token=True). Chat
    # prompts get their <bos> from the template instead: vLLM and transformers tokenize
    # templated prompts with add_special_tokens=False, so it is not doubled.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", _BOS_ID)],
    )
    for token_id, token in enumerate(_SPECIAL_TOKENS):
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
        extra_special_tokens=dict(_NAMED_SPECIAL_TOKENS),
        padding_side="left",
        chat_template=_CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(directory)


def _save_model(variant: str, directory: Path) -> None:
    import torch
    from transformers import GenerationConfig

    model_cls, config = _model_config(variant)
    # Seed a forked RNG so building is reproducible without touching the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = model_cls(config).to(getattr(torch, _DTYPE)).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=_BOS_ID,
        eos_token_id=[_EOS_ID, _TURN_END_ID],
        pad_token_id=_PAD_ID,
    )
    model.save_pretrained(directory)


def _model_config(variant: str) -> tuple[Any, Any]:
    from transformers import (
        Gemma4Config,
        Gemma4ForCausalLM,
        Gemma4ForConditionalGeneration,
        Gemma4TextConfig,
    )

    text = Gemma4TextConfig(**_TEXT_CONFIG, **_VARIANT_CONFIG[variant])
    if variant != "multimodal":
        return Gemma4ForCausalLM, text
    token_ids = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    config = Gemma4Config(
        text_config=text.to_dict(),
        vision_config=_VISION_CONFIG,
        audio_config=_AUDIO_CONFIG,
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
        **_PROCESSOR_CONFIG,
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
