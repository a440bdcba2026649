"""`manage.py model_report` (identity.resolution) on a generated park, on PostgreSQL: every level printed with
the pairs behind it, reviewers' links counted, a failed estimate ending with one line and exit status 1.

Here rather than in identity/tests because the park comes from the demo generator (recovery.demo), which
sits above identity; the estimator's own tests are identity/tests/test_estimate.py.
"""

import csv
import json
import math
from datetime import date

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from identity import linking
from identity.fields import FIELDS
from identity.importing import source_import
from identity.index import drivers_index_refresh
from identity.models import IdentityLink, IdentityUnmatched, ReasonCode, Verdict
from identity.resolution import leads_match
from recovery.demo.generator import demo_data_generate
from recovery.models import AuditItem


@pytest.fixture
def matched_park(db, tmp_path, settings):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    demo_data_generate(out_dir=tmp_path, end_date=date(2026, 3, 1), drivers=4_000, leads=1_000, seed=3)
    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv")):
        assert source_import(kind=kind, path=tmp_path / name).rejected == 0
    drivers_index_refresh()
    leads_match()
    return tmp_path


def _weak_lead_and_candidate() -> tuple[str, str]:
    row = IdentityUnmatched.objects.filter(reason_code=ReasonCode.WEAK_MATCH_ONLY).order_by("source_pk").first()
    return row.source_pk, row.details["candidates"][0]["person_key"]


def test_model_report_prints_every_level_and_the_pairs_behind_it(matched_park, capsys):
    source_pk, person_key = _weak_lead_and_candidate()
    linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.LINK,
                             decided_by_name="ana.revisora")
    call_command("model_report", "--json", "--min-pairs", "30")
    report = json.loads(capsys.readouterr().out)
    assert report["leads"] > 900 and not report["failures"]
    levels = {(e["field"], e["level"]): e for e in report["levels"]}
    assert set(levels) == {(f.name, level.name) for f in FIELDS.values() for level in f.levels}
    name_exact = levels[("name", "exact")]
    assert name_exact["pairs"] >= 30 and name_exact["judged_pairs"] == 1
    assert name_exact["m_range"][0] <= name_exact["m"] <= name_exact["m_range"][1]
    assert name_exact["u"] == "term frequency" and name_exact["weight_bits"] is None
    typo = levels[("document", "one_typo")]
    assert typo["weight_bits"] == pytest.approx(math.log2(typo["m"] / typo["u"]))

    call_command("model_report", "--min-pairs", "30")
    text = capsys.readouterr().out
    assert "declared m" in text and "estimated m" in text and "term frequency" in text
    assert "name: 2 of document, phone, email, birth_date exact, or a reviewer linked the pair" in text
    assert text.rstrip().endswith("every estimate within its declared range")
    # The share of leads with a driver, beside the park's truth: leads with an identifier whose human drives.
    with (matched_park / "ground_truth.csv").open() as f:
        truth = [row for row in csv.DictReader(f) if row["has_identifier"] == "1"]
    true_share = sum(bool(row["true_driver_ids"]) for row in truth) / len(truth)
    share = report["share"]
    assert share["status"] == "ok" and share["leads"] > 900
    assert share["share"] == pytest.approx(true_share, abs=0.05)
    assert report["prior_bits"] == pytest.approx(math.log2(share["share"] / (share["persons"] - share["share"])))
    assert f"share of leads with a driver: {share['share']:.4f}" in text


def test_model_report_counts_the_labels_behind_each_estimate(matched_park, capsys):
    from recovery.review.audit import audit_verdict_record  # noqa: PLC0415 (only this test audits)
    from recovery.tests.factories import reviewer  # noqa: PLC0415

    # A reviewer's link (positive), an audit's "same person" on an automatic link (positive) and its "not
    # the same person" on another (negative: the link is undone and the pair leaves the anchors).
    source_pk, person_key = _weak_lead_and_candidate()
    linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.LINK,
                             decided_by_name="ana.revisora")
    confirmed, rejected = IdentityLink.objects.filter(source_table="module_ct_cabinet_leads", decided_by="system",
                                                      evidence__candidates__0__fields__0__level="exact",
                                                      ).order_by("source_pk")[:2]
    ana = reviewer("ana.revisora")
    for link, verdict in ((confirmed, "same"), (rejected, "not_same")):
        item = AuditItem.objects.create(source_pk=link.source_pk, person_id=link.person_id, kind="link", stratum="x")
        assert audit_verdict_record(item_id=item.pk, verdict=verdict, user=ana).applied
    call_command("model_report", "--json", "--min-pairs", "30")
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == {"positive": 2, "negative": 1, "positive_in_pairs": 2, "negative_in_pairs": 1}
    levels = {(e["field"], e["level"]): e for e in report["levels"]}
    # The rejected pair agrees on the document and the name: an anchor for phone, had nobody rejected it.
    assert levels[("name", "exact")]["judged_pairs"] == 2
    assert levels[("phone", "exact")]["rejected_pairs"] == 1

    call_command("model_report", "--min-pairs", "30")
    text = capsys.readouterr().out
    assert "+labels" in text and "-labels" in text
    assert "labels: 2 positive (a reviewer linked, an auditor confirmed), 1 negative" in text
    assert "among these pairs +2 / -1" in text


def test_model_report_exits_1_with_one_line_when_an_estimate_fails(matched_park, capsys):
    with pytest.raises(CommandError) as failure:
        call_command("model_report", "--min-pairs", "1000000")
    assert failure.value.returncode == 1
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("m estimate failed: m of document.exact rests on ")
    assert "fewer than the 1000000 required" in message
    assert "TOO_FEW_PAIRS" in capsys.readouterr().out  # the table is still printed, the failure flagged
