"""Makes tests/golden/gguf_quants.npz: random ggml blocks and the `gguf` package's own dequantisation of them.
Run once, by hand, in a scratch environment that has the reference library (never the project's venv):

    python3 -m venv /tmp/scratch-venv && /tmp/scratch-venv/bin/pip install gguf==0.19.0 numpy
    cd /work/main && /tmp/scratch-venv/bin/python tests/golden/make_gguf_quants.py

For each type, BLOCKS blocks of random bytes whose f16 scale fields are overwritten with finite random values
(random bytes would give NaN and inf scales), saved as {TYPE}_bytes (uint8) and {TYPE}_weights (float32, from
gguf.quants.dequantize). Never imported by the project or the tests.
"""
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

BLOCKS = 4
# type -> byte offsets of its f16 fields in one block (ggml-common.h)
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def main():
    rng = np.random.default_rng(15)
    out = {}
    for name, fields in F16_FIELDS.items():
        qtype = gguf.GGMLQuantizationType[name]
        _, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint8)
        for at in fields:
            blocks[:, at:at + 2] = rng.normal(0.0, 0.05, (BLOCKS, 1)).astype("<f2").view(np.uint8)
        out[f"{name}_bytes"] = blocks.reshape(-1)
        out[f"{name}_weights"] = dequantize(blocks, qtype).astype(np.float32).reshape(-1)
    path = Path(__file__).with_name("gguf_quants.npz")
    np.savez(path, **out, gguf_version=np.array(version("gguf")))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
