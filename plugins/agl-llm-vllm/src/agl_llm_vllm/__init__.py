"""agl-llm-vllm: vLLM as agl's LLM backend (``vllm`` in ``agl.llm_backends``).

    GRPO(model="smollm2", backend="vllm", backend_options={"dtype": "float32", "enforce_eager": True})
    agl train ... --set algorithm.backend=vllm --set algorithm.backend_options.python=/path/to/vllm-env/bin/python
    agl vllm serve --model PATH            # a vLLM OpenAI server as the backend launches it

vLLM may live in another environment (it pins its own torch and transformers): the ``python`` option (or
``$AGL_VLLM_PYTHON``) names its interpreter. Importing this package imports neither torch nor vllm.
"""

from __future__ import annotations

from agl_llm_vllm._launch import VLLMServer, VLLMServerError
from agl_llm_vllm._options import VLLMBackendOptions
from agl_llm_vllm.backend import VLLMBackend

__all__ = ["VLLMBackend", "VLLMBackendOptions", "VLLMServer", "VLLMServerError"]
