"""The claims of the source papers, as data: what each says, where it comes from, the labels it
compares (as runs record them), how its effect is measured, the rule and margin that decide it,
and which runs it applies to. Nothing here computes; :mod:`.evidence` measures each ``evidence``
kind, :mod:`.inference` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from normlab.claims.rules import Rule

ACCURACY_MARGIN = 0.01  # 1 percentage point of accuracy
RATE_MARGIN = 0.25  # 25 percentage points of divergence rate
GROWTH_MARGIN = 0.1  # natural log of the bias norm's growth: ±10 %

# The labels the claims compare, as the mode registry draws them (tests/test_claims.py checks
# that the registry knows each).
BATCH, GHOST = "batch", "batch (ghost)"
MA, MA_GRAD = "moving_average", "moving_average (grad through batch)"
RENORM, GROUP, ONLINE_NORM = "renorm", "group", "online"
# MABN as the paper trains it: the layer and the centred weights before it (model.centred_weights)
MABN_FULL = "mabn + centred weights"

# The momentum schedules a claim may fix per label, as runs record them (config.momentum.kind):
# conf/momentum/ramp.yaml, "a small initial decay raised later", is a linear schedule.
RAMP, CONSTANT = "linear", "constant"

EVIDENCE_KINDS = ("paired", "rates", "bias_growth", "across_batch_sizes", "precise_gain")


@dataclass(frozen=True)
class Where:
    """The runs of a claim's labels that test it: a sampler (``iid``: every sampler but
    ``non_iid``) and bounds on the statistics batch size; ``None`` leaves a key free."""

    sampler: str | None = None
    min_statistics_batch: int | None = None
    max_statistics_batch: int | None = None


@dataclass(frozen=True)
class Claim:
    """One claim. ``evidence`` names how its effect is measured (:data:`EVIDENCE_KINDS`):

    - ``paired``: final ``metric`` of ``labels[0]`` minus ``labels[1]``, paired by seed;
    - ``rates``: divergence rate of ``labels[0]`` minus that of ``labels[1]``;
    - ``bias_growth``: ln growth of the pre-norm bias norm, ``labels[0]`` minus ``labels[1]``,
      paired by seed;
    - ``across_batch_sizes``: final ``metric`` of ``labels[0]`` at each smaller batch size
      minus at the largest (``largest_first``: the largest minus each smaller); the batch size
      is the record's ``size`` column: ``batch_size``, or ``statistics_batch_size`` for the
      examples behind a statistic (images per GPU in a data-parallel run);
    - ``precise_gain``: ``val_acc_precise − val_acc_eval`` of the same runs of each label.

    ``schedules`` (``paired`` only): the momentum schedule (``config.momentum.kind``) each
    label's runs must have, in the order of ``labels``; then the schedule is what is compared,
    no longer a key that splits settings.

    ``reference_trains`` (``paired`` only): a claim that the first label trains *as well as* the
    second says nothing where the second did not train, so a setting in which the runs of
    ``labels[1]`` end on average less than :data:`ACCURACY_MARGIN` above chance (or below it)
    is *not testable*.
    """

    key: str
    source: str
    statement: str
    effect: str
    evidence: str
    labels: tuple[str, ...]
    rule: Rule
    needs: str
    where: Where = Where()
    metric: str = "val_acc_eval"
    largest_first: bool = False
    size: str = "batch_size"
    scale: float = 100.0
    unit: str = "pp"
    schedules: tuple[str, ...] = ()
    reference_trains: bool = False


BN = "Ioffe & Szegedy 2015 (arXiv 1502.03167)"
BRN = "Ioffe 2017, Batch Renormalization (arXiv 1702.03275)"
GN = "Wu & He 2018, Group Normalization (arXiv 1803.08494)"
ONLINE = "Chiley et al. 2019, Online Normalization (arXiv 1905.05894)"
RETHINKING = "Wu & Johnson 2021, Rethinking “Batch” in BatchNorm (arXiv 2105.07576)"
QUESTION = "The seed question's proposal (normlab README)"
MABN_PAPER = "Yan et al. 2020, Moving Average Batch Normalization (arXiv 2001.06838)"

GREATER = Rule("greater", ACCURACY_MARGIN)
NO_WORSE = Rule("no_worse", ACCURACY_MARGIN)
EQUIVALENT = Rule("equivalent", ACCURACY_MARGIN)
MORE_DIVERGENCE = Rule("greater", RATE_MARGIN)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "seed_question",
        f"{BN}, §2–3",
        "Training normalizes with mini-batch statistics because that trains better than "
        "normalizing with the moving averages, at every batch size",
        "acc(batch) − acc(moving_average), paired by seed, per batch size",
        "paired",
        (BATCH, MA),
        GREATER,
        "runs labelled batch and moving_average in one setting",
    ),
    Claim(
        "bn_blowup",
        f"{BN}, §2",
        "Normalizing with statistics the gradient step does not see makes the model blow up",
        "divergence rate of moving_average − rate of batch (Newcombe interval from Wilson)",
        "rates",
        (MA, BATCH),
        MORE_DIVERGENCE,
        "runs labelled moving_average and batch in one setting",
    ),
    Claim(
        "bn_bias_growth",
        f"{BN}, §2",
        "With the normalization outside the gradient step, the bias it cancels grows without bound",
        "ln growth of the pre-norm bias norm over a run, moving_average − batch, paired by seed",
        "bias_growth",
        (MA, BATCH),
        Rule("greater", GROWTH_MARGIN),
        "runs labelled moving_average and batch that log prenorm_bias_norm "
        "(model.bias_before_norm=true)",
        metric="prenorm_bias_norm",
        scale=1.0,
        unit="ln",
    ),
    Claim(
        "brn_backprop",
        f"{BRN}, §2",
        "Backpropagating through the batch moments is what prevents the blow-up",
        "divergence rate of moving_average − rate of moving_average (grad through batch)",
        "rates",
        (MA, MA_GRAD),
        MORE_DIVERGENCE,
        "runs labelled moving_average and moving_average (grad through batch) in one setting",
    ),
    Claim(
        "brn_large_batch",
        f"{BRN}, Fig. 1",
        "With i.i.d. batches of 32 or more, Batch Renormalization loses nothing against batchnorm",
        "acc(renorm) − acc(batch), paired by seed, i.i.d. batches of ≥ 32",
        "paired",
        (RENORM, BATCH),
        NO_WORSE,
        "i.i.d. runs labelled renorm and batch at batch size ≥ 32",
        Where(sampler="iid", min_statistics_batch=32),
    ),
    Claim(
        "brn_micro_batch",
        f"{BRN}, Fig. 2",
        "With micro-batches of 4, Batch Renormalization beats batchnorm",
        "acc(renorm) − acc(batch), paired by seed, i.i.d. batches of 4",
        "paired",
        (RENORM, BATCH),
        GREATER,
        "i.i.d. runs labelled renorm and batch at batch size 4",
        Where(sampler="iid", min_statistics_batch=4, max_statistics_batch=4),
    ),
    Claim(
        "brn_non_iid",
        f"{BRN}, Fig. 3",
        "With non-i.i.d. batches, Batch Renormalization beats batchnorm",
        "acc(renorm) − acc(batch), paired by seed, data.sampler=non_iid",
        "paired",
        (RENORM, BATCH),
        GREATER,
        "runs labelled renorm and batch with data.sampler=non_iid",
        Where(sampler="non_iid"),
    ),
    Claim(
        "gn_bn_degrades",
        f"{GN}, Fig. 1",
        "Batchnorm's error grows as the batch shrinks",
        "acc(batch) at the largest batch size − at each smaller one (Welch)",
        "across_batch_sizes",
        (BATCH,),
        GREATER,
        "runs labelled batch at two or more batch sizes in one setting",
        largest_first=True,
    ),
    Claim(
        "gn_flat",
        f"{GN}, Fig. 1",
        "GroupNorm's error stays flat as the batch shrinks",
        "acc(group) at each smaller batch size − at the largest (Welch)",
        "across_batch_sizes",
        (GROUP,),
        EQUIVALENT,
        "runs labelled group at two or more batch sizes in one setting",
    ),
    Claim(
        "gn_bn_per_gpu",
        f"{GN}, Fig. 1",
        "At a fixed total batch, batchnorm's error grows as the images per GPU shrink; "
        "statistics over the whole batch (synchronized) do not pay it",
        "acc(batch) with statistics over the whole batch − over each smaller per-device slice "
        "(Welch)",
        "across_batch_sizes",
        (BATCH,),
        GREATER,
        "runs labelled batch at one batch size with two or more statistics batch sizes "
        "(distributed.world_size, norm.sync)",
        largest_first=True,
        size="statistics_batch_size",
    ),
    Claim(
        "gn_flat_per_gpu",
        f"{GN}, Fig. 1",
        "At a fixed total batch, GroupNorm's error does not depend on the images per GPU",
        "acc(group) on each smaller per-device slice − on the whole batch (Welch)",
        "across_batch_sizes",
        (GROUP,),
        EQUIVALENT,
        "runs labelled group at one batch size on two or more world sizes (distributed.world_size)",
        size="statistics_batch_size",
    ),
    Claim(
        "online_flat",
        ONLINE,
        "Online Normalization's accuracy does not depend on the batch size",
        "acc(online) at each smaller batch size − at the largest (Welch)",
        "across_batch_sizes",
        (ONLINE_NORM,),
        EQUIVALENT,
        "runs labelled online at two or more batch sizes in one setting",
    ),
    Claim(
        "rethinking_small",
        f"{RETHINKING}, Table 2",
        "At small normalization batches the EMA is a poor population estimate: precise "
        "statistics recover part of the loss",
        "acc(precise statistics) − acc(EMA) of the same runs, statistics over ≤ 8 examples",
        "precise_gain",
        (BATCH, GHOST),
        GREATER,
        "runs labelled batch or batch (ghost) that log val_acc_precise, statistics batch ≤ 8",
        Where(max_statistics_batch=8),
    ),
    Claim(
        "rethinking_large",
        f"{RETHINKING}, Table 2",
        "At normalization batches of 32 or more the EMA is as good as precise statistics",
        "acc(precise statistics) − acc(EMA) of the same runs, statistics over ≥ 32 examples",
        "precise_gain",
        (BATCH, GHOST),
        EQUIVALENT,
        "runs labelled batch or batch (ghost) that log val_acc_precise, statistics batch ≥ 32",
        Where(min_statistics_batch=32),
    ),
    Claim(
        "seed_proposal",
        QUESTION,
        "With a small initial decay raised later, training with the moving averages trains as "
        "well as batch statistics",
        "acc(moving_average, momentum=ramp) − acc(batch, constant momentum), paired by seed, "
        "per batch size",
        "paired",
        (MA, BATCH),
        NO_WORSE,
        "runs labelled moving_average under momentum=ramp and batch under constant momentum in "
        "one study, model and data set",
        schedules=(RAMP, CONSTANT),
        reference_trains=True,
    ),
    Claim(
        "mabn_small_batch",
        f"{MABN_PAPER}, Table 1 / README",
        "At normalization batches of 2 to 4, MABN (with centred weights) trains better than "
        "batchnorm",
        "acc(mabn + centred weights) − acc(batch), paired by seed, statistics over ≤ 4 examples",
        "paired",
        (MABN_FULL, BATCH),
        GREATER,
        "runs labelled mabn + centred weights and batch at batch size ≤ 4",
        Where(max_statistics_batch=4),
    ),
)
