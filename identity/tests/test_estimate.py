"""m estimated from the data (identity.estimate): known m recovered within its bound, too few pairs and a
source whose ID is often wrong failing loudly, reviewers' links counted; the share of leads that have a
driver (the prior) recovered, bounded, failing on too few leads. `manage.py model_report` on a
generated park: recovery/tests/test_model_report.py (the demo generator sits above identity)."""

import numpy as np
import polars as pl
import pytest

from identity.estimate import (
    ANCHORS,
    MIN_SHARE_LEADS,
    SHARE_RANGE,
    EstimateOutOfRange,
    MEstimateError,
    TooFewPairs,
    m_estimate,
    m_probabilities,
    match_share_estimate,
)
from identity.fields import FIELDS, Kind

# The true m of every level in the synthetic pairs below: inside each declared range, and away from
# the declared m, so an estimate equal to the truth cannot be the registry's value handed back.
TRUE_M = {
    "document": {"exact": 0.88, "one_typo": 0.06, "two_typos": 0.02, "different": 0.04},
    "phone": {"exact": 0.70, "one_typo": 0.05, "different": 0.25},
    "email": {"exact": 0.88, "one_typo": 0.05, "different": 0.07},
    "plate": {"exact": 0.75, "one_typo": 0.05, "different": 0.20},
    "birth_date": {"exact": 0.90, "near": 0.06, "different": 0.04},
    "name": {"exact": 0.69, "surnames_swapped": 0.005, "typo": 0.08, "subset": 0.15, "partial": 0.03,
             "part_missing": 0.01, "surnames_only": 0.02, "given_only": 0.01, "different": 0.005},
}
# How often each side carries the field (a missing value is a null level).
PRESENT = {"document": 0.6, "phone": 0.9, "email": 0.3, "plate": 0.2, "birth_date": 0.25, "name": 1.0}


def _draw(rng, distribution: dict[str, float], n: int, present: float) -> list[str | None]:
    levels = rng.choice(list(distribution), size=n, p=np.array(list(distribution.values())))
    return [str(level) if keep else None for level, keep in zip(levels, rng.random(n) < present, strict=True)]


def _pairs(n_matches: int, *, true_m=TRUE_M, n_others: int = 0, seed: int = 5) -> pl.DataFrame:
    """Scored candidate pairs as identity.matching makes them: matches drawn from `true_m`, and
    candidates that are other persons (namesakes, a relative's phone, a shared car)."""
    rng = np.random.default_rng(seed)
    columns = {name: _draw(rng, true_m[name], n_matches, PRESENT[name]) for name in true_m}
    matches = pl.DataFrame(columns, schema={name: pl.String for name in true_m})
    u = {"document": {"exact": 0.001, "one_typo": 0.001, "two_typos": 0.001, "different": 0.997},
         "phone": {"exact": 0.3, "one_typo": 0.001, "different": 0.699},
         "email": {"exact": 0.001, "one_typo": 0.01, "different": 0.989},
         "plate": {"exact": 0.2, "one_typo": 0.001, "different": 0.799},
         "birth_date": {"exact": 0.001, "near": 0.01, "different": 0.989},
         "name": {"exact": 0.2, "surnames_swapped": 0.05, "typo": 0.05, "subset": 0.05, "partial": 0.05,
                  "part_missing": 0.05, "surnames_only": 0.25, "given_only": 0.2, "different": 0.1}}
    others = pl.DataFrame({name: _draw(rng, u[name], n_others, PRESENT[name]) for name in u},
                          schema={name: pl.String for name in u})
    return pl.concat([matches, others]).with_columns(pl.lit(False).alias("excluded"))


def test_every_declared_level_has_a_prior_range_around_its_declared_m():
    for f in FIELDS.values():
        for level in f.levels:
            lo, hi = level.m_range
            assert 0 < lo <= level.m <= hi <= 1, (f.name, level.name)
            assert (lo, hi) != (0.0, 1.0), f"{f.name}.{level.name} keeps the default range"


def test_an_anchor_never_uses_the_field_it_estimates():
    for name in FIELDS:
        assert name not in ANCHORS[name].fields()


