"""Negative sampling: drawn negatives satisfy the labeler's relation, fallbacks are exact and counted."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radlens.core import InputError
from radlens.data.labeler import identical_label_sets, no_positive_in_common
from radlens.data.schema import CHEXPERT_LABELS
from radlens.train.negatives import NegativeSampler

# A few labels and every CheXpert value (blank included), so identical / disjoint sets are common.
_LABELS = st.dictionaries(
    st.sampled_from(CHEXPERT_LABELS[:4]), st.sampled_from([1.0, 0.0, -1.0, None]), max_size=4
)

_VALID = {
    "R": lambda a, b: True,
    "NE": lambda a, b: not identical_label_sets(a, b),
    "NI": no_positive_in_common,
}


@settings(max_examples=60, deadline=None)
@given(
    label_sets=st.lists(_LABELS, min_size=2, max_size=12),
    strategy=st.sampled_from(["R", "NE", "NI"]),
    seed=st.integers(0, 2**16),
)
def test_negatives_satisfy_the_relation_or_fall_back(
    label_sets: list[dict[str, float | None]], strategy: str, seed: int
) -> None:
    sampler = NegativeSampler(label_sets, strategy)  # type: ignore[arg-type]
    valid = _VALID[strategy]
    has_valid = [
        any(valid(a, b) for j, b in enumerate(label_sets) if j != i) for i, a in enumerate(label_sets)
    ]
    assert sampler.fallback_items == has_valid.count(False)
    rng = np.random.default_rng(seed)
    for index, labels in enumerate(label_sets):
        for _ in range(4):
            other, fell_back = sampler.sample(index, rng)
            assert other != index and 0 <= other < len(label_sets)
            assert fell_back == (not has_valid[index])
            if not fell_back:
                assert valid(labels, label_sets[other])


def test_draws_are_uniform_over_the_valid_negatives() -> None:
    label_sets: list[dict[str, float | None]] = [
        {},  # no positive: NI-compatible with every set, including the other empty ones
        {"Edema": 1.0},
        {"Edema": 1.0, "Atelectasis": 1.0},
        {"Cardiomegaly": 1.0},
        {},
        {"Atelectasis": -1.0},  # uncertain is not positive: same label set as {}
        {"Cardiomegaly": 1.0, "Edema": 0.0},
    ]
    sampler = NegativeSampler(label_sets, "NI")
    rng = np.random.default_rng(0)
    for index in (0, 1, 3):
        expected = {
            j for j, b in enumerate(label_sets) if j != index and no_positive_in_common(label_sets[index], b)
        }
        counts = Counter(sampler.sample(index, rng)[0] for _ in range(3000))
        assert set(counts) == expected
        share = 3000 / len(expected)
        assert all(abs(count - share) < 0.15 * share for count in counts.values()), counts


def test_fallback_is_counted_when_no_valid_negative_exists() -> None:
    everyone_normal = [{"No Finding": 1.0}] * 5 + [{"No Finding": 1.0, "Support Devices": 1.0}]
    sampler = NegativeSampler(everyone_normal, "NI")
    assert sampler.fallback_items == 6  # everyone shares "No Finding"
    assert NegativeSampler(everyone_normal, "NE").fallback_items == 0
    other, fell_back = sampler.sample(2, np.random.default_rng(1))
    assert fell_back and other != 2


def test_sampling_is_deterministic_under_a_seed() -> None:
    label_sets = [{"Edema": 1.0}, {}, {"Pneumothorax": 1.0}, {"Edema": 1.0, "Pneumonia": 1.0}, {}]
    sampler = NegativeSampler(label_sets, "NE")
    first = [sampler.sample(i % 5, np.random.default_rng([3, i])) for i in range(20)]
    again = [sampler.sample(i % 5, np.random.default_rng([3, i])) for i in range(20)]
    other_seed = [sampler.sample(i % 5, np.random.default_rng([4, i])) for i in range(20)]
    assert first == again and first != other_seed


def test_bad_strategy_and_too_few_items() -> None:
    with pytest.raises(InputError, match="unknown negative strategy"):
        NegativeSampler([{}, {}], "XX")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least 2"):
        NegativeSampler([{}], "R")
