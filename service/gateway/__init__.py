"""The gateway ingress: validates OpenAI requests, picks the pool, streams the answer back."""