def test_known_m_is_recovered_within_its_bound():
    estimate = m_estimate(_pairs(40_000, n_others=60_000))
    assert not estimate.failures
    for e in estimate.levels:
        if e.field not in TRUE_M:
            continue
        truth = TRUE_M[e.field][e.level]
        lo, hi = e.interval
        assert lo <= truth <= hi, (e.field, e.level, e.raw, truth)
        assert e.m_range[0] <= e.m <= e.m_range[1]
        # Far from the declared m when the truth is: estimated, not the registry's value back.
        if abs(truth - e.declared_m) > 0.05:
            assert abs(e.m - truth) < abs(e.m - e.declared_m)
    m = m_probabilities(_pairs(40_000, n_others=60_000))
    assert m["phone"]["exact"] == pytest.approx(0.70, abs=0.02)
    assert m["document"]["one_typo"] == pytest.approx(0.06, abs=0.01)


def test_a_rare_level_seen_zero_times_is_bounded_to_its_range_not_zero():
    true_m = {**TRUE_M, "name": {**TRUE_M["name"], "surnames_swapped": 0.0,
                                 "exact": TRUE_M["name"]["exact"] + TRUE_M["name"]["surnames_swapped"]}}
    estimate = m_estimate(_pairs(3_000, true_m=true_m))
    swapped = next(e for e in estimate.levels if (e.field, e.level) == ("name", "surnames_swapped"))
    assert swapped.count == 0 and swapped.status == "bounded" and swapped.m == swapped.m_range[0] > 0


def test_too_few_pairs_fail_loudly_instead_of_keeping_a_default():
    pairs = _pairs(60)
    estimate = m_estimate(pairs)
    document = [e for e in estimate.levels if e.field == "document"]
    assert all(e.status == "too_few_pairs" and e.m is None for e in document)
    with pytest.raises(TooFewPairs) as failure:
        m_probabilities(pairs)
    message = str(failure.value)
    assert failure.value.field == "document" and failure.value.level == "exact"
    assert f"rests on {document[0].pairs} pairs, fewer than the 100 required" in message
    assert f"declared range 0.8-0.995, estimate {document[0].raw:.4f}" in message


def test_a_source_whose_id_is_often_wrong_says_so():
    """FEBRL-like: the document disagrees for a third of true matches. A fixed m of .02 for
    'document differs' would punish the field for this source's errors; the estimator must refuse."""
    true_m = {**TRUE_M, "document": {"exact": 0.55, "one_typo": 0.10, "different": 0.35}}
    estimate = m_estimate(_pairs(5_000, true_m=true_m, n_others=5_000))
    different = next(e for e in estimate.levels if (e.field, e.level) == ("document", "different"))
    assert different.status == "out_of_range" and different.m is None
    assert different.raw == pytest.approx(0.35, abs=0.04) and different.raw > different.m_range[1]
    assert {(e.field, e.level) for e in estimate.failures} == {("document", "exact"), ("document", "different")}
    with pytest.raises(EstimateOutOfRange) as failure:
        m_probabilities(_pairs(5_000, true_m=true_m, n_others=5_000))
    message = str(failure.value)
    assert message.startswith("m of document.exact estimated 0.5")
    assert "is outside its declared range 0.8-0.995" in message and "(and 1 more level(s) failed)" in message
    assert isinstance(failure.value, MEstimateError)
    # The other fields still have their estimates, for the report.
    assert all(e.status in ("ok", "bounded") for e in estimate.levels if e.field != "document")


def test_reviewers_links_count_and_rejections_never_do():
    base = _pairs(2_000)
    # Pairs no anchor reaches (only a name and a phone): half linked by a reviewer, half rejected.
    lonely = pl.DataFrame({"phone": ["different"] * 40, "name": ["typo"] * 40}).with_columns(
        pl.Series("positive_label", [True] * 20 + [False] * 20), pl.Series("excluded", [False] * 20 + [True] * 20))
    estimate = m_estimate(pl.concat([base.with_columns(pl.lit(False).alias("positive_label")), lonely],
                                    how="diagonal_relaxed"))
    plain = m_estimate(base)
    phone = {e.level: e for e in estimate.levels if e.field == "phone"}
    phone_plain = {e.level: e for e in plain.levels if e.field == "phone"}
    assert phone["different"].judged_pairs == 20
    assert phone["different"].pairs == phone_plain["different"].pairs + 20
    assert phone["different"].count == phone_plain["different"].count + 20


