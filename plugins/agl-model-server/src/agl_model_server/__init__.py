"""agl-model-server: an OpenAI-compatible server for a Hugging Face causal LM on CPU or one GPU.

    from agl_model_server import ModelServer, load_default_model
    model, tokenizer = load_default_model()                 # SmolLM2-135M-Instruct, cached after the first load
    with ModelServer(model=model, tokenizer=tokenizer) as server:   # background thread, free port on 127.0.0.1
        print(server.base_url)                              # http://127.0.0.1:PORT/v1
        server.load_state_dict(new_weights)                 # in place; in-flight requests finish first
        server.load_adapter("planner", lora_tensors, scale=2.0)  # a LoRA adapter, served as model "<name>:planner"

From the command line: ``agl serve-model --model smollm2``. Importing this package is cheap: torch and
transformers load when a name below is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Engine",
    "ModelServer",
    "SamplingParams",
    "WeightsError",
    "adapter_state_from_peft",
    "default_model_dir",
    "load_default_model",
    "load_model",
]

_WHERE = {
    "DEFAULT_MODEL_NAME": "agl_model_server._models",
    "default_model_dir": "agl_model_server._models",
    "load_default_model": "agl_model_server._models",
    "load_model": "agl_model_server._models",
    "Engine": "agl_model_server._engine",
    "ModelServer": "agl_model_server._server",
    "SamplingParams": "agl_model_server._sampling",
    "WeightsError": "agl_model_server._weights",
    "adapter_state_from_peft": "agl_model_server._lora",
}

if TYPE_CHECKING:
    from agl_model_server._engine import Engine
    from agl_model_server._lora import adapter_state_from_peft
    from agl_model_server._models import DEFAULT_MODEL_NAME, default_model_dir, load_default_model, load_model
    from agl_model_server._sampling import SamplingParams
    from agl_model_server._server import ModelServer
    from agl_model_server._weights import WeightsError


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agl_model_server' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
