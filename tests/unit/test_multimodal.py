"""Media in chat requests is checked offline, and every refusal names the part's JSON path."""

import base64
import io
import struct
import wave
import zlib

import pytest

from service.catalog import VISUAL, WITH_AUDIO, Modality
from service.errors import InvalidRequest, PayloadTooLarge
from service.gateway.multimodal import (
    MediaSummary,
    check_pool_accepts,
    inspect_messages,
)
from service.settings import MediaSettings

DEFAULT = MediaSettings()


def png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_head() -> bytes:
    # SOI + a JFIF APP0 segment + EOI: the leading bytes are all the check looks at.
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0 + b"\xff\xd9"


def wav_silence() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x00" * 160)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{b64(data)}"


def user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


def text(value="describe this") -> dict:
    return {"type": "text", "text": value}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def input_audio(data: str, audio_format="wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": audio_format}}


PNG_URL = data_url("image/png", png_1x1())


def refusal(messages, limits=DEFAULT, error=InvalidRequest):
    with pytest.raises(error) as caught:
        inspect_messages(messages, limits)
    return caught.value


# What is counted


def test_plain_text_only_has_the_text_modality():
    summary = inspect_messages([{"role": "user", "content": "hi"}], DEFAULT)
    assert summary.counts == {Modality.TEXT: 1}
    assert summary.modalities == {Modality.TEXT}


def test_text_is_present_with_a_zero_count_when_no_message_has_text():
    summary = inspect_messages([{"role": "assistant", "content": None, "tool_calls": []}], DEFAULT)
    assert summary.counts == {Modality.TEXT: 0}
    assert summary.modalities == {Modality.TEXT}


def test_image_data_url_is_counted():
    summary = inspect_messages([user(text(), image(PNG_URL), image(PNG_URL))], DEFAULT)
    assert summary.counts == {Modality.TEXT: 1, Modality.IMAGE: 2}
    assert summary.modalities == {Modality.TEXT, Modality.IMAGE}


def test_jpeg_data_url_is_accepted():
    summary = inspect_messages([user(image(data_url("image/jpeg", jpeg_head())))], DEFAULT)
    assert summary.counts[Modality.IMAGE] == 1


def test_image_url_given_as_a_string_is_accepted():
    part = {"type": "image_url", "image_url": PNG_URL}
    assert inspect_messages([user(part)], DEFAULT).counts[Modality.IMAGE] == 1


def test_part_without_type_is_read_by_its_media_key_as_vllm_does():
    assert inspect_messages([user({"image_url": PNG_URL})], DEFAULT).counts[Modality.IMAGE] == 1


def test_input_audio_wav_is_counted_as_audio():
    summary = inspect_messages([user(input_audio(b64(wav_silence())))], DEFAULT)
    assert summary.counts == {Modality.TEXT: 0, Modality.AUDIO: 1}
    assert summary.modalities == {Modality.TEXT, Modality.AUDIO}


def test_audio_url_and_video_url_data_urls_are_counted():
    parts = [
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", wav_silence())}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", b"\0\0\0\x18ftypmp42")}},
    ]
    summary = inspect_messages([user(*parts)], DEFAULT)
    assert summary.modalities == {Modality.TEXT, Modality.AUDIO, Modality.VIDEO}


def test_unknown_subtype_is_accepted_when_the_family_matches():
    summary = inspect_messages([user(image(data_url("image/bmp", b"BM not checked")))], DEFAULT)
    assert summary.counts[Modality.IMAGE] == 1


# URLs


def test_remote_url_is_refused_by_default():
    err = refusal([user(text(), image("https://example.com/cat.png"))])
    assert err.status == 400
    assert "remote URLs are disabled" in err.message and "data: URL" in err.message
    assert err.param == "messages[0].content[1].image_url.url"


def test_remote_url_is_accepted_when_allowed():
    limits = MediaSettings(allow_remote_urls=True)
    summary = inspect_messages([user(image("https://example.com/cat.png"))], limits)
    assert summary.counts[Modality.IMAGE] == 1


