"""The compile service a pool replica runs: worker processes that compile under a time limit,
a cache of what they compiled, and a local socket the replica's EngineCore asks through.

The replica asks first (`compile`), before a request reaches the engine, and answers 400 when
the verdict is `TooSlow`; the engine's ask for the same grammar is then a cache hit. Verdicts
of `TooSlow` are kept too, so a client repeating a costly schema is refused at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from typing import Any

from service.grammar import worker
from service.grammar.specs import GrammarSpec

log = logging.getLogger(__name__)

SOCKET_ENV = "GEMMA_SERVE_GRAMMAR_SOCKET"
AUTHKEY_ENV = "GEMMA_SERVE_GRAMMAR_AUTHKEY"
WORKERS = 2  # one costly schema does not hold up everyone else's
CACHE_BYTES = 256 * 2**20  # serialised grammars kept; a maxLength-100 string is ~14 MB
MAX_TOO_SLOW_KEPT = 4096
# Threads that wait for a worker: not the event loop's default executor, which a queue of
# slow compiles would otherwise fill.
WAITING_THREADS = 32
WORKER_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Compiled:
    blob: str  # CompiledGrammar.serialize_json()
    seconds: float


@dataclass(frozen=True)
class TooSlow:
    limit_s: float


@dataclass(frozen=True)
class Invalid:
    message: str


Verdict = Compiled | TooSlow | Invalid


def fingerprint(tokenizer_info_json: str) -> str:
    return hashlib.sha256(tokenizer_info_json.encode()).hexdigest()


class CompileWorker:
    """One child process; `compile` kills and replaces it when the limit passes."""

    def __init__(self, tokenizer_info_json: str, disable_any_whitespace: bool):
        self._args = (tokenizer_info_json, disable_any_whitespace)
        self._start()

    def _start(self) -> None:
        # spawn, as vLLM starts its own processes: a fork of a Ray worker is not safe.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=worker.serve, args=(child_conn, *self._args), daemon=True
        )
        self._process.start()
        child_conn.close()
        if not self._conn.poll(WORKER_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError("the grammar compile worker did not start")
        self._conn.recv()

    def compile(self, grammar: GrammarSpec, limit_s: float) -> Verdict:
        started = time.monotonic()
        self._conn.send(grammar)
        if not self._conn.poll(limit_s):
            self.kill()
            self._start()
            return TooSlow(limit_s)
        status, payload = self._conn.recv()
        if status == "ok":
            return Compiled(payload, time.monotonic() - started)
        return Invalid(payload)

    def kill(self) -> None:
        self._process.kill()
        self._process.join(5)
        self._conn.close()


class GrammarCompileService:
    def __init__(self, limit_s: float, disable_any_whitespace: bool):
        self.limit_s = limit_s
        self._disable_any_whitespace = disable_any_whitespace
        self._idle: queue.Queue[CompileWorker] = queue.Queue()
        self._workers: list[CompileWorker] = []
        self._cache: OrderedDict[str, Compiled] = OrderedDict()
        self._cache_bytes = 0
        self._too_slow: OrderedDict[str, TooSlow] = OrderedDict()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._fingerprint: str | None = None
        self._authkey = secrets.token_bytes(32)
        self._dir = tempfile.mkdtemp(prefix="gemma-serve-grammar-")
        self._address = os.path.join(self._dir, "compile.sock")
        self._listener: Listener | None = None
        self._waiting = ThreadPoolExecutor(WAITING_THREADS, thread_name_prefix="grammar")

    def listen(self) -> dict[str, str]:
        """Opens the socket; returns the environment the engine process needs to find it."""
        self._listener = Listener(self._address, family="AF_UNIX", authkey=self._authkey)
        threading.Thread(target=self._accept, name="grammar-listener", daemon=True).start()
        return {SOCKET_ENV: self._address, AUTHKEY_ENV: self._authkey.hex()}

    def start(self, tokenizer_info_json: str) -> None:
        """Starts the workers with the engine's own vocabulary (blocking: call off the loop)."""
        self._fingerprint = fingerprint(tokenizer_info_json)
        for _ in range(WORKERS):
            compile_worker = CompileWorker(tokenizer_info_json, self._disable_any_whitespace)
            self._workers.append(compile_worker)
            self._idle.put(compile_worker)
        self._ready.set()

    async def verdict(self, grammar: GrammarSpec) -> Verdict:
        """`compile` for the event loop: a cached verdict at once, else off the loop."""
        if (hit := self._cached(grammar.key)) is not None:
            return hit
        return await asyncio.get_running_loop().run_in_executor(
            self._waiting, self.compile, grammar
        )

    def compile(self, grammar: GrammarSpec) -> Verdict:
        """Blocking; waits for an idle worker (the wait is not part of the limit)."""
        key = grammar.key
        if (hit := self._cached(key)) is not None:
            return hit
        if not self._ready.wait(WORKER_START_TIMEOUT_S):
            raise RuntimeError("the grammar compile workers are not running")
        compile_worker = self._idle.get()
        try:
            verdict = compile_worker.compile(grammar, self.limit_s)
        finally:
            self._idle.put(compile_worker)
        self._remember(key, verdict)
        if isinstance(verdict, TooSlow):
            log.warning("grammar refused: compile ran past %.1f s (%s)", self.limit_s, key[:12])
        return verdict

    def _cached(self, key: str) -> Verdict | None:
        with self._lock:
            if (hit := self._cache.get(key) or self._too_slow.get(key)) is not None:
                (self._cache if isinstance(hit, Compiled) else self._too_slow).move_to_end(key)
            return hit

    def _remember(self, key: str, verdict: Verdict) -> None:
        with self._lock:
            if isinstance(verdict, TooSlow):
                self._too_slow[key] = verdict
                while len(self._too_slow) > MAX_TOO_SLOW_KEPT:
                    self._too_slow.popitem(last=False)
            elif isinstance(verdict, Compiled) and len(verdict.blob) <= CACHE_BYTES:
                if (old := self._cache.pop(key, None)) is not None:
                    self._cache_bytes -= len(old.blob)
                self._cache[key] = verdict
                self._cache_bytes += len(verdict.blob)
                while self._cache_bytes > CACHE_BYTES:
                    self._cache_bytes -= len(self._cache.popitem(last=False)[1].blob)

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn = listener.accept()
            except OSError:
                return  # closed
            except Exception:  # a peer without the key
                log.warning("grammar socket: refused a connection", exc_info=True)
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Connection) -> None:
        """One engine request per connection: ("hello", fingerprint) or ("compile", spec)."""
        with conn:
            try:
                what, payload = conn.recv()
                if what == "hello":
                    self._ready.wait(WORKER_START_TIMEOUT_S)
                    conn.send(payload == self._fingerprint)
                elif what == "compile":
                    conn.send(self.compile(payload))
            except (EOFError, OSError):
                pass
            except Exception as error:
                log.exception("grammar socket: request failed")
                conn.send(Invalid(f"{type(error).__name__}: {error}"))

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for compile_worker in self._workers:
            compile_worker.kill()
        self._waiting.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self._dir, ignore_errors=True)


def engine_tokenizer_info_json(engine_client: Any) -> str:
    """The TokenizerInfo vLLM's xgrammar backend builds in the engine process, from the same
    tokenizer and vocabulary size (vllm/v1/structured_output/__init__.py)."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(
        engine_client.get_tokenizer(), vocab_size=engine_client.model_config.get_vocab_size()
    )
    return info.serialize_json()
