"""On a GPU (`pytest -m gpu`, which `benchmarks/gpu.py` runs; skipped without CUDA): the CUDA
paths the CPU suite cannot reach. And the GPU benchmark's own smoke run on the CPU, so that the
script a lent GPU runs in one go cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_file
from test_families import case_recipe, train_losses

from loraft.training import train_recipe

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_on_cuda_a_run_trains_and_packed_rows_equal_padded_ones(
    method: str, precision: str, family_dirs: dict, tmp_path: Path
) -> None:
    losses = {}
    for packing in (True, False):
        run = tmp_path / f"packed-{packing}"
        overrides = [f"train.precision={precision}"]
        result = train_recipe(
            case_recipe(family_dirs["gpt2"], run, "causal_lm", method, packing, tmp_path, *overrides)
        )
        assert result.summary["device"] == torch.cuda.get_device_name(0)
        losses[packing] = train_losses(run)
    assert losses[True][-1] < losses[True][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2 if precision == "bf16" else 1e-4)


@pytest.mark.gpu
@cuda_only
def test_on_cuda_the_chunked_loss_equals_cross_entropy_of_the_logits() -> None:
    import torch.nn.functional as F

    from loraft.lm_loss import head_loss_sum

    torch.manual_seed(0)
    hidden = torch.randn(300, 64, device="cuda", requires_grad=True)
    weight = torch.randn(5000, 64, device="cuda", requires_grad=True)
    targets = torch.randint(0, 5000, (300,), device="cuda")
    ours = head_loss_sum(hidden, weight, targets)
    reference = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-3)
    (grad_ours,) = torch.autograd.grad(ours, hidden)
    (grad_reference,) = torch.autograd.grad(reference, hidden)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-4, atol=1e-4)


def test_the_gpu_benchmark_runs_its_smoke_run_on_the_cpu() -> None:
    news = shared_file("ag_news/news.csv")
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    report = benchmark.main(["--smoke", "--data-root", str(news.parents[1]), "--json"])
    assert report["gpu_tests"]["exit_code"] in (0, 5)  # 5: every GPU test skipped here (no CUDA)
    assert report["quickstart"]["exit_code"] == 0
    runs = {(run["tool"], run["method"]): run for run in report["runs"]}
    assert set(runs) == {("loraft", "lora"), ("trl", "lora"), ("loraft", "full"), ("trl", "full")}
    assert all(run["tokens_per_s"] > 0 and run["peak_mb"] > 0 for run in runs.values())
