"""`ouroboros serve-model`: the local model behind a small OpenAI-compatible endpoint.

The api agent (`--agent api:local`) talks to it through the openai SDK like to any other server:
POST /v1/chat/completions answers with `choices[0].message.content` and `usage` (prompt and
completion tokens counted by the model's own tokenizer); GET /v1/models lists the one model.

The runtime is transformers on the CPU torch (`pip install 'ouroboros[llm]'`): it reads the GGUF
through the `gguf` package and dequantizes it to float32 (about 7 GB of memory for the 1.5B model),
and uses the chat template stored in the GGUF. llama.cpp would be faster but its Python package is
source-only on PyPI and takes about 40 minutes to compile on 2 cores; this runtime installs in a minute.

One request is generated at a time (a lock); the others wait, and one whose client has hung up by
its turn is dropped. A prompt longer than the context,
a body that is not JSON, or messages that are not a list of {role, content} strings are answered
with a 400 and an OpenAI-style error object, never a crash. It listens on 127.0.0.1 unless told.
"""

from __future__ import annotations

import copy
import json
import os
import select
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ouroboros.errors import OuroborosError

DEFAULT_PORT = 8090
MAX_BODY = 1 << 20
ROLES = ("system", "user", "assistant")


class Model:
    """A tokenizer and a causal LM loaded from a GGUF file; `chat` answers one conversation."""

    def __init__(self, path: Path, threads: int, n_ctx: int, name: str = "local",
                 echo: Callable[[str], None] = print):
        try:
            import gguf  # noqa: F401 - transformers reads the GGUF through it
            import torch
            import transformers  # noqa: F401
        except ImportError as exc:
            raise OuroborosError("serve-model needs transformers, gguf and torch: pip install 'ouroboros[llm]' "
                                 "(or make llm)") from exc
        if not path.is_file():
            raise OuroborosError(f"no model file at {path}; run `ouroboros model fetch` (or make llm) first")
        torch.set_num_threads(threads)
        self.torch, self.name, self.n_ctx = torch, name, n_ctx
        self.tok, self.model, self.source = load(path, echo)
        self.model.eval()
        stops = {self.tok.eos_token_id}
        for t in ("<|im_end|>", "<|endoftext|>"):
            i = self.tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != self.tok.unk_token_id:
                stops.add(i)
        self.stops = sorted(s for s in stops if s is not None)
        self.lock = threading.Lock()

    def chat(self, messages: list[dict], max_tokens: int, temperature: float, seed: int | None) -> dict:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        n_in = int(ids.shape[1])
        if n_in >= self.n_ctx:
            raise ValueError(f"the prompt has {n_in} tokens, the context holds {self.n_ctx}; shorten it or "
                             "start serve-model with a larger --ctx")
        max_new = max(1, min(max_tokens, self.n_ctx - n_in))
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "eos_token_id": self.stops,
                                  "pad_token_id": self.stops[0]}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self.lock, self.torch.inference_mode():
            if seed is not None:
                self.torch.manual_seed(seed)
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), **kwargs)
        new = out[0][n_in:]
        n_out = int(new.shape[0])
        finished = n_out > 0 and int(new[-1]) in self.stops
        text = self.tok.decode(new, skip_special_tokens=True)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop" if finished else "length"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}


CACHE_FORMAT = 1  # bump when what is saved changes; an older cache is then rebuilt


def cache_for(path: Path, sha256: str) -> Path:
    """Where the dequantized weights of the GGUF with this sha256 are kept: beside the file."""
    return path.parent / f"{path.name}.{sha256[:16]}.f32"


