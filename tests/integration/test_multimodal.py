"""Images, audio and video through the whole stack to the tiny multimodal engine (gemma-4-e4b-it
on the embedded default), with the official OpenAI client."""

import base64
import io

import cv2
import numpy as np
import openai
import pytest
import soundfile
from PIL import Image
from transformers import AutoProcessor

from service import catalog, multimodal_compat
from tests.integration.conftest import DENSE, E4B, MOE

GREEDY = {"temperature": 0.0, "max_tokens": 8}
SAMPLE_RATE = 16000


def png(width: int, height: int, seed: int) -> Image.Image:
    # Blocks of random colour: distinct per seed, and small as PNG (the stack's image limit is
    # MAX_IMAGE_BYTES).
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((width, height), Image.NEAREST)


def image_part(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def audio_part(seconds: float, hz: float, sample_rate: int = SAMPLE_RATE) -> dict:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * hz * t), sample_rate, format="WAV")
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def video_part(tmp_path, frames: int = 8, fps: int = 4) -> dict:
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 64))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    writer.release()
    data = base64.b64encode((tmp_path / "clip.mp4").read_bytes()).decode()
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}}


def ask(client, *parts: dict, model: str = "gemma-4", **extra):
    content = [{"type": "text", "text": "What is this?"}, *parts]
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **GREEDY | extra
    )


def answer(client, *parts: dict, model: str = "gemma-4") -> tuple[str, int]:
    completion = ask(client, *parts, model=model).parse()
    return completion.choices[0].message.content, completion.usage.prompt_tokens


@pytest.fixture(scope="module")
def processor(stack):
    multimodal_compat.install()  # no torchvision here, as in the engines
    pool = stack.settings.pool(E4B)
    return AutoProcessor.from_pretrained(
        catalog.checkpoint_source(pool, stack.settings.resolved_cache_dir)
    )


def soft_tokens(processor, image: Image.Image) -> int:
    return int(processor.image_processor(images=[image])["num_soft_tokens_per_image"][0])


@pytest.mark.parametrize(
    ("make_part", "reason"),
    [
        (lambda tmp_path: image_part(png(64, 48, seed=1)), "modality:image"),
        (lambda tmp_path: audio_part(1.0, 440), "modality:audio"),
        (video_part, "modality:video"),
    ],
    ids=["image", "audio", "video"],
)
def test_media_on_the_alias_reach_the_pool_that_takes_them(client, tmp_path, make_part, reason):
    response = ask(client, make_part(tmp_path))
    completion = response.parse()
    assert (response.headers["x-routed-model"], response.headers["x-route-reason"]) == (E4B, reason)
    assert completion.model == E4B
    assert completion.usage.completion_tokens > 0


@pytest.mark.parametrize("pool", [MOE, DENSE])
def test_an_image_pinned_to_a_text_only_pool_is_400_naming_the_pool(client, pool):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, image_part(png(32, 32, seed=1)), model=pool)
    assert refused.value.code == "no_capable_model"
    assert f"the model '{pool}' does not accept image input" in refused.value.message


def test_audio_pinned_to_a_text_only_pool_is_400(client):
    with pytest.raises(openai.BadRequestError, match="does not accept audio input"):
        ask(client, audio_part(0.5, 440), model=DENSE)


def test_the_same_image_twice_gives_the_same_answer_and_another_image_another(client):
    first = answer(client, image_part(png(64, 64, seed=1)))
    again = answer(client, image_part(png(64, 64, seed=1)))
    other = answer(client, image_part(png(64, 64, seed=2)))
    assert first == again
    assert other[0] != first[0]


def test_the_same_clip_twice_gives_the_same_answer_and_another_clip_another(client):
    first = answer(client, audio_part(1.0, 440))
    assert answer(client, audio_part(1.0, 440)) == first
    assert answer(client, audio_part(1.0, 1760))[0] != first[0]


def test_prompt_tokens_grow_by_the_image_tokens_the_processor_computes(client, processor):
    _, text_only = answer(client, model=E4B)
    for image in (png(64, 64, seed=3), png(256, 32, seed=3), png(32, 256, seed=3)):
        _, with_image = answer(client, image_part(image))
        # An image adds <|image>, its soft tokens and <image|>.
        assert with_image - text_only == soft_tokens(processor, image) + 2


def test_two_images_cost_the_tokens_of_both(client, processor):
    wide, tall = png(256, 32, seed=4), png(32, 256, seed=4)
    _, one = answer(client, image_part(wide))
    _, both = answer(client, image_part(wide), image_part(tall))
    assert both - one == soft_tokens(processor, tall) + 2


def test_a_longer_clip_costs_more_prompt_tokens(client):
    _, short = answer(client, audio_part(1.0, 440))
    _, long = answer(client, audio_part(2.0, 440))
    assert long - short == 25  # 40 ms of audio a token


def test_a_clip_at_another_sample_rate_is_resampled(client):
    _, native = answer(client, audio_part(1.0, 440))
    _, resampled = answer(client, audio_part(1.0, 440, sample_rate=22050))
    assert resampled == native


def test_an_image_streams_to_the_end(client):
    content = [{"type": "text", "text": "Describe"}, image_part(png(48, 48, seed=5))]
    stream = client.chat.completions.create(
        model="gemma-4",
        messages=[{"role": "user", "content": content}],
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens > 48
    assert {c.model for c in chunks} == {E4B}
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