def test_recruitment_counts_missing_as_not_hired():
    """The recruitment comparison yields a level only where it agrees; its m is the share of anchor
    pairs hired in the lead's park within the window."""
    pairs = _pairs(2_000).with_columns(
        pl.Series("recruitment", ["hired_after_lead" if i % 50 == 0 else None for i in range(2_000)]))
    assert FIELDS["recruitment"].kind == Kind.RECRUITMENT
    hired = next(e for e in m_estimate(pairs).levels if e.field == "recruitment")
    assert hired.raw == pytest.approx(0.02, abs=0.01) and hired.pairs > 1_000


def test_a_pair_a_person_said_is_not_a_match_never_teaches_m():
    base = _pairs(2_000)
    # Anchor pairs beyond doubt on their keys (document, phone and name exact) whose e-mail differs: had a
    # person not said "not this person" (an audit, a rejection), they would count towards email.different.
    wrong = pl.DataFrame({"document": ["exact"] * 30, "phone": ["exact"] * 30, "name": ["exact"] * 30,
                          "email": ["different"] * 30}).with_columns(
        pl.Series("negative_label", [True] * 25 + [False] * 5), pl.lit(False).alias("positive_label"))
    labelled = m_estimate(pl.concat([base.with_columns(pl.lit(False).alias("negative_label")), wrong],
                                    how="diagonal_relaxed"))
    plain = m_estimate(base)
    email = {e.level: e for e in labelled.levels if e.field == "email"}
    email_plain = {e.level: e for e in plain.levels if e.field == "email"}
    # Only the five unlabelled pairs join; the 25 negative labels are counted as kept out.
    assert email["different"].pairs == email_plain["different"].pairs + 5
    assert email["different"].count == email_plain["different"].count + 5
    assert email["different"].rejected_pairs == 25 and email_plain["different"].rejected_pairs == 0
    # A negative label wins over a positive one on the same pair.
    both = wrong.with_columns(pl.lit(True).alias("positive_label"))
    conflicting = m_estimate(pl.concat([base, both], how="diagonal_relaxed"))
    assert next(e for e in conflicting.levels if (e.field, e.level) == ("email", "different")).pairs == \
        email["different"].pairs


# --- The share of leads that have a driver (the prior) -----------------------------------------------

PERSONS = 200_000


def _lead_weights(n_leads: int, share: float, *, seed: int = 3, no_candidates: float = 0.1) -> pl.DataFrame:
    """Each lead's candidates' weights (log2 likelihood ratio): a lead with a driver has its driver among
    them (a key or two agreeing: 24-45 bits, against log2 N = 17.6) and namesakes like everyone else (-8 to
    +6 bits); some leads without a driver have no candidate at all."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_leads):
        pk = f"L{i}"
        if rng.random() < share:
            rows.append((pk, float(rng.uniform(24, 45))))
        elif rng.random() < no_candidates:
            continue
        rows.extend((pk, float(w)) for w in rng.uniform(-8, 6, size=rng.integers(1, 4)))
    return pl.DataFrame(rows, schema={"source_pk": pl.String, "weight": pl.Float64}, orient="row")


@pytest.mark.parametrize("share", [0.3, 0.72])
def test_the_share_of_leads_with_a_driver_is_recovered(share):
    estimate = match_share_estimate(_lead_weights(4_000, share), leads=4_000, persons=PERSONS)
    assert estimate.status == "ok" and not estimate.failed
    assert estimate.share == pytest.approx(share, abs=0.025)
    assert estimate.with_candidates < 4_000 and estimate.iterations > 1


def test_leads_without_candidates_count_as_leads_without_a_driver():
    weights = _lead_weights(2_000, 1.0, no_candidates=0.0)
    alone = match_share_estimate(weights, leads=2_000, persons=PERSONS)
    with_others = match_share_estimate(weights, leads=4_000, persons=PERSONS)
    assert with_others.share == pytest.approx(alone.raw / 2, abs=0.01)


def test_every_lead_with_a_driver_is_bounded_to_the_range_not_one():
    estimate = match_share_estimate(_lead_weights(2_000, 1.0), leads=2_000, persons=PERSONS)
    assert estimate.raw > SHARE_RANGE[1] and estimate.status == "bounded" and estimate.share == SHARE_RANGE[1]


def test_too_few_leads_for_the_share_fail_loudly():
    estimate = match_share_estimate(_lead_weights(100, 0.5), leads=100, persons=PERSONS)
    assert estimate.failed and estimate.share is None and estimate.status == "too_few_leads"
    assert estimate.error() == ("share of leads with a driver rests on 100 leads with an identifier, fewer than the "
                                f"{MIN_SHARE_LEADS} required")
