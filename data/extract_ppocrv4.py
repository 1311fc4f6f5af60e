"""Extract the CTC output layer of PP-OCRv4's recogniser into data/ppocrv4_rec_head.npz.

The model ships inside the Apache-2.0 wheel ``rapidocr-onnxruntime==1.4.4`` as
``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx``. Its last layer is
``MatMul(features, linear_85.w_0) + linear_85.b_0`` followed by Softmax, with
``linear_85.w_0`` of shape [120, 6625] stored in a Constant node. Row 0 is the
CTC blank, rows 1..6623 the characters listed in the model metadata
``character`` (one per line), and the last row the space.

Usage (needs the ``onnx`` package; nothing is downloaded at run time)::

    pip download --no-deps rapidocr-onnxruntime==1.4.4 -d /tmp/wheel
    python data/extract_ppocrv4.py /tmp/wheel/rapidocr_onnxruntime-1.4.4-py3-none-any.whl
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
OUT = Path(__file__).with_name("ppocrv4_rec_head.npz")


def extract(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        model = onnx.load_from_string(zf.read(MEMBER))
    constants = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in ("linear_85.w_0", "linear_85.b_0"):
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    weight = constants["linear_85.w_0"].T  # stored [dim, classes]; we use [classes, dim]
    bias = constants["linear_85.b_0"]
    chars = dict((p.key, p.value) for p in model.metadata_props)["character"].splitlines()
    tokens = ["<blank>", *chars, " "]
    if len(tokens) != weight.shape[0]:
        raise SystemExit(f"expected {weight.shape[0]} names, built {len(tokens)}")
    np.savez_compressed(OUT, weight=np.ascontiguousarray(weight, dtype=np.float32),
                        bias=bias.astype(np.float32), tokens=np.array(tokens))
    print(f"wrote {OUT}: weight {weight.shape}, bias {bias.shape}, {len(tokens)} tokens")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    extract(Path(sys.argv[1]))