def cache_valid(cache: Path, sha256: str) -> bool:
    """Whether cache is a complete cache of the GGUF with this sha256 (its stamp says so)."""
    try:
        stamp = json.loads((cache / "ouroboros-cache.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("gguf_sha256") == sha256 and stamp.get("format") == CACHE_FORMAT


def load(path: Path, echo: Callable[[str], None] = print) -> tuple[Any, Any, str]:
    """The tokenizer and float32 model of a GGUF file, and where they were read from.

    Dequantizing the GGUF through transformers takes minutes on 2 cores, so the first load saves the
    result (safetensors, and the tokenizer with the GGUF's chat template) in a folder beside the GGUF
    named by its sha256; later loads read that in seconds. The folder is written under a temporary
    name and renamed when complete, so a killed first load leaves no half cache; a cache that does not
    load is set aside and rebuilt from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ouroboros.model import sha256_of

    t = time.monotonic()
    sha = sha256_of(path)
    cache = cache_for(path, sha)
    echo(f"sha256 {sha[:16]}... in {time.monotonic() - t:.1f} s")
    if cache_valid(cache, sha):
        try:
            tok = AutoTokenizer.from_pretrained(cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
            return tok, model, str(cache)
        except Exception as exc:  # noqa: BLE001 - any failure to read the cache: rebuild it from the GGUF
            echo(f"the cache {cache} does not load ({type(exc).__name__}: {str(exc)[:200]}); rebuilding it")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    try:
        t = time.monotonic()
        save_cache(tok, model, cache, sha)
        echo(f"saved the dequantized weights to {cache} in {time.monotonic() - t:.0f} s "
             f"({sum(f.stat().st_size for f in cache.iterdir()) / 2**30:.2f} GiB; later starts read them)")
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written must not stop the server
        echo(f"could not save the dequantized weights to {cache} ({type(exc).__name__}: {str(exc)[:200]}); "
             "the next start dequantizes again")
    return tok, model, str(path)


def save_cache(tok: Any, model: Any, cache: Path, sha256: str) -> None:
    """Write tokenizer and model to a temporary folder beside cache, stamp it, rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".part", dir=cache.parent))
    try:
        # save_pretrained refuses a model loaded from GGUF (it is marked quantized, though its weights are
        # plain float32 by now): the config without that mark, and the weights through safetensors.
        from safetensors.torch import save_model

        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / "ouroboros-cache.json").write_text(json.dumps({"gguf_sha256": sha256, "format": CACHE_FORMAT}))
        if cache.exists():  # a broken cache (or one another start saved meanwhile): set it aside, remove it
            old = cache.with_name(f".{cache.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(cache, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_request(body: Any, default_max_tokens: int) -> tuple[list[dict], int, float, int | None]:
    """The messages, max_tokens, temperature and seed of a chat request; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with `messages`")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list of {role, content}")
    clean = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be {{role: one of {', '.join(ROLES)}, content: a string}}")
        clean.append({"role": m["role"], "content": m["content"]})
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens")) or default_max_tokens
    temperature = body.get("temperature", 0.0)
    seed = body.get("seed")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("`max_tokens` must be a positive integer")
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise ValueError("`temperature` must be a number from 0 to 2")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError("`seed` must be an integer")
    return clean, max_tokens, float(temperature), seed


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed the connection: readable, with nothing left to read."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def make_handler(model: Any, default_max_tokens: int, echo: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    # One request is generated at a time. A request whose client hung up while it waited its turn
    # (a killed run, a client that timed out) is dropped, not generated: on 2 cores one answer
    # takes minutes, and a queue of abandoned requests delayed the live ones by as many.
    turn = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "ouroboros-serve-model"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                echo("the client hung up before its reply was sent")

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": model.name, "object": "model",
                                                             "owned_by": "local"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no such path {self.path[:100]!r}; try POST /v1/chat/completions")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no such path {self.path[:100]!r}; try POST /v1/chat/completions")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self._error(400 if length <= 0 else 413, f"a JSON body of 1 to {MAX_BODY} bytes is required")
                return
            try:
                body = json.loads(self.rfile.read(length))
                messages, max_tokens, temperature, seed = check_request(body, default_max_tokens)
            except (ValueError, UnicodeDecodeError) as exc:
                self._error(400, f"bad request: {exc}")
                return
            with turn:
                if client_gone(self.connection):
                    echo("the client hung up while its request waited; not generated")
                    return
                start = time.monotonic()
                try:
                    resp = model.chat(messages, max_tokens, temperature, seed)
                except ValueError as exc:
                    self._error(400, str(exc))
                    return
            u = resp["usage"]
            echo(f"reply: {u['prompt_tokens']} tokens in, {u['completion_tokens']} out, "
                 f"{time.monotonic() - start:.1f} s")
            self._send(200, resp)

    return Handler


def serve(path: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, n_ctx: int = 4096, threads: int = 2,
          max_tokens: int = 512, echo: Callable[[str], None] = print) -> None:
    start = time.monotonic()
    echo(f"loading {path} (transformers, float32, {threads} threads) ...")
    model = Model(path, threads, n_ctx, echo=echo)
    echo(f"loaded in {time.monotonic() - start:.0f} s (from {model.source})")
    server = ThreadingHTTPServer((host, port), make_handler(model, max_tokens, echo))
    echo(f"serving model `local` at http://{host}:{port}/v1 (context {n_ctx} tokens); use it with "
         f"--agent api:local{'' if port == DEFAULT_PORT else f' --base-url http://{host}:{port}/v1'}; Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()
