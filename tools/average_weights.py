"""Average weights files into one (a uniform "model soup"), e.g. the last weights of sibling runs.

    python tools/average_weights.py codec/weights/iwcodec-256.safetensors \
        .cache/run7/run7a-17500.safetensors .cache/run7/run7b-17000.safetensors \
        .cache/run8/run8c-24000.safetensors .cache/run8/run8d-24000.safetensors

See :func:`codec.weights.average_weights`. The files must share one model config; weigh the
result against its parts with ``tools/compare_weights.py`` before shipping it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codec.weights import average_weights
from iwcodec.errors import ModelMismatchError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="weights file to write")
    p.add_argument("weights", nargs="+", type=Path, help="weights files to average")
    args = p.parse_args(argv)
    try:
        wid = average_weights(args.weights, args.out)
    except ModelMismatchError as e:
        p.error(str(e))
    print(f"{args.out}: id {wid.hex()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
