"""Each upstream's measured performance: an exponentially weighted success rate and time.

Every attempt is a sample (``worked``): a refusal of a recipient or of the
message shows a working upstream (another would refuse it too); a failed
connection, TLS or AUTH, a timeout, a dropped connection, a 421
(``classify.upstream_failed``) or a 4xx to the whole transaction (MAIL or
DATA: it is not taking mail now, say throttling) shows a failing one. Each
sample weighs ``ALPHA``, so the last few dozen attempts decide. Samples are
merged per upstream per batch (``Batch``): the store applies
``old * keep + add`` in one upsert, so every node's samples add up and every
node reads the same figures.

The score is the success rate discounted by the attempt time; an upstream
never measured scores like a perfect one, so it is tried. Ordering by score
alone would starve an upstream that failed for a while and has recovered:
``EXPLORE`` of the messages instead lead with one of the others, drawn at
random, so its figures catch up.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from relay.core.classify import Stage, TransactionResult, upstream_failed

ALPHA = 0.1  # the weight of one sample
LATENCY_SCALE_SECONDS = 2.0  # an attempt this long halves the score
EXPLORE = 0.1  # the share of messages that lead with a lower-scored upstream


@dataclass(frozen=True)
class Performance:
    success_rate: float  # 0..1
    latency_seconds: float
    samples: int = 0
    updated_at: float = 0.0

    @property
    def score(self) -> float:
        return self.success_rate / (1.0 + self.latency_seconds / LATENCY_SCALE_SECONDS)

    def describe(self) -> str:
        return f"{self.score:.2f} ({self.success_rate:.0%} ok, {_duration(self.latency_seconds)})"


def worked(result: TransactionResult) -> bool:
    """Did the upstream take mail from us, or give a verdict on it?"""
    if upstream_failed(result):
        return False
    reply = result.reply
    if reply is None or result.stage not in (Stage.MAIL, Stage.DATA) or not reply.is_transient:
        return True
    return (reply.enhanced or "").startswith("4.2.")  # the mailbox is full or busy, not it


@dataclass(frozen=True)
class Sample:
    upstream: str
    ok: bool
    seconds: float


@dataclass(frozen=True)
class Batch:
    """Several samples of one upstream as one update: ``new = old * keep + add``."""

    upstream: str
    keep: float
    add_success: float
    add_latency: float
    samples: int

    def apply(self, old: Performance | None, now: float) -> Performance:
        if old is None:  # the first figures are the batch's own weighted mean
            weight = 1.0 - self.keep
            return Performance(
                self.add_success / weight, self.add_latency / weight, self.samples, now
            )
        return Performance(
            old.success_rate * self.keep + self.add_success,
            old.latency_seconds * self.keep + self.add_latency,
            old.samples + self.samples,
            now,
        )


def batches(samples: Iterable[Sample]) -> list[Batch]:
    """The samples merged per upstream, in the order they were taken."""
    merged: dict[str, tuple[float, float, float, int]] = {}
    for s in samples:
        keep, success, latency, count = merged.get(s.upstream, (1.0, 0.0, 0.0, 0))
        merged[s.upstream] = (
            keep * (1 - ALPHA),
            success * (1 - ALPHA) + ALPHA * (1.0 if s.ok else 0.0),
            latency * (1 - ALPHA) + ALPHA * s.seconds,
            count + 1,
        )
    return [Batch(name, *figures) for name, figures in merged.items()]


UNMEASURED = Performance(1.0, 0.0)


def score_of(performance: Mapping[str, Performance], upstream: str) -> float:
    return performance.get(upstream, UNMEASURED).score


def rank(
    names: Sequence[str], performance: Mapping[str, Performance], rng: random.Random
) -> tuple[list[str], str | None]:
    """The names best score first (ties in the given order), and the one drawn to lead
    instead, if any (the floor that lets a recovered upstream show it)."""
    ranked = sorted(names, key=lambda n: -score_of(performance, n))
    if len(ranked) > 1 and rng.random() < EXPLORE:
        explored = ranked.pop(rng.randrange(1, len(ranked)))
        return [explored, *ranked], explored
    return ranked, None


def describe_ranking(
    names: Sequence[str], performance: Mapping[str, Performance], explored: str | None
) -> str:
    """e.g. "fast 0.97 (99% ok, 120 ms) > slow 0.41 (45% ok, 1.9 s)"."""
    ordered = sorted(names, key=lambda n: -score_of(performance, n))  # the explored too
    text = " > ".join(f"{n} {_figures(performance, n)}" for n in ordered)
    return text + (f"; exploring {explored}" if explored else "")


def _figures(performance: Mapping[str, Performance], name: str) -> str:
    measured = performance.get(name)
    return measured.describe() if measured else "unmeasured"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
