"""Checks on the media in a chat request, made by the gateway before it routes the request.

Pure and offline: no URL is ever fetched. What is refused here the engine would refuse or
choke on later anyway; refusing it here names the part by its JSON path and spares a replica.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from service.catalog import Modality
from service.errors import InvalidRequest, PayloadTooLarge
from service.settings import MediaSettings

SUPPORTED_PART_TYPES = ("text", "refusal", "image_url", "input_audio", "audio_url", "video_url")
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "m4a", "webm")
IMAGE_DETAILS = ("auto", "low", "high")

_URL_PART_KINDS = {
    "image_url": Modality.IMAGE,
    "audio_url": Modality.AUDIO,
    "video_url": Modality.VIDEO,
}
_MEDIA_KINDS = (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)
_NOUNS = {Modality.IMAGE: "image", Modality.VIDEO: "video", Modality.AUDIO: "audio clip"}
_MAX_ECHO = 64  # client strings quoted back in messages are cut to this
_MAX_UUID_CHARS = 256
# The keys each part may carry. Nothing else passes: vLLM reads a part with a `uuid` as media
# whatever its `type` says, so an unchecked key could carry a URL past these checks.
_TEXT_KEYS = {"text": frozenset({"type", "text"}), "refusal": frozenset({"type", "refusal"})}
_MEDIA_PART_KEYS = frozenset({"type", "uuid"})
_MEDIA_VALUE_KEYS = {
    "image_url": frozenset({"url", "detail"}),
    "audio_url": frozenset({"url"}),
    "video_url": frozenset({"url"}),
    "input_audio": frozenset({"data", "format"}),
}


@dataclass(frozen=True)
class MediaSummary:
    counts: Mapping[Modality, int]  # TEXT always (may be 0), media kinds only when present
    # (JSON path, host) of each http(s) URL: resolved by the caller before the engine fetches.
    remote_hosts: tuple[tuple[str, str], ...] = ()

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, *(k for k, n in self.counts.items() if n > 0)})


def inspect_messages(messages: Sequence[Mapping[str, Any]], limits: MediaSettings) -> MediaSummary:
    """Validate every content part; raise InvalidRequest or PayloadTooLarge naming its path."""
    text_parts, media = _collect(messages)
    # Counted before any payload is decoded, so a request with 500 images costs nothing.
    if len(media) > limits.max_items_per_request:
        first_over = media[limits.max_items_per_request].part_path
        raise InvalidRequest(
            f"the request has {len(media)} media parts (images, audio and video together); "
            f"at most {limits.max_items_per_request} are allowed per request "
            f"(the first one over the limit is {first_over})",
            param=first_over,
        )
    counts: dict[Modality, int] = {Modality.TEXT: text_parts}
    remote_hosts = []
    for item in media:
        if (host := _check_payload(item, limits)) is not None:
            remote_hosts.append((item.path, host))
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return MediaSummary(MappingProxyType(counts), tuple(remote_hosts))


def check_pool_accepts(
    summary: MediaSummary, pool_id: str, accepted: frozenset[Modality], per_prompt_limit: int
) -> None:
    """Refuse media the pool's engine was not started for, or more of one kind than its
    limit_mm_per_prompt allows; only media kinds are checked, text always passes."""
    present = [k for k in _MEDIA_KINDS if summary.counts.get(k, 0) > 0]
    for kind in present:
        if kind not in accepted:
            raise InvalidRequest(f"'{pool_id}' does not accept {kind} input", param="messages")
    for kind in present:
        count = summary.counts[kind]
        if count > per_prompt_limit:
            raise InvalidRequest(
                f"'{pool_id}' accepts at most {per_prompt_limit} {_NOUNS[kind]}(s) per prompt; "
                f"the request has {count} {kind} parts",
                param="messages",
            )


@dataclass(frozen=True)
class _Media:
    part_path: str  # messages[i].content[j]
    path: str  # the field holding the URL or the base64 data
    part_type: str
    kind: Modality
    payload: str  # a URL; base64 data for input_audio
    audio_format: str | None = None  # input_audio only


def _collect(messages: Any) -> tuple[int, list[_Media]]:
    """Check the structure of every part (cheap) and gather the media parts."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidRequest("messages must be a list of messages", param="messages")
    text_parts = 0
    media: list[_Media] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"{path} must be an object", param=path)
        content = message.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            text_parts += 1
            continue
        if not isinstance(content, list | tuple):
            raise InvalidRequest(
                f"{path}.content must be a string, null or a list of content parts, "
                f"not {_json_type(content)}",
                param=f"{path}.content",
            )
        for j, part in enumerate(content):
            item = _parse_part(part, f"{path}.content[{j}]")
            if item is None:
                text_parts += 1
            else:
                media.append(item)
    return text_parts, media


