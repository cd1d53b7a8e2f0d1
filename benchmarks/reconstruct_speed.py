"""Reconstruction steps and training epochs per second against code written the paper's way.

For each trained n = 500 model given (a run directory of ``python -m recon train`` or
``python -m recon reproduce``, read by :func:`recon.rundir.load_run`), in one run on one
machine, each case in a fresh subprocess (so its peak memory is its own), every process with
the same allocator setting (:func:`recon.hardware.keep_freed_memory`):

* **reconstruction**, m = 2n = 1000 candidates, the paper's shapes, one row per case:
  - the library's default (:class:`recon.reconstruct.ReconConfig`: row space at cut-off
    3e-5, ``matmul="auto"``);
  - the full profile's cut-off, 1e-2 (a smaller row space);
  - no row space: candidates in pixel space, the same optimisation problem as the paper's,
    at ``matmul="auto"`` and in full precision (the like-for-like row against the float32
    reference: only the hand-written gradient differs);
  - each against the **reference**: the stationarity loss written the way the paper's code
    writes it (a custom autograd ReLU whose backward is ``sigmoid(alpha z)``,
    ``torch.autograd.grad(..., create_graph=True)`` over the parameters, ``loss.backward()``,
    SGD with momentum), in float64 (the paper's default) and float32;
* **training**, full batch on the n = 500 training images: :func:`recon.train.train` at its
  default precision and at ``matmul="auto"``, float32 weights, against a plain PyTorch loop
  (``nn.Sequential``, ``BCEWithLogitsLoss``, SGD) in float64 and float32.

Every row names the precision that actually ran (what ``"auto"`` became here) and the CPU (model
name, AMX / AVX-512 BF16), since both decide the ratios. A step's time is the steady-state
time: the difference between a run of ``2 + S`` steps and a run of 2 steps, divided by S (so
one-off set-up such as the row-space basis is not counted), best of ``--repeat`` tries.
Results go to ``results/benchmarks/reconstruct_speed.json`` (rows of other tasks or CPUs
measured at the same revision are kept).

    python -m recon train --task cifar10 --n-per-class 250 --epochs 6000 --lr 0.1 \\
        --weight-decay 0.01 --dtype float32 --run runs/cifar10-n500
    python -m recon train --task mnist --n-per-class 250 --epochs 6000 --lr 0.1 \\
        --weight-decay 0.01 --dtype float32 --run runs/mnist-n500
    python benchmarks/reconstruct_speed.py runs/cifar10-n500 runs/mnist-n500

(the full profile's training recipe; the model of a ``reproduce --profile full`` directory
works as well).

Timings on a shared machine are noisy: compare the ratios of one run, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# measure the library of the checkout this script belongs to, whatever copy of recon is
# installed (its cards record this checkout's revision)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> float:
    """Peak memory in MiB of this process (CPU: max RSS; CUDA: max allocated)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _steady(run, steps: int, repeat: int, device: str) -> float:
    """Seconds per step of ``run(k)`` (which performs k steps), set-up excluded."""
    run(2)
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        run(2)
        _sync(device)
        t1 = time.perf_counter()
        run(2 + steps)
        _sync(device)
        t2 = time.perf_counter()
        best = min(best, ((t2 - t1) - (t1 - t0)) / steps)
    return best


def _load(run_dir: Path, device: str):
    """The task as trained and the model of a run directory, through :mod:`recon.rundir`;
    the process keeps freed memory for reuse (:func:`recon.hardware.keep_freed_memory`) on
    every case, ours and the references alike."""
    from recon.hardware import keep_freed_memory
    from recon.rundir import load_run

    keep_freed_memory()
    try:
        run = load_run(run_dir)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e} (see --help)") from None
    return run.task, run.trained


# ------------------------------------------------------------------- reconstruction cases


def recon_ours(run_dir, device, steps, repeat, setting):
    """``setting``: ``(matmul, subspace_tol)``; ``subspace_tol`` None is the default's."""
    import torch

    from recon.reconstruct import ReconConfig, reconstruct

    matmul, tol = setting
    task, trained = _load(run_dir, device)
    model = trained.model.to(device, torch.float32)
    extra = {} if tol is None else {"subspace_tol": tol}

    def run(k):
        cfg = ReconConfig(n_candidates=2 * task.n, steps=k, matmul=matmul, log_every=10**9,
                          **extra)
        reconstruct(model, cfg, mean=task.mean, device=device, progress=False)

    return _steady(run, steps, repeat, device)


