"""The book's shared pipeline: one code path, two sizes, every expensive step cached.

``RECON_PROFILE=quick`` (the default) runs on a laptop CPU in minutes, on real images at
reduced size; ``RECON_PROFILE=full`` is the paper's size (n = 500) with the best recipe
measured in this book (the Results chapter), meant for a GPU or an hour of CPU per chapter;
``RECON_PROFILE=paper`` is the paper's own recipe (10^6 epochs of plain gradient descent in
float64, SGD reconstruction for 50,000 steps). The chapters call :func:`trained` and
:func:`reconstruction`; whichever chapter runs first computes a result and the others load
it (see :mod:`recon.cache`).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from .cache import cached
from .data import BinaryTask, load_task
from .hardware import default_device
from .kkt import kkt_diagnostic
from .models import MLP
from .reconstruct import ReconConfig, reconstruct
from .train import TrainConfig, train_task

__all__ = [
    "PROFILES",
    "profile_name",
    "device",
    "settings",
    "task",
    "trained",
    "reconstruction",
    "describe",
]

# Quick: the recipe measured to reach the KKT regime in seconds (weight decay, lr 0.1) and to
# recover real images from random starts (Adam on x, valid-range box, row space; Chapters 2
# and 3). Full: n = 500 with the best recipe measured at that size (Results chapter).
# Paper: the paper's training recipe and reconstruction optimiser.
PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "mnist": {
            "n_per_class": 25,
            "train": TrainConfig(lr=0.1, weight_decay=2e-2, epochs=3000, dtype="float32",
                                 log_every=100),
            "recon": ReconConfig(steps=2000, log_every=20),
        },
        "cifar10": {
            "n_per_class": 10,
            "train": TrainConfig(lr=0.1, weight_decay=2e-2, epochs=4000, dtype="float32",
                                 log_every=100),
            "recon": ReconConfig(steps=2000, log_every=20),
        },
    },
}
# the ten-class tasks (Buzaglo et al., 2023) with the binary recipe, at the size of the binary
# quick tasks' n where the classes divide it (MNIST n = 50, CIFAR-10 n = 20)
PROFILES["quick"].update({
    f"{name}-multiclass": {**PROFILES["quick"][name],
                           "n_per_class": PROFILES["quick"][name]["n_per_class"] * 2 // 10}
    for name in ("mnist", "cifar10")})
PROFILES.update({
    "full": {
        "mnist": {
            "n_per_class": 250,
            "train": TrainConfig(lr=0.1, weight_decay=1e-2, epochs=6000, dtype="float32",
                                 log_every=100),
            # a smaller row space: the directions whose singular value is under 1% of the
            # largest carry 0.1% of W1 and much of the candidates' noise; the cut-off is the
            # best of a scan on a shadow model trained on other images (Results chapter).
            # Then, for the last two thirds of the steps, a wider row space (3e-3) with the
            # two-tone prior, which penalises blends of digits (chosen on the same shadow)
            "recon": ReconConfig(steps=3000, subspace_tol=1e-2, two_tone=1.0, refine_share=0.67,
                                 refine_tol=3e-3, log_every=50),
            # pool only the quarter of each run's candidates with the largest multipliers: on
            # the shadow they held about 75% of a run's digits and none of its matches to
            # unseen test digits (Results chapter; `recon reproduce`'s `keep`)
            "keep": 0.25,
            # eight runs of m = 4n candidates (the paper's is 2n): on the shadow the top quarter
            # of one 4n run held more digits than the top quarter or the top n of a 2n run, and
            # eight 4n runs (33 minutes) pooled 83 digits where eight 2n runs (18) pooled 74
            # (Results chapter)
            "candidates_per_image": 4,
        },
        "cifar10": {
            "n_per_class": 250,
            "train": TrainConfig(lr=0.1, weight_decay=1e-2, epochs=6000, dtype="float32",
                                 log_every=100),
            # the cut-off chosen on the MNIST shadow model; the same scan on a CIFAR-10 shadow
            # does not separate the cut-offs (no photograph above NCC 0.9 at any), so it stays
            "recon": ReconConfig(steps=3000, subspace_tol=1e-2, log_every=50),
        },
    },
    "paper": {
        "mnist": {
            "n_per_class": 250,
            "train": TrainConfig(lr=0.01, epochs=1_000_000, dtype="float64", log_every=1000),
            "recon": ReconConfig.paper(),
        },
        "cifar10": {
            "n_per_class": 250,
            "train": TrainConfig(lr=0.01, epochs=1_000_000, dtype="float64", log_every=1000),
            "recon": ReconConfig.paper(),
        },
    },
})


def profile_name() -> str:
    """``RECON_PROFILE`` (``quick`` when unset), validated."""
    name = os.environ.get("RECON_PROFILE", "quick") or "quick"
    if name not in PROFILES:
        raise ValueError(f"RECON_PROFILE must be one of {sorted(PROFILES)}, got {name!r}")
    return name


def device() -> str:
    """The device the book's runs use (:func:`recon.hardware.default_device`)."""
    return default_device()


