""":class:`ModelServer`: a model, its tokenizer, the batching engine and the HTTP app, runnable in the foreground
(``serve``) or on a background thread (``start``), with a Python API for trainers in the same process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from agl_model_server._detok import TextAssembler, TokenTexts
from agl_model_server._engine import Engine, TokenEvent
from agl_model_server._models import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_NAME, load_model
from agl_model_server._sampling import SamplingParams
from agl_model_server._weights import apply_state_dict, read_weights_path, stage_state_dict

__all__ = ["ModelServer"]

KEEP_ALIVE_SECONDS = 30
"""How long the server keeps an idle client connection open (uvicorn's default is 5 s): well above the idle time
after which clients stop reusing one (agl's LLM proxy: 2 s; httpx: 5 s), so a request is never sent on a
connection the server is closing at that moment."""


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(t) for t in source)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


class ModelServer:
    """Serve a Hugging Face causal LM with an OpenAI-compatible API.

    ``model`` is a loaded ``PreTrainedModel`` (with ``tokenizer``), a local model directory, or ``None``/``"smollm2"``
    for the default model. The module is used as is (no copy): a trainer in the same process may update it through
    :meth:`load_state_dict`, or change it in place inside ``with server.paused():``.

        server = ModelServer(model=model, tokenizer=tokenizer).start()   # background thread, free port
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
        ...
        server.load_state_dict(new_state)                                 # drains in-flight requests first
        server.load_state_dict(new_state, drain=False)                    # or swaps between two decode steps
        server.stop()
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        model_name: str | None = None,
        max_batch_size: int = 64,
        max_model_len: int | None = None,
        default_max_tokens: int | None = None,
        device: str | None = None,
        dtype: Any = None,
        attn_implementation: str | None = "auto",
        static_decode: bool | None = None,
    ) -> None:
        aliases: set[str] = set()  # the names it was started with answer too ("smollm2" and the full name)
        if model is None or isinstance(model, (str, os.PathLike)):
            source = "smollm2" if model is None else str(model)
            aliases = set(DEFAULT_MODEL_ALIASES) if source in DEFAULT_MODEL_ALIASES else {source}
            model, loaded_tokenizer = load_model(source, device=device, dtype=dtype)
            tokenizer = tokenizer or loaded_tokenizer
            if model_name is None:
                model_name = (
                    DEFAULT_MODEL_NAME if source in DEFAULT_MODEL_ALIASES else os.path.basename(source.rstrip("/"))
                )
        elif device is not None:
            model.to(device)
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer with the model (tokenizer=...)")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = (
            model_name or str(getattr(model.config, "_name_or_path", "") or "model").rstrip("/").split("/")[-1]
        )
        self.served_names = {self.model_name, *aliases}
        self.default_max_tokens = default_max_tokens
        self.token_texts = TokenTexts(tokenizer)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._choose_attention(attn_implementation)
        model.eval()
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.engine = Engine(
            model,
            eos_token_ids=_eos_ids(model, tokenizer),
            max_model_len=min(limit, max_model_len) if max_model_len else limit,
            max_batch_size=max_batch_size,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            static=static_decode,
        )
        self._app: Any = None
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self.host: str | None = None
        self.port: int | None = None
        self._created = int(time.time())

    def _choose_attention(self, choice: str | None) -> None:
        # On the CPU, eager attention measured as fast as PyTorch's SDPA kernel or faster for one-token decode steps
        # (torch 2.13; in one profile SDPA's CPU flash kernel took ~5 ms per layer call); on a GPU SDPA is the one.
        if choice is None:
            return
        if choice == "auto":
            choice = "eager" if next(self.model.parameters()).device.type == "cpu" else None
        if choice and getattr(self.model.config, "_attn_implementation", None) != choice:
            setter = getattr(self.model, "set_attn_implementation", None)
            if setter is not None:
                setter(choice)
            else:  # older transformers
                self.model.config._attn_implementation = choice

    # ----------------------------------------------------------------------------------------------- tokens
    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def weights_version(self) -> int:
        return self.engine.weights_version

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def chat_prompt_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """The prompt token ids of a chat, with the tokenizer's chat template (special tokens come from it)."""
        from agl_model_server._protocol import ApiError

        normalized = []
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ApiError(f"messages[{i}] needs a string `role`.", param=f"messages[{i}].role")
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                content = "".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
            elif content is not None and not isinstance(content, str):
                raise ApiError(
                    f"messages[{i}].content must be a string or a list of parts.", param=f"messages[{i}].content"
                )
            normalized.append({**message, "content": content or ""})
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ApiError("This model's tokenizer has no chat template: use /v1/completions.", code="no_chat_template")
        try:
            text = self.tokenizer.apply_chat_template(
                normalized,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                **dict(template_kwargs or {}),
            )
        except Exception as err:
            raise ApiError(f"The chat template failed on these messages: {err}", param="messages") from err
        return self.encode(text, add_special_tokens=False)

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "agl",
            "root": str(getattr(self.model.config, "_name_or_path", "") or self.model_name),
            "max_model_len": self.max_model_len,
            "weights_version": self.weights_version,
        }

    # ----------------------------------------------------------------------------------------------- weights
    def load_state_dict_async(
        self, state: Mapping[str, Any], *, partial: bool = False, version: int | None = None, drain: bool = True
    ) -> concurrent.futures.Future:
        """Like :meth:`load_state_dict`, returning a future of ``{"version", "loaded_tensors"}``. With ``drain``
        false the weights are staged here, on the calling thread, before the future is returned."""

        def bump() -> int:
            self.engine.weights_version = self.engine.weights_version + 1 if version is None else int(version)
            return self.engine.weights_version

        def apply() -> dict[str, int]:
            count = apply_state_dict(self.model, state, partial=partial)
            return {"version": bump(), "loaded_tensors": count}

        if drain:
            return self.engine.run_exclusive(apply)
        staged = stage_state_dict(self.model, state, partial=partial)  # raises WeightsError here if it does not fit
        in_place = self.engine.captures_weights

        def swap() -> dict[str, int]:
            count = staged.swap(in_place=in_place)
            return {"version": bump(), "loaded_tensors": count}

        return self.engine.between_steps(swap)

    def load_state_dict(
        self,
        state: Mapping[str, Any],
        *,
        partial: bool = False,
        version: int | None = None,
        timeout: float = 600,
        drain: bool = True,
    ) -> int:
        """Put ``state`` (parameter name → tensor) into the served model and return the new weights version
        (``version`` if given, else the old one + 1). Raises ``WeightsError`` (nothing changed) when names or shapes
        do not fit, or when tensors are missing and ``partial`` is false.

        ``drain=True``: requests being generated finish first with the old weights, new ones wait, then the tensors
        are copied in place; every completion comes from one version, but generation stops until the longest running
        request ends. ``drain=False``: the new weights are copied into tensors of their own on this thread while
        generation goes on, then swapped in between two decode steps (generation stops for the swap alone, about a
        millisecond); running requests continue with the new weights (their ``weights_version`` stays the one they
        started with; their logprobs are those each token was sampled with). Asynchronous RL uses it (GRPO's
        ``max_staleness``); it holds a second copy of the weights while staging."""
        future = self.load_state_dict_async(state, partial=partial, version=version, drain=drain)
        return future.result(timeout)["version"]

    def load_adapter_async(
        self, name: str, state: Mapping[str, Any], *, scale: float = 1.0, version: int | None = None
    ) -> concurrent.futures.Future:
        """Like :meth:`load_adapter`, returning a future of ``{"adapter", "version", "loaded_tensors", "new",
        "resized", "seconds"}`` (``seconds``: the copy itself, on the engine thread)."""
        self.engine.adapters.check(name, state)  # a bad adapter fails here, before it waits for the engine

        def apply() -> dict[str, Any]:
            started = time.perf_counter()
            result = self.engine.adapters.load(name, state, scale=scale, version=version)
            if result["resized"] and hasattr(self.engine._batch, "decoder"):
                self.engine._batch.decoder.drop_graphs()
            return {**result, "seconds": time.perf_counter() - started}

        return self.engine.run_exclusive(apply)

    def load_adapter(
        self,
        name: str,
        state: Mapping[str, Any],
        *,
        scale: float = 1.0,
        version: int | None = None,
        timeout: float = 600,
    ) -> int:
        """Serve LoRA adapter ``name`` with the weights in ``state`` (``{module}.lora_A`` ``[r, in]`` and
        ``{module}.lora_B`` ``[out, r]``, module names as the served model's; :func:`adapter_state_from_peft`
        converts peft's), its output scaled by ``scale`` (peft's ``alpha / r``); adds it if new. Returns the
        adapter's version. Requests name it as the model ``<served name>:<adapter>``; they are batched with those of
        other adapters and of the base model. Only the adapter's tensors are copied (the base weights stay as
        they are); requests in flight finish first, as with :meth:`load_state_dict`. Raises ``WeightsError``
        (nothing changed) when the tensors do not fit the model."""
        future = self.load_adapter_async(name, state, scale=scale, version=version)
        return int(future.result(timeout)["version"])

    @property
    def adapters(self) -> dict[str, int]:
        """The LoRA adapters served, with their versions."""
        return dict(self.engine.adapters.versions)

    def load_weights(self, path: str | os.PathLike[str], *, partial: bool = False, version: int | None = None) -> int:
        """:meth:`load_state_dict` from a ``.safetensors`` file or a ``save_pretrained`` directory."""
        return self.load_state_dict(read_weights_path(path), partial=partial, version=version)

    @contextlib.contextmanager
    def paused(self, *, bump_version: bool = True) -> Iterator[ModelServer]:
        """Hold the engine with nothing in flight (running requests finish first, new ones wait) while the body
        changes the module in place, e.g. an optimizer step on the shared model; the version goes up by one on exit
        unless ``bump_version`` is false."""
        if not self.engine.running:  # nothing can be in flight
            yield self
            if bump_version:
                self.engine.weights_version += 1
            return
        entered, leave = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            leave.wait()
            if bump_version:
                self.engine.weights_version += 1

        future = self.engine.run_exclusive(hold)
        while not entered.wait(0.05):
            if future.done():
                future.result()  # raises what went wrong
                break
        try:
            yield self
        finally:
            leave.set()
            future.result()

    # ----------------------------------------------------------------------------------------------- python API
    def generate(
        self,
        prompt: str | Sequence[int] | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
        timeout: float = 600,
        adapter: str | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """Generate one completion through the engine (batched with everything else in flight), without HTTP.
        ``prompt`` is a text, token ids, or chat messages. Returns ``text``, ``token_ids``, ``prompt_token_ids``,
        ``logprobs`` (sampling distribution), ``model_logprobs`` (temperature 1), ``finish_reason`` and
        ``weights_version``. ``adapter``: a LoRA adapter loaded with :meth:`load_adapter` (``None``: the base
        model). ``priority``: lower is admitted first when requests wait for room in the batch (as the HTTP
        requests' ``priority`` field)."""
        if isinstance(prompt, str):
            prompt_ids = self.encode(prompt)
        elif prompt and isinstance(prompt[0], Mapping):
            prompt_ids = self.chat_prompt_ids(prompt)  # type: ignore[arg-type]
        else:
            prompt_ids = [int(t) for t in cast(Sequence[int], prompt)]
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            top_logprobs=top_logprobs,
        )
        events: queue.Queue[TokenEvent] = queue.Queue()
        seq_id = self.engine.submit(prompt_ids, params, events.put, adapter=adapter, priority=priority)
        assembler = TextAssembler(self.tokenizer, stop=stop)
        out: dict[str, Any] = {"prompt_token_ids": prompt_ids, "token_ids": [], "logprobs": [], "model_logprobs": []}
        out["top_logprobs"] = []
        deadline = time.monotonic() + timeout
        reason = None
        while reason is None:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            if event.error:
                raise RuntimeError(f"generation failed: {event.error}")
            if event.token_id >= 0:
                out["token_ids"].append(event.token_id)
                out["logprobs"].append(event.logprob)
                out["model_logprobs"].append(event.model_logprob)
                out["top_logprobs"].append(event.top_logprobs)
                assembler.add([event.token_id])
                if assembler.stopped and event.finish_reason is None:
                    self.engine.abort(seq_id)
                    reason = "stop"
            reason = reason or event.finish_reason
            out["weights_version"] = event.weights_version
        assembler.finish()
        out["text"], out["finish_reason"] = assembler.text, reason
        return out

    # ----------------------------------------------------------------------------------------------- serving
    @property
    def app(self) -> Any:
        if self._app is None:
            from agl_model_server._app import create_app

            self._app = create_app(self)
        return self._app

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.port is None:
            raise RuntimeError("the server is not started: call start() or serve()")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://host:port/v1``."""
        return self.url + "/v1"

    def _uvicorn_config(self, host: str, port: int, log_level: str) -> Any:
        import uvicorn

        fast_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        fast_http = "httptools" if importlib.util.find_spec("httptools") else "h11"
        return uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            loop=fast_loop,
            http=fast_http,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )

    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
        """Run in the foreground until interrupted (Ctrl-C)."""
        import uvicorn

        self.engine.start()
        self.host, self.port = host, port
        try:
            uvicorn.Server(self._uvicorn_config(host, port, log_level)).run()
        finally:
            self.engine.stop()

    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", timeout: float = 30
    ) -> ModelServer:
        """Serve on a background thread (``port=0``: a free port); returns ``self`` once it accepts connections."""
        import uvicorn

        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self.engine.start()
        server = uvicorn.Server(self._uvicorn_config(host, self.port, log_level))
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # uvicorn < 0.29 only
        self._uvicorn = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="agl-model-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the model server did not start; see the log above")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the background server and the engine (requests still running end with ``finish_reason="abort"``)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self.engine.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = self._uvicorn = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
