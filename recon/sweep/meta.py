"""What a study stores about itself (weights, objective, base config, space), so that a worker
with other settings is refused instead of mixing them."""

from __future__ import annotations

import json
import time

from ..reconstruct import ADDED_FIELDS, ReconConfig

STUDY_FORMAT = "recon-sweep/1"


def base_meta(base: ReconConfig) -> dict:
    """The base config as stored with a study; options that are off and were added later (TV
    prior, subspace) are left out, so studies started before they existed can be joined."""
    d = base.to_dict()
    for key, off in ADDED_FIELDS.items():
        if d.get(key) == off:
            del d[key]
    return d


def check_study_meta(study, meta: dict) -> None:
    """Store the study's fixed settings on creation; on joining, refuse other settings."""
    if "format" not in study.user_attrs:
        for attempt in range(5):
            try:  # two workers may create the study at once: the second insert may collide
                for key in sorted(meta, key=lambda k: k == "format"):  # "format" last
                    study.set_user_attr(key, meta[key])
                break
            except Exception:  # noqa: BLE001 - retried, then compared below
                time.sleep(0.2 * (attempt + 1))
    attrs = study.user_attrs
    diff = [key for key, v in meta.items() if json.loads(json.dumps(v)) != attrs.get(key)]
    if diff:
        raise ValueError(
            f"study {study.study_name!r} was started with another {', '.join(diff)} "
            f"(stored: {', '.join(f'{d}={attrs.get(d)!r}' for d in diff)}); every worker must "
            "use the same model and settings, or pass another --study-name"
        )