def _parse_part(part: Any, path: str) -> _Media | None:
    """The media part, or None for a text part."""
    if isinstance(part, str):
        return None  # vLLM reads a bare string in a content list as text
    if not isinstance(part, Mapping):
        raise InvalidRequest(f"{path} must be an object, not {_json_type(part)}", param=path)
    part_type = part.get("type")
    if part_type is None:
        # vLLM's short form, e.g. {"image_url": "https://..."}: the key stands for the type.
        part_type = next((k for k in (*_URL_PART_KINDS, "input_audio") if k in part), None)
        if part_type is None:
            raise InvalidRequest(f"{path}.type is missing", param=f"{path}.type")
    if not isinstance(part_type, str):
        raise InvalidRequest(
            f"{path}.type must be a string, not {_json_type(part_type)}", param=f"{path}.type"
        )
    if part_type in _TEXT_KEYS:
        # A refusal part is assistant history an OpenAI client may replay: text to the model.
        _only_keys(part, _TEXT_KEYS[part_type], path)
        _require_str(part, part_type, path)
        return None
    if part_type not in _MEDIA_VALUE_KEYS:
        raise InvalidRequest(
            f"unsupported content part type '{_clip(part_type)}' at {path}; "
            f"supported: {', '.join(SUPPORTED_PART_TYPES)}",
            param=path,
        )
    _only_keys(part, _MEDIA_PART_KEYS | {part_type}, path)
    _check_uuid(part, path)
    if part_type == "input_audio":
        return _parse_input_audio(part, path)
    return _parse_url_part(part, part_type, path)