def recon_reference(run_dir, device, steps, repeat, dtype):
    """The KKT loss and its optimisation, written the way the paper's code writes them."""
    import torch
    from torch import nn

    class SoftBackwardReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, alpha):
            ctx.save_for_backward(z)
            ctx.alpha = alpha
            return z.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):
            (z,) = ctx.saved_tensors
            return grad * torch.sigmoid(ctx.alpha * z), None

    task, trained = _load(run_dir, device)
    dt = getattr(torch, dtype)
    layers = nn.ModuleList()
    for src in trained.model.layers:
        lin = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
        lin.load_state_dict(src.state_dict())
        layers.append(lin)
    layers = layers.to(device, dt)

    def forward(x):
        h = x.flatten(1)
        for i, layer in enumerate(layers):
            if i:
                h = SoftBackwardReLU.apply(h, 100.0)
            h = layer(h)
        return h.squeeze(1)

    params = list(layers.parameters())
    m = 2 * task.n

    def run(k):
        g = torch.Generator(device=device).manual_seed(0)
        x = (torch.randn((m, *task.image_shape), generator=g, device=device, dtype=dt)
             * 1e-3).requires_grad_()
        lam = torch.rand(m, generator=g, device=device, dtype=dt).requires_grad_()
        y = torch.ones(m, device=device, dtype=dt)
        y[: m // 2] = -1
        opt_x = torch.optim.SGD([x], lr=1e-3, momentum=0.9)
        opt_l = torch.optim.SGD([lam], lr=1e-4, momentum=0.9)
        for _ in range(k):
            opt_x.zero_grad()
            opt_l.zero_grad()
            out = forward(x)
            grads = torch.autograd.grad(out * lam * y, params, grad_outputs=torch.ones_like(out)
                                        / m, create_graph=True)
            loss = sum((p.detach() - gr).pow(2).sum() for p, gr in zip(params, grads))
            loss = loss + 5 * (0.45 - lam).relu().pow(2).sum()
            loss = loss + (x - 1).relu().pow(2).sum() + (-1 - x).relu().pow(2).sum()
            loss.backward()
            opt_x.step()
            opt_l.step()

    return _steady(run, steps, repeat, device)


# ------------------------------------------------------------------- training cases


def train_ours(run_dir, device, steps, repeat, matmul):
    """Training at ``matmul`` (None: :class:`recon.train.TrainConfig`'s default)."""
    import torch

    from recon.models import MLP
    from recon.train import TrainConfig, train

    task, trained = _load(run_dir, device)
    model = MLP(task.image_shape).to(device, torch.float32)

    def run(k):
        cfg = TrainConfig(lr=0.1, weight_decay=1e-2, epochs=k, dtype="float32",
                          log_every=10**9, **({} if matmul is None else {"matmul": matmul}))
        train(model, task.x_train, task.y_train, cfg, progress=False)

    return 1 / _steady(run, steps, repeat, device)


def train_reference(run_dir, device, steps, repeat, dtype):
    import torch
    from torch import nn

    task, _ = _load(run_dir, device)
    dt = getattr(torch, dtype)
    x, y = task.x_train.to(device, dt), task.y_train.to(device, dt)
    d = x[0].numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 1000), nn.ReLU(),
                          nn.Linear(1000, 1000, bias=False), nn.ReLU(),
                          nn.Linear(1000, 1, bias=False)).to(device, dt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    lossf = nn.BCEWithLogitsLoss()
    target = (y + 1) / 2

    def run(k):
        for _ in range(k):
            opt.zero_grad()
            lossf(model(x).squeeze(1), target).backward()
            opt.step()

    return 1 / _steady(run, steps, repeat, device)


#: reconstruction rows: (case, what it is, (matmul, subspace_tol)); None: the default's
RECON_ROWS = [
    ("recon_default", "default (row space, cut-off 3e-5)", ("auto", None)),
    ("recon_full_profile", "full profile's cut-off (1e-2)", ("auto", 1e-2)),
    ("recon_pixels", "no row space: the paper's problem", ("auto", 0.0)),
    ("recon_pixels_full", "no row space, full precision", ("full", 0.0)),
]
#: training rows: (case, what it is, matmul)
TRAIN_ROWS = [
    ("train_default", "default precision", None),
    ("train_auto", "matmul auto", "auto"),
]
CASES = {
    **{case: (recon_ours, setting) for case, _, setting in RECON_ROWS},
    **{case: (train_ours, matmul) for case, _, matmul in TRAIN_ROWS},
    "recon_ref_f64": (recon_reference, "float64"), "recon_ref_f32": (recon_reference, "float32"),
    "train_ref_f64": (train_reference, "float64"), "train_ref_f32": (train_reference, "float32"),
}


def _child(a) -> None:
    import torch

    fn, arg = CASES[a.child]
    steps = a.epochs if a.child.startswith("train") else a.steps
    value = fn(Path(a.child_run), a.device, steps, a.repeat, arg)
    print(json.dumps({"value": value, "peak_mib": _peak(a.device),
                      "threads": torch.get_num_threads()}))


def _measure(case: str, run: Path, a) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--child-run", str(run), "--device",
           a.device, "--steps", str(a.steps), "--epochs", str(a.epochs), "--repeat",
           str(a.repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {case:16s} {r['value']:.4g}  (peak {r['peak_mib']:.0f} MiB)", flush=True)
    return r


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="trained n = 500 run directories")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=6, help="timed reconstruction steps per try")
    p.add_argument("--epochs", type=int, default=20, help="timed training epochs per try")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="results/benchmarks/reconstruct_speed.json")
    p.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    p.add_argument("--child-run", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a)
        return
    if not a.runs:
        p.error("give at least one trained run directory (see --help)")
    import torch

    from recon.hardware import resolve_precision
    from recon.provenance import provenance
    from recon.reconstruct import ReconConfig, first_layer_basis
    from recon.train import TrainConfig

    rows = []
    for run in a.runs:
        task, trained = _load(run, a.device)
        print(f"{run} ({task.name}, n = {task.n}, {a.device})")
        r = {case: _measure(case, run, a) for case in CASES}
        prov = provenance(torch.device(a.device))
        common = {"task": task.name, "n": task.n, "device": a.device, "cpu": prov["cpu"],
                  "threads": r["recon_default"]["threads"], "run": str(run)}
        ref = {k: r[f"recon_ref_{k}"] for k in ("f64", "f32")}
        for case, what, (matmul, tol) in RECON_ROWS:
            tol = ReconConfig().subspace_tol if tol is None else tol
            rank = (int(first_layer_basis(trained.model, tol).shape[1]) if tol > 0 else None)
            ours = r[case]["value"]
            rows.append({
                "stage": "reconstruct", "case": what, **common,
                "precision": resolve_precision(matmul, a.device), "subspace_tol": tol,
                "rank": rank, "m": 2 * task.n, "ours_s_per_step": ours,
                "reference_f64_s_per_step": ref["f64"]["value"],
                "reference_f32_s_per_step": ref["f32"]["value"],
                "ratio_f64": ref["f64"]["value"] / ours, "ratio_f32": ref["f32"]["value"] / ours,
                "peak_mib": {"ours": r[case]["peak_mib"], "reference_f64": ref["f64"]["peak_mib"],
                             "reference_f32": ref["f32"]["peak_mib"]},
                "provenance": prov})
        ref = {k: r[f"train_ref_{k}"] for k in ("f64", "f32")}
        for case, what, matmul in TRAIN_ROWS:
            ours = r[case]["value"]
            rows.append({
                "stage": "train", "case": what, **common,
                "precision": resolve_precision(matmul or TrainConfig().matmul, a.device),
                "subspace_tol": None, "rank": None, "ours_epochs_per_s": ours,
                "reference_f64_epochs_per_s": ref["f64"]["value"],
                "reference_f32_epochs_per_s": ref["f32"]["value"],
                "ratio_f64": ours / ref["f64"]["value"], "ratio_f32": ours / ref["f32"]["value"],
                "peak_mib": {"ours": r[case]["peak_mib"], "reference_f64": ref["f64"]["peak_mib"],
                             "reference_f32": ref["f32"]["peak_mib"]},
                "provenance": prov})
        for row in rows[-len(RECON_ROWS) - len(TRAIN_ROWS):]:
            unit = "s/step" if row["stage"] == "reconstruct" else "epochs/s"
            print(f"  {row['stage']:11s} {row['case']:36s} {row['precision']:8s} ratio vs f64 "
                  f"{row['ratio_f64']:5.1f}, vs f32 {row['ratio_f32']:5.1f} ({unit})")
    out = Path(a.out)
    if out.is_file():  # keep rows of other tasks, devices or CPUs measured at this revision
        here = {(x["task"], x["device"], x["cpu"]["model"]) for x in rows}
        keep = [r for r in json.loads(out.read_text())
                if r.get("cpu") and r["provenance"]["git_revision"] == rows[0]["provenance"][
                    "git_revision"] and (r["task"], r["device"], r["cpu"]["model"]) not in here]
        rows = keep + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