def test_file_url_is_refused_even_when_remote_urls_are_allowed():
    err = refusal([user(image("file:///etc/passwd"))], MediaSettings(allow_remote_urls=True))
    assert "unsupported URL scheme 'file'" in err.message
    assert err.param == "messages[0].content[0].image_url.url"


def test_bare_base64_without_a_data_prefix_is_not_a_url():
    err = refusal([user(image(b64(png_1x1())))])
    assert "is not a URL" in err.message and "data: URL" in err.message


# Data URLs


def test_bad_base64_is_refused():
    err = refusal([user(image("data:image/png;base64,iVBO!!not*base64"))])
    assert err.message == "messages[0].content[0].image_url.url is not valid base64"
    assert err.param == "messages[0].content[0].image_url.url"


def test_data_url_that_is_not_base64_encoded_is_refused():
    err = refusal([user(image("data:image/png,%89PNG"))])
    assert "is not a base64 data: URL" in err.message


def test_data_url_without_a_comma_is_malformed():
    err = refusal([user(image("data:image/png;base64"))])
    assert "malformed data: URL" in err.message


def test_media_type_of_another_kind_is_refused_for_the_part():
    err = refusal([{"role": "user", "content": "hi"}, user(image(data_url("audio/wav", b"x")))])
    assert err.message == (
        "messages[1].content[0].image_url.url has media type 'audio/wav'; "
        "image_url parts need image/*"
    )
    assert err.param == "messages[1].content[0].image_url.url"


def test_empty_payload_is_refused():
    err = refusal([user(image("data:image/png;base64,"))])
    assert err.message.endswith("is empty")


def test_declared_png_that_is_not_a_png_is_refused():
    err = refusal([user(image(data_url("image/png", jpeg_head())))])
    assert err.message == (
        "messages[0].content[0].image_url.url is declared image/png but is not a valid PNG"
    )


def test_input_audio_declared_wav_that_is_not_wav_is_refused():
    err = refusal([user(input_audio(b64(png_1x1()), "wav"))])
    assert "is not a valid WAV" in err.message
    assert err.param == "messages[0].content[0].input_audio.data"


# Sizes and counts


def test_decoded_size_over_the_limit_is_413_naming_the_path_and_both_sizes():
    limits = MediaSettings(max_image_bytes=len(png_1x1()) - 1)
    messages = [user(text()), user(text(), text(), image(PNG_URL))]
    err = refusal(messages, limits, PayloadTooLarge)
    assert err.status == 413
    assert err.param == "messages[1].content[2].image_url.url"
    assert err.message == (
        f"messages[1].content[2].image_url.url decodes to {len(png_1x1())} bytes; "
        f"the limit is {limits.max_image_bytes} bytes per image"
    )


@pytest.mark.parametrize("size", [66, 67, 68], ids=["no-padding", "two-pad", "one-pad"])
def test_payload_at_exactly_the_limit_is_accepted(size):
    payload = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)
    limits = MediaSettings(max_image_bytes=size)
    assert inspect_messages([user(image(data_url("image/png", payload)))], limits)


def test_oversized_payload_is_refused_before_it_is_decoded():
    # Not valid base64 either: only the size check, made from the length alone, can catch it.
    err = refusal(
        [user(image("data:image/png;base64," + "*" * 400))],
        MediaSettings(max_image_bytes=200),
        PayloadTooLarge,
    )
    assert "decodes to 300 bytes" in err.message


def test_audio_has_its_own_size_limit():
    limits = MediaSettings(max_image_bytes=10**9, max_audio_bytes=10)
    err = refusal([user(input_audio(b64(wav_silence())))], limits, PayloadTooLarge)
    assert "the limit is 10 bytes per audio clip" in err.message


def test_too_many_media_parts_are_refused_with_count_and_limit():
    messages = [user(image(PNG_URL), image(PNG_URL)), user(input_audio(b64(wav_silence())))]
    err = refusal(messages, MediaSettings(max_items_per_request=2))
    assert "3 media parts" in err.message and "at most 2" in err.message
    assert err.param == "messages[1].content[0]"


# Structure


def test_unknown_part_type_is_refused_naming_it():
    err = refusal([user(text(), {"type": "foo", "foo": {}})])
    assert err.message == (
        "unsupported content part type 'foo' at messages[0].content[1]; "
        "supported: text, refusal, image_url, input_audio, audio_url, video_url"
    )
    assert err.param == "messages[0].content[1]"


