"""Hyperparameter sweeps of the reconstruction with Optuna: one study per trained model.

The paper found its reconstructions by a random search over four hyperparameters (``lr_x``,
``init_scale``, ``lambda_min``, ``alpha``; :func:`search_space`) and pooled the candidates of
its best runs. Here each Optuna *trial* is one reconstruction run (:func:`recon.reconstruct.
reconstruct`) with sampled hyperparameters; a *study* holds the trials of one trained model.

Storage and workers:

- By default the study lives in a SQLite file in the run directory (``RUN/sweep/optuna.db``):
  several worker processes on one machine share it, just by running the same command.
- With a database URL (``postgresql://user:password@host/db``) workers on many machines share
  one study. Every worker needs the same ``RUN/model.pt`` (the study stores the weights'
  fingerprint and refuses a different model).
- ``n_trials`` is the number of *finished* trials (complete or pruned) the study should hold,
  counted over all workers: each worker claims a trial only while the study still needs one,
  so the workers together run exactly ``n_trials``. Running the command again resumes: finished
  trials are kept, and trials of a worker that died (killed, machine lost) are marked failed
  once their heartbeat is older than ``grace_period`` seconds, then run again as new trials.

Objectives (all minimised):

- ``"kkt"`` (the default): the fraction of ``||theta||^2`` the candidates leave unexplained in the
  stationarity equation, evaluated with the *exact* ReLU (so trials with different ``alpha``
  compare fairly). Needs only the weights: what an attacker can compute.
- ``"agreement"``: two independent runs (different seeds) with the same hyperparameters; the
  score is the paper's score of one run's candidates against the other's. Also needs no
  training data, costs two runs per trial, and rewards any reproducible output: two runs that
  collapse to the same class-average blob agree too.
- ``"oracle"``: the paper's sweep score, the mean of the ``k`` best one-to-one NCC distances
  between candidates and training images (:func:`recon.evaluate.sweep_score`). It reads the
  training set: an oracle for research, not a tool an attacker has. (Cards and studies
  written before it had this name call it ``"paper"``.)

Every trial records the oracle score and the KKT residual as user attributes whatever the
objective (so every worker needs the training data, as ``RUN/run.json`` names it, to record
it), and :func:`compare_scores` measures how well an attacker's score finds what the oracle
finds; with a weights-only objective the recorded oracle score never decides which trial is
pruned, ranked or pooled.

Pruning: every ``report_every`` steps the trial reports its objective (for ``"kkt"`` the
exact-ReLU residual) to an Optuna pruner, which stops hopeless trials. The run is continued
chunk by chunk from an in-trial checkpoint (``reconstruct`` resumes where it stopped; the
trajectory is the same as one uninterrupted run). A trial that diverges (NaN/inf) is recorded
as pruned with user attribute ``diverged``.

Artefacts: each finished trial saves ``RUN/sweep/<study>/trial-00007.pt`` (candidates ``x``,
multipliers ``lam``, labels ``y``, config, history, scores; ``torch.save``, read with
``weights_only=True``), so :func:`pool_trials` evaluates the pooled candidates of the best
``k`` trials with the paper's protocol (both matchings) without re-running anything. With
workers on several machines each machine holds the artefacts of its own trials: put ``RUN`` on
a shared file system, or copy ``RUN/sweep/<study>/`` together before pooling.

Plots: ``optuna.visualization.matplotlib.plot_optimization_history(load_study(run))`` and the
other Optuna plots work on the study as it is (matplotlib only; no plotly needed).

Layout: ``space`` (search spaces), ``storage`` (databases, run directories, trial files),
``objectives``, ``meta`` (what a study records about itself), ``runner`` (:func:`run_study`),
``report`` (summaries and pooling).
"""

from .meta import STUDY_FORMAT
from .objectives import ATTACKER_OBJECTIVES, OBJECTIVES, kkt_residual, objective_name
from .report import (
    PoolResult,
    check_keep,
    compare_scores,
    multiplier_order,
    pool_trials,
    study_summary,
    top_by_multiplier,
)
from .runner import run_study
from .space import SEARCH_SPACES, SEARCHABLE, search_space
from .storage import (
    TRIAL_FORMAT,
    default_storage_url,
    default_study_name,
    load_study,
    load_trial,
    make_storage,
)

__all__ = [
    "ATTACKER_OBJECTIVES",
    "OBJECTIVES",
    "SEARCHABLE",
    "SEARCH_SPACES",
    "STUDY_FORMAT",
    "TRIAL_FORMAT",
    "PoolResult",
    "check_keep",
    "compare_scores",
    "default_storage_url",
    "default_study_name",
    "kkt_residual",
    "load_study",
    "load_trial",
    "make_storage",
    "multiplier_order",
    "objective_name",
    "pool_trials",
    "run_study",
    "search_space",
    "study_summary",
    "top_by_multiplier",
]
