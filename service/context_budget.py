"""Does prompt + max_tokens fit the pool's context?

vLLM clamps `max_tokens` silently when the prompt leaves less room; OpenAI's contract is a
400 naming both numbers. Counting a prompt exactly means templating and tokenizing it, so a
cheap upper bound goes first (service/request_size.py) and only requests near the limit are
counted.
"""

from __future__ import annotations


def overflow_message(
    max_model_len: int, prompt_tokens: int, max_tokens: int, prompt_name: str
) -> str:
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_name}, {max_tokens} "
        f"in the completion). Please reduce the length of the {prompt_name} or max_tokens."
    )