def test_missing_url_is_refused_naming_the_field():
    err = refusal([user({"type": "image_url", "image_url": {"detail": "auto"}})])
    assert err.message == "messages[0].content[0].image_url.url is missing"
    assert err.param == "messages[0].content[0].image_url.url"


def test_ill_typed_text_is_refused_naming_the_field():
    err = refusal([user({"type": "text", "text": 42})])
    assert err.message == "messages[0].content[0].text must be a string, not a number"


def test_unknown_image_detail_is_refused():
    part = {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "ultra"}}
    assert refusal([user(part)]).param == "messages[0].content[0].image_url.detail"


def test_input_audio_in_an_unsupported_format_is_refused():
    err = refusal([user(input_audio(b64(wav_silence()), "aiff"))])
    assert "format 'aiff' is not supported" in err.message
    assert "wav, mp3, flac, ogg, m4a, webm" in err.message
    assert err.param == "messages[0].content[0].input_audio.format"


# Pool acceptance


def summary_of(**counts) -> MediaSummary:
    return MediaSummary({Modality.TEXT: 1, **{Modality(k): n for k, n in counts.items()}})


def test_pool_without_audio_refuses_audio():
    with pytest.raises(InvalidRequest) as caught:
        check_pool_accepts(summary_of(audio=1), "gemma-4-31b-it", VISUAL, per_prompt_limit=4)
    assert caught.value.message == "'gemma-4-31b-it' does not accept audio input"


def test_pool_refuses_more_of_a_kind_than_its_per_prompt_limit():
    with pytest.raises(InvalidRequest) as caught:
        check_pool_accepts(summary_of(image=5), "gemma-4-e4b-it", WITH_AUDIO, per_prompt_limit=4)
    message = caught.value.message
    assert "image" in message and "5" in message and "at most 4" in message


def test_pool_accepts_what_it_takes_within_its_limit():
    check_pool_accepts(summary_of(image=4, audio=4), "gemma-4-e4b-it", WITH_AUDIO, 4)


def test_text_only_request_passes_a_text_only_pool():
    summary = inspect_messages([{"role": "user", "content": "hi"}], DEFAULT)
    check_pool_accepts(summary, "tiny", frozenset({Modality.TEXT}), per_prompt_limit=0)


def _refused(part: dict) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        inspect_messages([{"role": "user", "content": [part]}], DEFAULT)
    return err.value


def test_a_text_part_carrying_a_uuid_and_a_media_url_is_refused():
    # vLLM reads a part with a uuid as media whatever its type says, and fetches the URL.
    err = _refused(
        {"type": "text", "text": "x", "uuid": "u", "image_url": "http://169.254.169.254/latest"}
    )
    assert err.param == "messages[0].content[0].image_url"
    assert "unknown field 'image_url'" in err.message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "text", "text": "x", "uuid": "u"},
        {"type": "image_url", "image_url": {"url": "data:,"}, "video_url": "http://x/v.mp4"},
        {"type": "image_url", "image_url": {"url": "data:,", "fetch": "http://x/"}},
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav", "url": "x"}},
        {"image_url": "data:,", "text": "short form with a stray key"},
    ],
)
def test_a_part_with_a_field_its_type_does_not_have_is_refused(part):
    assert "unknown field" in _refused(part).message


def test_a_media_part_may_carry_a_uuid_for_caching():
    url = "data:image/png;base64," + base64.b64encode(png_1x1()).decode()
    summary = inspect_messages(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url},
                                       "uuid": "img-1"}]}],
        DEFAULT,
    )  # fmt: skip
    assert summary.counts[Modality.IMAGE] == 1


@pytest.mark.parametrize("uuid", ["", 7, "u" * 257])
def test_a_malformed_uuid_is_refused(uuid):
    url = "data:image/png;base64," + base64.b64encode(png_1x1()).decode()
    err = _refused({"type": "image_url", "image_url": {"url": url}, "uuid": uuid})
    assert err.param == "messages[0].content[0].uuid"