def describe() -> str:
    """One line for the top of a chapter: profile and device."""
    dev = device()
    if dev == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    return f"profile: {profile_name()} | device: {dev} ({name}) | torch {torch.__version__}"


def settings(name: str, profile: str | None = None) -> dict:
    """The profile's settings for a task: ``n_per_class``, ``train`` and ``recon`` configs, and
    where the profile pools only part of each run's candidates, ``keep`` (see
    :func:`recon.reproduce.reproduce`), and ``candidates_per_image`` (``m = K n``, default
    2)."""
    profile = profile or profile_name()
    try:
        return PROFILES[profile][name]
    except KeyError:
        raise ValueError(f"no settings for task {name!r} in profile {profile!r}") from None


def task(name: str, profile: str | None = None) -> BinaryTask:
    """The task's data at the profile's size (paper protocol, real images)."""
    return load_task(name, settings(name, profile)["n_per_class"])


def _train_key(name, s, train_cfg, kkt_every):
    return {"task": name, "n_per_class": s["n_per_class"], "train": train_cfg.to_dict(),
            "kkt_every": kkt_every}


def trained(name: str, profile: str | None = None, *, config: TrainConfig | None = None,
            kkt_every: int | None = None, progress: bool = False) -> dict:
    """Train (or load) the task's model. Returns a dict with ``model`` (an :class:`MLP` in the
    config's dtype), ``history`` (loss, errors, margins and, every ``kkt_every`` epochs, the
    KKT residual ``kkt_unexplained``), ``kkt`` (the final diagnostic as a dict) and ``_meta``.
    ``config`` overrides the profile's training config (e.g. to compare training routes).
    ``kkt_every`` is rounded to a multiple of the config's ``log_every`` (the diagnostic runs
    at logged epochs). ``progress`` shows a progress bar while computing.
    """
    s = settings(name, profile)
    cfg = config or s["train"]
    kkt_every = kkt_every or cfg.epochs // 30
    kkt_every = max(cfg.log_every, kkt_every // cfg.log_every * cfg.log_every)
    data = task(name, profile)

    def compute() -> dict:
        x, y = data.x_train, data.y_train

        def callback(epoch, model):
            if epoch % kkt_every == 0 or epoch == cfg.epochs:
                d = kkt_diagnostic(model, x.to(model.layers[0].weight), y.to(x.device))
                return {"kkt_unexplained": d.unexplained, "kkt_epoch": epoch}
            return None

        res = train_task(data, cfg, device=device(), progress=progress, callback=callback)
        model = res.model.cpu()
        diag = kkt_diagnostic(model, x.to(model.layers[0].weight), y)
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "arch": model.arch(), "history": res.history, "kkt": diag.to_dict(),
                "wall_time": res.wall_time}

    out = cached("trained", _train_key(name, s, cfg, kkt_every), compute)
    arch = out["arch"]
    model = MLP.from_arch(arch)
    model.load_state_dict(out["state_dict"])
    out["model"] = model.to(getattr(torch, cfg.dtype))
    return out


def reconstruction(name: str, profile: str | None = None, *, config: ReconConfig | None = None,
                   snapshot_steps: tuple[int, ...] | None = None,
                   progress: bool = False) -> dict:
    """Reconstruct (or load) candidates from the profile's trained model.

    Returns a dict with ``x`` ``(m, C, H, W)`` (mean-subtracted), ``lam``, ``y``, ``history``,
    ``snapshots`` ``{step: x}`` and ``_meta``. ``config`` overrides the profile's (its
    ``n_candidates`` defaults to ``2n``).
    """
    s = settings(name, profile)
    data = task(name, profile)
    cfg = config or s["recon"]
    if config is None:
        cfg = dataclasses.replace(cfg, n_candidates=2 * data.n)
    steps = cfg.steps
    snaps = snapshot_steps or tuple(sorted({0, steps // 20, steps // 5, steps // 2, steps}))
    net = trained(name, profile)

    def compute() -> dict:
        res = reconstruct(net["model"], cfg, mean=data.mean, snapshot_steps=snaps,
                          device=device(), progress=progress)
        return {"x": res.x, "lam": res.lam, "y": res.y, "history": res.history,
                "snapshots": {str(k): v for k, v in res.snapshots.items()},
                "wall_time": res.wall_time}

    key = {**_train_key(name, s, s["train"], None), "recon": cfg.to_dict(),
           "snapshots": list(snaps)}
    key.pop("kkt_every")
    out = cached("reconstruction", key, compute)
    out["snapshots"] = {int(k): v for k, v in out["snapshots"].items()}
    return out
