"""The grammar benchmark's cases are what the gateway admits, each of the kind it claims."""

import json

from benchmarks.grammar_compile import cases, synthetic_vocab
from service.gateway.bounds import check_bounds
from service.settings import BoundsSettings


def test_every_grammar_case_passes_the_default_bounds():
    bounds = BoundsSettings()
    for name, (kind, spec) in cases(bounds).items():
        if kind == "json":
            body = {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": json.loads(spec)},
                }
            }
        else:
            body = {"structured_outputs": {"regex": spec}}  # fmt: skip
        check_bounds(body, bounds)  # raises InvalidRequest when over a bound
        assert len(spec) <= bounds.max_schema_bytes, name


def test_the_synthetic_vocabulary_is_unique_and_of_the_asked_size():
    vocab = synthetic_vocab(5000)
    assert len(vocab) == len(set(vocab)) == 5000