def _only_keys(obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise InvalidRequest(
            f"{path} has the unknown field '{_clip(unknown[0])}'; "
            f"this part may have only: {', '.join(sorted(allowed))}",
            param=f"{path}.{_clip(unknown[0])}",
        )


def _check_uuid(part: Mapping[str, Any], path: str) -> None:
    uuid = part.get("uuid")
    if uuid is None:
        return
    if not isinstance(uuid, str) or not 0 < len(uuid) <= _MAX_UUID_CHARS:
        raise InvalidRequest(
            f"{path}.uuid must be a string of 1 to {_MAX_UUID_CHARS} characters",
            param=f"{path}.uuid",
        )


def _parse_url_part(part: Mapping[str, Any], part_type: str, path: str) -> _Media:
    kind = _URL_PART_KINDS[part_type]
    field = f"{path}.{part_type}"
    value = part.get(part_type)
    if isinstance(value, str):  # vLLM also takes the URL itself in place of {"url": ...}
        return _Media(path, field, part_type, kind, value)
    if not isinstance(value, Mapping):
        problem = "is missing" if value is None else f"must be an object, not {_json_type(value)}"
        raise InvalidRequest(f"{field} {problem}", param=field)
    _only_keys(value, _MEDIA_VALUE_KEYS[part_type], field)
    url = _require_str(value, "url", field)
    if part_type == "image_url" and "detail" in value and value["detail"] not in IMAGE_DETAILS:
        raise InvalidRequest(
            f"{field}.detail must be one of {', '.join(IMAGE_DETAILS)}", param=f"{field}.detail"
        )
    return _Media(path, f"{field}.url", part_type, kind, url)


def _parse_input_audio(part: Mapping[str, Any], path: str) -> _Media:
    field = f"{path}.input_audio"
    value = part.get("input_audio")
    if not isinstance(value, Mapping):
        problem = "is missing" if value is None else f"must be an object, not {_json_type(value)}"
        raise InvalidRequest(f"{field} {problem}", param=field)
    _only_keys(value, _MEDIA_VALUE_KEYS["input_audio"], field)
    data = _require_str(value, "data", field)
    audio_format = _require_str(value, "format", field)
    if audio_format not in INPUT_AUDIO_FORMATS:
        raise InvalidRequest(
            f"{field}.format '{_clip(audio_format)}' is not supported; "
            f"use one of: {', '.join(INPUT_AUDIO_FORMATS)}",
            param=f"{field}.format",
        )
    return _Media(path, f"{field}.data", "input_audio", Modality.AUDIO, data, audio_format)


def _check_payload(item: _Media, limits: MediaSettings) -> str | None:
    """Checks the part's payload; returns the host of a remote URL."""
    if item.audio_format is not None:
        data = _decode(item.payload, item, limits)
        signature = _FORMAT_SIGNATURES.get(item.audio_format)
        _check_signature(data, signature, item, f"format '{item.audio_format}'")
    elif item.payload[:5].lower() == "data:":
        _check_data_url(item, limits)
    else:
        return _check_other_url(item, limits)
    return None


def _check_data_url(item: _Media, limits: MediaSettings) -> None:
    # RFC 2397, restricted as vLLM restricts it: data:<type>[;param=value]*;base64,<data>
    comma = item.payload.find(",", 5)
    if comma < 0:
        raise InvalidRequest(
            f"{item.path} is a malformed data: URL (no ',' before the data)", param=item.path
        )
    media_type, semicolon, encoding = item.payload[5:comma].rpartition(";")
    if not semicolon or encoding != "base64":
        raise InvalidRequest(
            f"{item.path} is not a base64 data: URL; use data:<media type>;base64,<data>",
            param=item.path,
        )
    media_type = media_type.partition(";")[0].strip().lower()
    family, _, subtype = media_type.partition("/")
    expected = item.kind.value  # the modality names are the media type families
    if family != expected or not subtype:
        raise InvalidRequest(
            f"{item.path} has media type '{_clip(media_type)}'; "
            f"{item.part_type} parts need {expected}/*",
            param=item.path,
        )
    decoded = _decode(item.payload, item, limits, start=comma + 1)
    _check_signature(decoded, _MEDIA_TYPE_SIGNATURES.get(media_type), item, media_type)


def _check_other_url(item: _Media, limits: MediaSettings) -> str:
    try:
        url = urlsplit(item.payload)
    except ValueError:
        raise InvalidRequest(f"{item.path} is not a valid URL", param=item.path) from None
    scheme = url.scheme.lower()
    inline = f"send the {_NOUNS[item.kind]} inline as a data: URL"
    if scheme in ("http", "https"):
        if not limits.allow_remote_urls:
            raise InvalidRequest(
                f"{item.path}: remote URLs are disabled on this server; {inline}",
                param=item.path,
            )
        host = (url.hostname or "").lower()
        if not host:
            raise InvalidRequest(f"{item.path} has no host", param=item.path)
        allowed = limits.allowed_remote_domains
        if allowed and host not in allowed:
            raise InvalidRequest(
                f"{item.path}: media from '{_clip(host)}' is not allowed on this server; "
                f"allowed hosts: {', '.join(allowed)}",
                param=item.path,
            )
        return host
    if not scheme:
        raise InvalidRequest(f"{item.path} is not a URL; {inline}", param=item.path)
    # file: would read the engine host's disk; others are not fetchable by vLLM at all.
    also = " or an http(s) URL" if limits.allow_remote_urls else ""
    raise InvalidRequest(
        f"{item.path} uses the unsupported URL scheme '{_clip(scheme)}'; {inline}{also}",
        param=item.path,
    )


def _decode(text: str, item: _Media, limits: MediaSettings, start: int = 0) -> bytes:
    """Decode the base64 in text[start:], refusing it by its length first if too large."""
    limit = limits.max_bytes(item.kind)
    # The size follows from the length, so an oversized payload is refused without decoding
    # it, or even copying it out of the URL.
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    size = max((len(text) - start) * 3 // 4 - padding, 0)
    if size > limit:
        raise PayloadTooLarge(
            f"{item.path} decodes to {size} bytes; the limit is {limit} bytes per "
            f"{_NOUNS[item.kind]}",
            param=item.path,
        )
    try:
        # validate=True as vLLM decodes: no whitespace, no URL-safe alphabet, padding required.
        decoded = base64.b64decode(text[start:] if start else text, validate=True)
    except ValueError:
        raise InvalidRequest(f"{item.path} is not valid base64", param=item.path) from None
    if not decoded:
        raise InvalidRequest(f"{item.path} is empty", param=item.path)
    return decoded


class _Signature(NamedTuple):
    name: str
    matches: Callable[[bytes], bool]


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda b: b[:4] == b"RIFF" and b[8:12] == form


def _is_mp3(b: bytes) -> bool:
    # An ID3 tag, or an MPEG audio frame sync whose layer bits are not 00 (00 is ADTS AAC).
    if b[:3] == b"ID3":
        return True
    return len(b) > 1 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0 and b[1] & 0x06 != 0


# Leading bytes only: enough to catch a mislabelled or truncated-at-the-start file; decoding
# is the engine's job. Media types not listed here are accepted on their family alone.
_PNG = _Signature("PNG", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n")
_JPEG = _Signature("JPEG", lambda b: b[:3] == b"\xff\xd8\xff")
_GIF = _Signature("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a"))
_WEBP = _Signature("WebP", _riff(b"WEBP"))
_WAV = _Signature("WAV", _riff(b"WAVE"))
_MP3 = _Signature("MP3", _is_mp3)
_FLAC = _Signature("FLAC", lambda b: b[:4] == b"fLaC")
_OGG = _Signature("Ogg", lambda b: b[:4] == b"OggS")

_MEDIA_TYPE_SIGNATURES = {
    "image/png": _PNG,
    "image/jpeg": _JPEG,
    "image/jpg": _JPEG,
    "image/gif": _GIF,
    "image/webp": _WEBP,
    "audio/wav": _WAV,
    "audio/wave": _WAV,
    "audio/x-wav": _WAV,
    "audio/vnd.wave": _WAV,
    "audio/mpeg": _MP3,
    "audio/mp3": _MP3,
    "audio/flac": _FLAC,
    "audio/x-flac": _FLAC,
    "audio/ogg": _OGG,
}
_FORMAT_SIGNATURES = {"wav": _WAV, "mp3": _MP3, "flac": _FLAC, "ogg": _OGG}


def _check_signature(
    data: bytes, signature: _Signature | None, item: _Media, declared: str
) -> None:
    if signature is not None and not signature.matches(data):
        raise InvalidRequest(
            f"{item.path} is declared {declared} but is not a valid {signature.name}",
            param=item.path,
        )


def _require_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    field = f"{path}.{key}"
    if value is None:
        raise InvalidRequest(f"{field} is missing", param=field)
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, not {_json_type(value)}", param=field)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."
