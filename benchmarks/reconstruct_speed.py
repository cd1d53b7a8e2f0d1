"""Reconstruction steps and training epochs per second against code written the paper's way.

For each trained n = 500 model given (a run directory of ``python -m recon train`` or
``python -m recon reproduce``: ``model.pt`` + ``run.json`` or ``card.json``), in one run on
one machine, each case in a fresh subprocess (so its peak memory is its own):

* **reconstruction**, m = 2n = 1000 candidates, the paper's shapes:
  - ``ours``: :func:`recon.reconstruct` with the library's default settings (row space of the
    trained first layer, ``matmul="auto"``), and with ``matmul="full"`` for comparison;
  - ``reference``: the stationarity loss written the way the paper's code writes it: a custom
    autograd ReLU whose backward is ``sigmoid(alpha z)``, ``torch.autograd.grad(...,
    create_graph=True)`` over the parameters, ``loss.backward()``, SGD with momentum on the
    candidates and the multipliers, in float64 (the paper's default) and float32;
* **training**, full batch on the n = 500 training images:
  - ``ours``: :func:`recon.train.train` with its default precision (``matmul="auto"``) and
    with ``matmul="full"``, float32 weights;
  - ``reference``: a plain PyTorch loop (``nn.Sequential``, ``BCEWithLogitsLoss``, SGD) in
    float64 and float32.

A step's time is the steady-state time: the difference between a run of ``2 + S`` steps and a
run of 2 steps, divided by S (so one-off set-up such as the row-space basis is not counted),
best of ``--repeat`` tries. Results go to ``results/benchmarks/reconstruct_speed.json``: a
list of rows, each with ``stage`` ("reconstruct" or "train"), ``task``, ``device``,
``precision``, ``rank``, ours and the two references (seconds per step, or epochs per
second), the ratios, peak memory, and provenance.

    python -m recon train --task cifar10 --n-per-class 250 --epochs 6000 --lr 0.1 \\
        --weight-decay 0.01 --dtype float32 --run runs/cifar10-n500
    python -m recon train --task mnist --n-per-class 250 --epochs 6000 --lr 0.1 \\
        --weight-decay 0.01 --dtype float32 --run runs/mnist-n500
    python benchmarks/reconstruct_speed.py runs/cifar10-n500 runs/mnist-n500

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
    from recon.data import load_task
    from recon.train import load_checkpoint

    card = {}
    for name in ("card.json", "run.json"):
        if (run_dir / name).is_file():
            card = json.loads((run_dir / name).read_text())
            break
    t = card.get("task")
    if not t or not (run_dir / "model.pt").is_file():
        raise SystemExit(f"error: {run_dir} needs model.pt and run.json or card.json (train it "
                         "with `python -m recon train ... --run DIR`, see --help)")
    task = load_task(t["name"], t["n_per_class"])
    trained, _ = load_checkpoint(run_dir / "model.pt")
    return task, trained


# ------------------------------------------------------------------- reconstruction cases


def recon_ours(run_dir, device, steps, repeat, matmul):
    import torch

    from recon.reconstruct import ReconConfig, reconstruct

    task, trained = _load(run_dir, device)
    model = trained.model.to(device, torch.float32)

    def run(k):
        cfg = ReconConfig(n_candidates=2 * task.n, steps=k, matmul=matmul, log_every=10**9)
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
    import torch

    from recon.models import MLP
    from recon.train import TrainConfig, train

    task, trained = _load(run_dir, device)
    model = MLP(task.image_shape).to(device, torch.float32)

    def run(k):
        cfg = TrainConfig(lr=0.1, weight_decay=1e-2, epochs=k, dtype="float32", matmul=matmul,
                          log_every=10**9)
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


CASES = {
    "recon_ours": (recon_ours, "auto"), "recon_ours_full": (recon_ours, "full"),
    "recon_ref_f64": (recon_reference, "float64"), "recon_ref_f32": (recon_reference, "float32"),
    "train_ours": (train_ours, "auto"), "train_ours_full": (train_ours, "full"),
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

    rows = []
    for run in a.runs:
        task, trained = _load(run, a.device)
        rank = int(first_layer_basis(trained.model, ReconConfig().subspace_tol).shape[1])
        auto = resolve_precision("auto", a.device)
        print(f"{run} ({task.name}, n = {task.n}, rank {rank}, {a.device}, auto = {auto})")
        r = {case: _measure(case, run, a) for case in CASES}
        prov = provenance(torch.device(a.device))
        common = {"task": task.name, "n": task.n, "device": a.device,
                  "threads": r["recon_ours"]["threads"], "run": str(run)}
        for variant, precision in (("", auto), ("_full", "full")):
            ours = r[f"recon_ours{variant}"]["value"]
            rows.append({
                "stage": "reconstruct", **common, "precision": precision, "rank": rank,
                "m": 2 * task.n, "ours_s_per_step": ours,
                "reference_f64_s_per_step": r["recon_ref_f64"]["value"],
                "reference_f32_s_per_step": r["recon_ref_f32"]["value"],
                "ratio_f64": r["recon_ref_f64"]["value"] / ours,
                "ratio_f32": r["recon_ref_f32"]["value"] / ours,
                "peak_mib": {"ours": r[f"recon_ours{variant}"]["peak_mib"],
                             "reference_f64": r["recon_ref_f64"]["peak_mib"],
                             "reference_f32": r["recon_ref_f32"]["peak_mib"]},
                "provenance": prov})
        for variant, precision in (("", auto), ("_full", "full")):
            ours = r[f"train_ours{variant}"]["value"]
            rows.append({
                "stage": "train", **common, "precision": precision, "rank": None,
                "ours_epochs_per_s": ours,
                "reference_f64_epochs_per_s": r["train_ref_f64"]["value"],
                "reference_f32_epochs_per_s": r["train_ref_f32"]["value"],
                "ratio_f64": ours / r["train_ref_f64"]["value"],
                "ratio_f32": ours / r["train_ref_f32"]["value"],
                "peak_mib": {"ours": r[f"train_ours{variant}"]["peak_mib"],
                             "reference_f64": r["train_ref_f64"]["peak_mib"],
                             "reference_f32": r["train_ref_f32"]["peak_mib"]},
                "provenance": prov})
        for row in rows[-4:]:
            unit = "s/step" if row["stage"] == "reconstruct" else "epochs/s"
            print(f"  {row['stage']:11s} {row['precision']:8s} ratio vs f64 "
                  f"{row['ratio_f64']:5.1f}, vs f32 {row['ratio_f32']:5.1f} ({unit})")
    out = Path(a.out)
    if out.is_file():  # keep rows of other tasks / devices measured earlier
        keep = [r for r in json.loads(out.read_text())
                if (r["task"], r["device"]) not in {(x["task"], x["device"]) for x in rows}]
        rows = keep + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
