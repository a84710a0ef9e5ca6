"""Training the paper's network (``--architecture reference``): on 2 processes, with DeepSpeed as
shipped, compiled as one graph, and fine-tuned from an imported checkpoint with ``--init-from`` and no model flags."""

import json

import pytest
import torch
from conftest import accelerate_launcher, free_port, run_trainer
from safetensors.torch import load_file

from hazematching.core.reference_unet import ReferenceUNet
from hazematching.paper.importer import import_checkpoint
from hazematching.paper.releases import Normalisation
from hazematching.run import load_model

pytestmark = pytest.mark.slow
# the smallest reference network: GroupNorm's 32 groups need 32 channels a level; attention at ds 2
SMALL = ["--architecture", "reference", "--channel-mults", "1,2", "--attention-resolutions", "2"]
COMMON = [*SMALL, "--crop-size", "32", "--validation-steps", "0", "--checkpointing-steps", "3"]


def weights(run) -> dict:
    return load_file(run / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def check(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def test_reference_network_on_two_processes_equals_one(sim_data, tmp_path):
    common = ["--data", str(sim_data), "--max-steps", "6", *COMMON]
    two, one = tmp_path / "two", tmp_path / "one"
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    check(run_trainer([*common, "--output-dir", str(two), "--batch-size", "2"], launcher=launcher))
    check(run_trainer([*common, "--output-dir", str(one), "--batch-size", "4"]))
    config = json.loads((two / "config.json").read_text())
    assert config["architecture"]["kind"] == "reference" and config["num_processes"] == 2
    assert config["sampler"]["tile_size"] == 32 and config["sampler"]["overlap"] == 8  # its training window
    assert max_difference(weights(one), weights(two)) < 1e-4
    assert type(load_model(two).model) is ReferenceUNet


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_reference_network_with_deepspeed_as_shipped(sim_data, tmp_path, config):
    """bf16 as the configs ship it: the float32 GroupNorm and softmax must cope with bf16 weights."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    common = ["--data", str(sim_data), "--output-dir", str(run), "--batch-size", "2", *COMMON]
    launcher = accelerate_launcher(config, "--num_processes", "1", "--main_process_port", free_port())
    check(run_trainer([*common, "--max-steps", "3"], launcher=launcher))
    first = weights(run)
    check(run_trainer([*common, "--max-steps", "4", "--resume-from-checkpoint", "latest"], launcher=launcher))
    saved = json.loads((run / "config.json").read_text())
    assert saved["mixed_precision"] == "bf16" and saved["step"] == 4
    final = weights(run)
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in final.values())
    assert max_difference(first, final) > 0


def test_reference_network_compiles_as_one_graph():
    """``--compile`` on the reference network: one graph (no breaks), same loss gradients as eager.
    (The trainer's compile path itself is tested on our U-Net in test_train.py; inductor's C++ build
    of this network takes minutes on a CPU, so the graph is checked with the aot_eager backend.)"""
    torch.manual_seed(0)
    net = ReferenceUNet(channel_mults=(1, 2), attention_resolutions=(2,))
    x, cond, t = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.rand(2)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(net(x, cond, t).square().mean(), list(net.parameters()))
    compiled_grads = torch.autograd.grad(compiled(x, cond, t).square().mean(), list(net.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(eager_grads, compiled_grads)) < 1e-5


def test_fine_tuning_an_imported_checkpoint_needs_no_model_flags(sim_data, tmp_path):
    """An imported paper checkpoint (trained on the 20-point time grid, tiles of P) fine-tunes with
    --init-from alone: network, crop size, time grid and prediction defaults come from the run, the
    statistics stay the checkpoint's, and training starts from its weights."""
    torch.manual_seed(0)
    net = ReferenceUNet(channel_mults=(1, 2), attention_resolutions=(2,))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(net.state_dict(), tmp_path / "best_model.pth")
    stats = Normalisation(target_mean=300.0, target_std=80.0, input_mean=500.0, input_std=60.0)
    imported = tmp_path / "imported"
    import_checkpoint(tmp_path / "best_model.pth", imported, normalization=stats, patch_size=32)

    tuned = tmp_path / "tuned"
    flags = ["--data", str(sim_data), "--init-from", str(imported), "--batch-size", "2", "--max-steps", "1"]
    result = run_trainer([*flags, "--output-dir", str(tuned), "--lr", "1e-12", "--validation-steps", "0"])
    check(result)
    assert "crop_size, model, sampler, time_grid_points taken from that run" in result.stderr
    config = json.loads((tuned / "config.json").read_text())
    assert config["architecture"]["kind"] == "reference" and config["architecture"]["channel_mults"] == [1, 2]
    assert config["training"]["time_grid_points"] == 20 and config["training"]["crop_size"] == 32
    assert config["sampler"]["steps"] == 19 and config["sampler"]["tile_size"] == 32
    assert config["normalization"]["input_mean"] == 500.0
    assert max_difference(weights(tuned), weights(imported)) < 1e-6

    other = run_trainer([*flags, "--output-dir", str(tmp_path / "bad"), "--architecture", "unet"])
    assert other.returncode != 0 and "that run is a reference network" in other.stderr
    # model flags without --architecture change that run's network: named as the difference
    wider = run_trainer([*flags, "--output-dir", str(tmp_path / "wider"), "--base-channels", "64"])
    assert wider.returncode != 0 and "base_channels: that run 32, the flags 64" in wider.stderr
