"""A model directory with a given model's shape and tokenizer and freshly initialised weights, for speed benchmarks
on a machine that cannot hold or fetch the real weights (the GPU scripts carry only config and tokenizer files).

    python benchmarks/make_random_model.py SHAPE_DIR OUT_DIR [--dtype bfloat16]
    python benchmarks/make_random_model.py --shape-of smollm2 SHAPE_DIR   # write SHAPE_DIR from the bundled model

Throughput does not depend on the values of the weights; the benchmarks generate a fixed number of tokens.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHAPE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def write_shape(model: str, out: Path) -> None:
    """Copy the config and tokenizer files of ``model`` (a name ``load_model`` knows, or a directory) to ``out``."""
    from agl_model_server import default_model_dir, load_model

    source = Path(model) if Path(model).is_dir() else default_model_dir()
    if not (source / "config.json").is_file():
        load_model(model)  # converts and caches the bundled model
    out.mkdir(parents=True, exist_ok=True)
    for name in SHAPE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def make(shape: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(shape)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    print(f"{out}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", type=Path, help="a directory with config.json and the tokenizer's files")
    parser.add_argument("out", type=Path, nargs="?", help="where to save the model")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape-of", default=None, help="write SHAPE from this model ('smollm2' or a directory)")
    args = parser.parse_args()
    if args.shape_of:
        write_shape(args.shape_of, args.shape)
    if args.out:
        make(args.shape, args.out, args.dtype)


if __name__ == "__main__":
    main()
