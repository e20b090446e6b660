"""The simulated sites of ``flarestream demo``: federated training that streams its
analytics through NVFlare's APIs (``AnalyticsSender``, ``SummaryWriter``,
``MLflowWriter``), as a real site's trainer would.

Each site trains for ``rounds`` rounds of ``steps`` local steps. Sites differ in data
(size, label skew, noise), so their curves differ: the training loss falls at each
site's own pace towards its own floor, jumps a little at the start of every round
(the new global model), and the validation accuracy climbs towards a site-specific
ceiling. Everything is seeded by the site's index: the same arguments give the same
curves.

What one site sends, and why the sinks can be counted against it: every record
below becomes exactly one TensorBoard event (scalar, text or image) and exactly one
MLflow entry (metric point, param, tag or artifact), so a sink holding every record
once holds exactly :func:`records_per_site` items per site.

- 4 params (``log_param``: learning_rate, batch_size, local_steps, optimizer)
- 2 tags (``set_tag``: hospital, data_split)
- ``steps`` per round: ``train/loss`` (``add_scalar``, step = global step)
- per round: ``val/accuracy`` and ``val/loss`` (``log_metric``, step = round), a
  text note (``add_text``) and a 32x32 RGB image (``add_image``)
- at the end: a markdown summary (``log_text`` to ``summary.md``)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from flarestream.producer import AnalyticsSender, MLflowWriter, SummaryWriter

LOSS_TAG = "train/loss"
ACCURACY_TAG = "val/accuracy"
VAL_LOSS_TAG = "val/loss"
HOSPITALS = ("Hospital A", "Clinic B", "University C", "Regional D", "Children's E")


def records_per_site(rounds: int, steps: int) -> int:
    """How many records one site sends (see the module doc)."""
    return 4 + 2 + rounds * (steps + 4) + 1


@dataclass(frozen=True)
class SiteProfile:
    """What makes one site's curves its own."""

    name: str
    index: int
    samples: int  # local data size
    skew: float  # 0 = iid, 1 = very skewed labels: slower, lower ceiling
    noise: float  # batch-to-batch loss noise

    @classmethod
    def make(cls, index: int) -> SiteProfile:
        # spread evenly (golden-ratio steps), so no two sites look alike
        return cls(
            name=f"site-{index + 1}",
            index=index,
            samples=(800, 5000, 1500, 3500, 1200, 2600, 4200, 2000)[index % 8],
            skew=round(0.05 + 0.85 * ((index * 0.618034) % 1), 2),
            noise=0.015 + 0.01 * (index % 3),
        )

    @property
    def learning_rate(self) -> float:
        return 0.05 if self.index % 2 else 0.01

    @property
    def optimizer(self) -> str:
        return "sgd" if self.index % 2 else "adam"


def train_loss(
    p: SiteProfile, rnd: int, local: int, rounds: int, steps: int, rng: random.Random
) -> float:
    """Loss at local step ``local`` of round ``rnd``: exponential decay to the site's
    floor over the whole job, a bump when a round starts from the new global model
    (larger for skewed data: the global model fits it worse), and batch noise."""
    t = (rnd * steps + local) / (rounds * steps)
    pace = 3 + 4 * (p.samples / 5000) * (1 - 0.5 * p.skew)
    floor = 0.05 + 0.35 * p.skew
    loss = floor + (2.3 - floor) * math.exp(-pace * t)
    if rnd:
        loss *= 1 + 0.25 * p.skew * math.exp(-local / max(1.0, steps / 10))
    return loss * (1 + rng.gauss(0.0, p.noise))


def val_accuracy(p: SiteProfile, rnd: int, rounds: int, rng: random.Random) -> float:
    """Validation accuracy after round ``rnd`` (0-based): climbs to the site's ceiling."""
    ceiling = 0.96 - 0.25 * p.skew
    pace = 3 + 3 * (p.samples / 5000) * (1 - 0.5 * p.skew)
    acc = 0.1 + (ceiling - 0.1) * (1 - math.exp(-pace * (rnd + 1) / rounds))
    return min(1.0, max(0.0, acc + rng.gauss(0.0, 0.004)))


def image(p: SiteProfile, rnd: int, rounds: int) -> Any:
    """A 32x32 RGB "prediction map": a blob in the site's colour that sharpens as the
    model learns (numpy array; a nested list when numpy is not installed)."""
    sharp = 1.0 + 6.0 * (rnd + 1) / max(1, rounds)
    colour = ((p.index * 97) % 256, (p.index * 57 + 80) % 256, (p.index * 31 + 160) % 256)

    def pixel(x: int, y: int) -> list[int]:
        d = math.hypot(x - 16, y - 16) / 16
        level = math.exp(-((d * sharp) ** 2))
        return [int(c * level + 30 * (1 - level)) for c in colour]

    pixels = [[pixel(x, y) for x in range(32)] for y in range(32)]
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the sender: nested lists encode too
        return pixels
    return np.asarray(pixels, dtype=np.uint8)


def simulate_site(
    profile: SiteProfile,
    *,
    job_id: str,
    rounds: int,
    steps: int,
    bootstrap: str,
    topic: str,
    counter: list[int],
    signing_key: object = None,
) -> int:
    """One site's training job. ``counter[profile.index]`` follows the records
    accepted so far (for a progress bar). Returns the records delivered: the
    sender's flush raises DeliveryError unless every accepted record was confirmed.
    ``signing_key``: as for :class:`AnalyticsSender` (a directory holding
    ``<site>.key`` signs each site with its own key)."""
    p, rng = profile, random.Random(profile.index)
    with AnalyticsSender(site=p.name, job_id=job_id, bootstrap_servers=bootstrap, topic=topic,
                         signing_key=signing_key) as s:  # fmt: skip
        tb, ml = SummaryWriter(s), MLflowWriter(s)
        params = {
            "learning_rate": p.learning_rate,
            "batch_size": 32,
            "local_steps": steps,
            "optimizer": p.optimizer,
        }
        for key, value in params.items():
            ml.log_param(key, value)
        ml.set_tag("hospital", HOSPITALS[p.index % len(HOSPITALS)])
        ml.set_tag("data_split", f"non-iid, label skew {p.skew:.2f}, {p.samples} samples")
        counter[p.index] += 6
        accuracy = 0.0
        for rnd in range(rounds):
            for local in range(steps):
                loss = train_loss(p, rnd, local, rounds, steps, rng)
                tb.add_scalar(LOSS_TAG, loss, global_step=rnd * steps + local)
            counter[p.index] += steps
            accuracy = val_accuracy(p, rnd, rounds, rng)
            ml.log_metric(ACCURACY_TAG, accuracy, step=rnd)
            ml.log_metric(VAL_LOSS_TAG, 1.2 * (1 - accuracy) + 0.05 * p.skew, step=rnd)
            s.add_text(
                "notes",
                f"{p.name}: round {rnd + 1}/{rounds} done, {steps} local steps on "
                f"{p.samples} samples, validation accuracy {accuracy:.3f}",
                global_step=rnd,
            )
            s.add_image("predictions", image(p, rnd, rounds), global_step=rnd)
            counter[p.index] += 4
        ml.log_text(
            f"# {p.name}\n\n{rounds} rounds x {steps} local steps, {p.optimizer} at "
            f"lr {p.learning_rate}; final validation accuracy **{accuracy:.3f}**\n",
            "summary.md",
        )
        counter[p.index] += 1
        s.flush()
        return int(s.stats["accepted"])
