"""Check that an exported package's TorchScript runs on the torch deepImageJ uses (libtorch 2.0.0).

deepImageJ (JDLL) runs TorchScript on libtorch 2.0.0, its newest PyTorch engine, so a model scripted
with today's torch must still load and give the same numbers there. This script builds a separate
virtual environment with torch==2.0.0 (PyPI's wheel pulls the CUDA runtime, ~2.5 GB; it runs on the
CPU), loads the package's TorchScript in it, runs the test input and the sizes a tiling consumer
uses (min, min+step, min+2*step) and compares with the package's test output with the deepImageJ
collection check's per-pixel tolerance (|diff| <= 1.5e-4 + 1e-4*|expected|, no mismatch allowed).
It also feeds the test input padded by the halo (as deepImageJ pads at image borders): the model must
recognise the padding, so the interior of the result equals the unpadded result.

    python scripts/check_deepimagej_compat.py demo/model.zip [--env .deepimagej-env] [--torch 2.0.0]

Exit code 0 when the model loads, runs at every size and reproduces the test output.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

CHECK = r"""
import json, sys
import numpy as np, torch
sys.modules["hazematching"] = None  # the project must not be needed
folder, sizes, halo = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = torch.jit.load(f"{folder}/hazematching_torchscript.pt", map_location="cpu").eval()
x = torch.from_numpy(np.load(f"{folder}/test_input.npy"))
expected = np.load(f"{folder}/test_output.npy")
with torch.no_grad():
    y = model(x).numpy()
    # a whole image padded by the halo, as deepImageJ does at image borders: the model skips the padding
    padded = model(torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (halo, halo), (halo, halo)), mode="symmetric")))
    padding_diff = float(np.abs(padded.numpy()[..., halo:-halo, halo:-halo] - y).max()) if halo else 0.0
    shapes = {}
    for s in sizes:
        out = model(torch.zeros(1, 1, s, s) + x.mean())
        shapes[s] = list(out.shape)
diff = np.abs(y - expected)
print(json.dumps({"torch": torch.__version__, "max_abs_diff": float(diff.max()), "shapes": shapes,
                  "padding_max_abs_diff": padding_diff,
                  "deepimagej_mismatched": int((diff > 1.5e-4 + 1e-4 * np.abs(expected)).sum()),
                  "bioimageio_mismatched": int((diff > 1e-3 + 1e-3 * np.abs(expected)).sum()),
                  "elements": int(expected.size), "finite": bool(np.isfinite(y).all())}))
"""


def ensure_env(env: Path, torch_version: str) -> Path:
    python = env / "bin" / "python"
    probe = [str(python), "-c", "import torch, numpy; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip().startswith(
        torch_version
    ):
        return python
    print(f"building {env} with torch=={torch_version} (a few GB, once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    # torch 2.0 was built against numpy 1.x
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", "numpy<2"], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="exported .zip")
    parser.add_argument("--env", type=Path, default=Path(".deepimagej-env"), help="virtual environment to (re)use")
    parser.add_argument("--torch", default="2.0.0", help="torch version of the consumer")
    args = parser.parse_args()

    python = ensure_env(args.env, args.torch)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.package) as zf:
        zf.extractall(tmp)
        rdf = yaml.safe_load(Path(tmp, "rdf.yaml").read_text())
        size = next(a for a in rdf["inputs"][0]["axes"] if a.get("id") == "y")["size"]
        sizes = [size["min"] + k * size["step"] for k in range(3)]
        halo = next(a for a in rdf["outputs"][0]["axes"] if a.get("id") == "y").get("halo", 0)
        result = subprocess.run(
            [str(python), "-c", CHECK, tmp, json.dumps(sizes), str(halo)], capture_output=True, text=True
        )
    if result.returncode != 0:
        print(f"FAILED: the TorchScript does not run on torch {args.torch}:\n{result.stderr[-3000:]}")
        return 1
    report = json.loads(result.stdout.strip().splitlines()[-1])
    ok_values = report["finite"] and report["deepimagej_mismatched"] == 0 and report["padding_max_abs_diff"] <= 1e-3
    ok_shapes = all(
        shape[-2:] == [s, s] and shape[1] == 2 for s, shape in ((int(k), v) for k, v in report["shapes"].items())
    )
    print(
        f"torch {report['torch']}: test output max |diff| {report['max_abs_diff']:.3g}; elements outside "
        f"deepImageJ's tolerance {report['deepimagej_mismatched']}/{report['elements']}, outside bioimage.io's "
        f"default {report['bioimageio_mismatched']}; sizes {sizes} -> {list(report['shapes'].values())}; "
        f"test input padded by the {halo} px halo: interior max |diff| {report['padding_max_abs_diff']:.3g}"
    )
    print(
        "OK: loads, runs at every tile size, reproduces the test output and skips halo padding"
        if ok_values and ok_shapes
        else "FAILED"
    )
    return 0 if ok_values and ok_shapes else 1


if __name__ == "__main__":
    sys.exit(main())
