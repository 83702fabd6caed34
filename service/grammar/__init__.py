"""Structured-output grammars compiled out of the engine, with a time limit.

vLLM compiles each request's grammar with xgrammar in a thread of the EngineCore process.
Counted repetition (`maxLength`, `maxItems`, `{m,n}`) makes that compile take seconds on a
Gemma-sized vocabulary while holding the GIL, which stalls every other request on the engine
(`make bench-grammar`). So each pool replica runs a compile service (`service.py`) with worker
processes (`worker.py`): the replica asks it before a request goes to the engine and answers
400 when the compile runs past `pools[].max_grammar_compile_s`; the engine, through a vLLM
plugin (`engine.py`), takes the compiled grammar from the same service instead of compiling it
itself, so the engine only deserialises (~40x cheaper than compiling).
"""
