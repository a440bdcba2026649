"""recovery.review.audit and quality: the audit sample (strata, sizes, never twice, dry run), the blind
screen and its verdicts, the estimates (Wilson intervals) in audit_report and the quality API."""

import json
import random
import threading
import time
from datetime import datetime
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connections
from django.urls import reverse
from rest_framework.test import APIClient

from identity.index import drivers_index_refresh
from identity.models import IdentityLink, IdentityLinkHistory, IdentityUnmatched, JobRun
from identity.tests.factories import link_lead, make_driver, make_lead, make_person
from recovery.models import AuditItem
from recovery.review.audit import allocate, audit_sample, audit_verdict_record, sample_size, score_band
from recovery.review.quality import Cell, audit_report, stratified_estimate, wilson_interval
from recovery.tests.factories import recover, reviewer

pytestmark = pytest.mark.django_db
LIMA = ZoneInfo("America/Lima")
# +/- 10 points at 95 %, p = 0.5: n0 = 1.959964^2 * 0.25 / 0.01 = 96.03
WIDE = {"precision_half_width": 0.1, "confidence": 0.95, "expected_proportion": 0.5, "max_per_run": 200}


def _links(count: int, *, rule: str, score: float, month: datetime | None = None) -> list[IdentityLink]:
    return [link_lead(make_lead(), make_person(), match_rule=rule, evidence={"rule": rule, "score": score},
                      match_score=score, linked_at=month) for _ in range(count)]


def _below(count: int, *, score: float, excluded: bool = False) -> list[str]:
    pks = []
    for _ in range(count):
        lead, person = make_lead(), make_person()
        IdentityUnmatched.objects.create(
            source_table="module_ct_cabinet_leads", source_pk=lead.source_pk, reason_code="WEAK_MATCH_ONLY",
            snapshot_date=lead.lead_date,
            details={"score": score, "thresholds": {"link": 8.0, "margin": 6.0, "weak": -6.0},
                     "candidates": [{"person_key": str(person.person_key), "score": score, "fields": [],
                                     "excluded_by_judgement": excluded or None}]})
        pks.append(lead.source_pk)
    return pks


@pytest.fixture
def wide(settings):
    settings.CT4_AUDIT = WIDE


def test_sample_size_is_the_proportion_formula_with_the_finite_population_correction():
    # n = 96.03 / (1 + 95.03 / N), rounded up: 50 -> 33.11 -> 34; 20 -> 16.70 -> 17; 5 -> 5.
    assert [sample_size(population=n, half_width=0.1, confidence=0.95) for n in (50, 20, 5, 0)] == [34, 17, 5, 0]
    # The settings' default (+/- 0.5 %): n0 = 38414.6 (38415 rounded up); a stratum of 1000 -> 974.7 -> 975.
    assert sample_size(population=10**12, half_width=0.005, confidence=0.95) == 38415
    assert sample_size(population=1000, half_width=0.005, confidence=0.95) == 975


def test_allocate_shares_the_cap_evenly_and_passes_on_what_a_small_stratum_leaves():
    assert allocate({"a": 34, "b": 17}, cap=200) == {"a": 34, "b": 17}
    assert allocate({"a": 34, "b": 17}, cap=10) == {"a": 5, "b": 5}
    assert allocate({"a": 100, "b": 1, "c": 0}, cap=5) == {"a": 4, "b": 1, "c": 0}
    assert allocate({"a": 3, "b": 2, "c": 1}, cap=2) == {"a": 1, "b": 1, "c": 0}
    # The demo park's plan: four score bands and 25 leads below the threshold, 200 a run.
    assert allocate({"fs|30+": 2180, "fs|12-20": 629, "fs|20-30": 417, "fs|<12": 132, "below_threshold": 25},
                    cap=200) == {"fs|30+": 44, "fs|12-20": 44, "fs|20-30": 44, "fs|<12": 43, "below_threshold": 25}


def test_score_bands():
    assert [score_band(s) for s in (None, 8.0, 11.99, 12.0, 25.0, 30.0, 80.0)] == \
        ["<12", "<12", "<12", "12-20", "20-30", "30+", "30+"]


def test_strata_sizes_and_the_plan(wide):
    _links(50, rule="document_exact", score=35.0)
    _links(20, rule="phone_and_name", score=14.0)
    _links(3, rule="phone_and_name", score=14.0)
    IdentityLink.objects.filter(pk=_links(1, rule="manual_review", score=40.0)[0].pk).update(decided_by="ana")
    _below(10, score=5.0)
    _below(4, score=0.5)  # more than 6 bits under the threshold: not "just below"
    _below(2, score=7.0, excluded=True)  # a reviewer already rejected the best candidate
    out = StringIO()
    call_command("audit_sample", "--seed", "lima", stdout=out)
    plan = {(s["stratum"]): s for s in _plan_json("--seed", "lima", "--dry-run")["strata"]}
    assert {k: (v["population"], v["target"], v["already"], v["drawn"]) for k, v in plan.items()} == {
        "document_exact|30+": (50, 34, 34, 0),
        "phone_and_name|12-20": (23, 19, 19, 0),
        "below_threshold": (10, 10, 10, 0),
    }
    counts = {s: AuditItem.objects.filter(stratum=s).count() for s in plan}
    assert counts == {"document_exact|30+": 34, "phone_and_name|12-20": 19, "below_threshold": 10}
    text = out.getvalue()
    assert "document_exact|30+" in text and "drew 63 audit items (seed lima" in text
    assert not AuditItem.objects.filter(source_pk__in=IdentityLink.objects.exclude(decided_by="system")
                                        .values("source_pk")).exists()
    assert AuditItem.objects.filter(kind="below_threshold").values("source_pk").distinct().count() == 10


def _plan_json(*args) -> dict:
    out = StringIO()
    call_command("audit_sample", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_never_twice_the_cap_and_the_seed(wide):
    _links(50, rule="document_exact", score=35.0)
    first = _plan_json("--n", "10", "--seed", "s1")
    assert first["drawn"] == 10
    second = _plan_json("--n", "10", "--seed", "s1")
    assert second["drawn"] == 10
    pairs = list(AuditItem.objects.values_list("source_pk", "person_id"))
    assert len(pairs) == len(set(pairs)) == 20
    rest = audit_sample(seed="s1")
    assert rest.drawn == 14 and AuditItem.objects.count() == 34  # the target, and nothing more
    assert audit_sample(seed="s2").drawn == 0


def test_the_same_seed_draws_the_same_items(wide):
    _links(30, rule="document_exact", score=35.0)
    _plan_json("--n", "5", "--seed", "lima", "--dry-run")
    assert not AuditItem.objects.exists()
    audit_sample(n=5, seed="lima")
    drawn = set(AuditItem.objects.values_list("source_pk", flat=True))
    AuditItem.objects.all().delete()
    audit_sample(n=5, seed="lima")
    assert set(AuditItem.objects.values_list("source_pk", flat=True)) == drawn
    AuditItem.objects.all().delete()
    audit_sample(n=5, seed="cusco")
    assert set(AuditItem.objects.values_list("source_pk", flat=True)) != drawn


def test_dry_run_writes_nothing(wide):
    _links(5, rule="document_exact", score=35.0)
    runs = JobRun.objects.count()
    result = _plan_json("--dry-run")
    assert result["dry_run"] is True and result["drawn"] == 5
    assert not AuditItem.objects.exists() and JobRun.objects.count() == runs


def test_run_limits_the_population_to_the_links_of_that_run(wide):
    old = datetime(2026, 1, 10, 12, tzinfo=LIMA)
    _links(5, rule="document_exact", score=35.0, month=old)
    _links(3, rule="document_exact", score=35.0)
    run = JobRun.objects.create(name="recover_kpi_red_leads", status="succeeded",
                                started_at=datetime(2026, 1, 10, 11, tzinfo=LIMA),
                                finished_at=datetime(2026, 1, 10, 13, tzinfo=LIMA))
    with pytest.raises(CommandError, match="there is no job run") as error:
        call_command("audit_sample", "--run", str(run.pk + 1000), stdout=StringIO())
    assert error.value.returncode == 2 and not AuditItem.objects.exists()
    result = audit_sample(source_run_id=run.pk, seed="x")
    assert result.drawn == 5
    assert set(AuditItem.objects.values_list("source_pk", flat=True)) == set(
        IdentityLink.objects.filter(linked_at=old).values_list("source_pk", flat=True))


def test_wilson_intervals_against_known_values():
    low, high = wilson_interval(8 / 10, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = wilson_interval(1.0, 50)
    assert (round(low, 4), round(high, 4)) == (0.9287, 1.0)
    low, high = wilson_interval(0.0, 20)
    assert (round(low, 4), round(high, 4)) == (0.0, 0.1611)


def _answer(items, verdicts: list[str], user) -> None:
    for item, verdict in zip(items, verdicts, strict=True):
        assert audit_verdict_record(item_id=item.pk, verdict=verdict, user=user).applied


def test_verdicts_are_stored_once_and_a_second_is_refused(ana):
    link = _links(1, rule="document_exact", score=35.0)[0]
    audit_sample(seed="x")
    item = AuditItem.objects.get()
    outcome = audit_verdict_record(item_id=item.pk, verdict="not_same", user=ana, note="otra persona, DNI distinto")
    assert outcome.status == "recorded"
    item.refresh_from_db()
    assert (item.verdict, item.decided_by, item.decided_by_name, item.note) == \
        ("not_same", ana, "ana.revisora", "otra persona, DNI distinto")
    assert item.decided_at is not None
    # "Not the same person" on a link undoes it, in the reviewer's name, the note kept in the reason.
    assert outcome.link_undone and outcome.undo.undone_by == "ana.revisora"
    assert "undone by ana.revisora" in outcome.message
    assert not IdentityLink.objects.filter(pk=link.pk).exists()
    history = IdentityLinkHistory.objects.get(source_pk=link.source_pk)
    assert (history.audit_item_id, history.undone_via, history.undone_by, history.reason) == \
        (item.pk, "audit", ana, f"audit item {item.pk}: not the same person (otra persona, DNI distinto)")
    second = audit_verdict_record(item_id=item.pk, verdict="same", user=reviewer("luis.revisor"))
    assert second.status == "already_decided" and not second.applied and second.undo is None
    assert "ana.revisora already answered \u201cNot the same person\u201d" in second.message
    item.refresh_from_db()
    assert item.verdict == "not_same" and item.decided_by_name == "ana.revisora"
    assert IdentityLinkHistory.objects.count() == 1
    assert audit_verdict_record(item_id=item.pk + 1000, verdict="same", user=ana).status == "not_found"
    assert audit_verdict_record(item_id=item.pk, verdict="maybe", user=ana).status == "invalid"


@pytest.fixture
def verdicts(settings, ana):
    """A hand-made set: in January 2026, rule A (30+: 60 links, 10 audited: 8 same, 2 not) and rule B
    (12-20: 40 links, 5 audited: 5 same); in February, rule A (20 links, 4 audited: 3 same, 1 cannot
    tell); below the threshold, 6 sampled: 1 same, 4 not, 1 cannot tell."""
    settings.CT4_AUDIT = {**WIDE, "precision_half_width": 0.5}  # n0 = 3.84: at most 4 per stratum drawn
    jan, feb = datetime(2026, 1, 15, 12, tzinfo=LIMA), datetime(2026, 2, 15, 12, tzinfo=LIMA)
    a_jan = _links(60, rule="rule_a", score=35.0, month=jan)
    b_jan = _links(40, rule="rule_b", score=15.0, month=jan)
    a_feb = _links(20, rule="rule_a", score=35.0, month=feb)
    below = _below(6, score=6.5)

    def items(links):
        return [AuditItem.objects.create(source_pk=link.source_pk, person_id=link.person_id, kind="link",
                                         stratum=f"{link.match_rule}|x") for link in links]
    _answer(items(a_jan[:10]), ["same"] * 8 + ["not_same"] * 2, ana)
    _answer(items(b_jan[:5]), ["same"] * 5, ana)
    _answer(items(a_feb[:4]), ["same"] * 3 + ["cannot_tell"], ana)
    below_items = [AuditItem.objects.create(
        source_pk=pk, person_id=IdentityUnmatched.objects.get(source_pk=pk).details["candidates"][0]["person_key"],
        kind="below_threshold", stratum="below_threshold", sampled_at=feb) for pk in below]
    _answer(below_items, ["same", "not_same", "not_same", "not_same", "not_same", "cannot_tell"], ana)


def _expected_jan() -> tuple[float, float, float]:
    # W_A = 0.6, p_A = 0.8 (n 10); W_B = 0.4, p_B = 1.0 (n 5): p = 0.88. Each stratum's variance Agresti-Coull
    # style: p~_h = (x_h + z^2/2) / (n_h + z^2), var = sum W_h^2 p~_h (1 - p~_h) / (n_h + z^2);
    # n_eff = p~ (1 - p~) / var - z^2 with p~ = sum W_h p~_h; Wilson(0.88, n_eff).
    z2 = 1.959964 ** 2
    a, b = (8 + z2 / 2) / (10 + z2), (5 + z2 / 2) / (5 + z2)
    variance = 0.36 * a * (1 - a) / (10 + z2) + 0.16 * b * (1 - b) / (5 + z2)
    adjusted = 0.6 * a + 0.4 * b
    p = 0.6 * 0.8 + 0.4 * 1.0
    low, high = wilson_interval(p, adjusted * (1 - adjusted) / variance - z2)
    return round(p, 6), round(low, 6), round(high, 6)


def test_one_stratum_gives_wilsons_interval_and_an_all_confirmed_stratum_still_counts_its_uncertainty():
    one = stratified_estimate([Cell(links=500, audited=40, confirmed=38, rejected=2)])
    assert (one.precision_low, one.precision_high) == pytest.approx(wilson_interval(38 / 40, 40), abs=1e-6)
    # Two strata, the big one's sample all confirmed: the interval is no narrower than the small stratum's
    # share of it would allow (the variance p_h (1 - p_h) / n_h of an all-confirmed stratum is 0).
    two = stratified_estimate([Cell(links=9000, audited=30, confirmed=30), Cell(links=1000, audited=30, confirmed=29,
                                                                               rejected=1)])
    alone = stratified_estimate([Cell(links=9000, audited=30, confirmed=30)])
    assert two.precision_low < alone.precision_high and two.precision_low <= 0.975


def test_the_stratified_interval_covers_the_true_precision_95_times_in_100():
    # Strata of known size and precision near 1, samples of 60 each, 1,000 draws: a 95 % interval must
    # hold the population's precision about 95 % of the time (the old variance, p_h (1 - p_h) / n_h,
    # covered it 81 % of the time here: strata whose sample showed no wrong link counted no uncertainty).
    rng = random.Random(5)
    strata = [(8000, 0.99), (2000, 0.98), (1000, 0.995), (500, 0.96)]
    truth = sum(size * p for size, p in strata) / sum(size for size, _ in strata)
    held = 0
    for _ in range(1000):
        cells = []
        for size, p in strata:
            wrong = round(size * (1 - p))
            drawn_wrong = sum(i < wrong for i in rng.sample(range(size), 60))
            cells.append(Cell(links=size, audited=60, confirmed=60 - drawn_wrong, rejected=drawn_wrong))
        estimate = stratified_estimate(cells)
        held += estimate.precision_low <= truth <= estimate.precision_high
    assert 0.93 <= held / 1000 <= 0.99


def _check_report(report: dict) -> None:
    periods = {p["month"]: p for p in report["periods"]}
    assert list(periods) == ["2026-01", "2026-02", "all"]
    jan = periods["2026-01"]
    overall = jan["overall"]
    assert (overall["links"], overall["audited"], overall["confirmed"], overall["rejected"],
            overall["cannot_tell"]) == (100, 15, 13, 2, 0)
    assert (overall["precision"], overall["precision_low"], overall["precision_high"]) == pytest.approx(
        _expected_jan(), abs=1e-6)
    rules = {r["rule"]: r for r in jan["rules"]}
    assert (rules["rule_a"]["precision"], round(rules["rule_a"]["precision_low"], 3),
            round(rules["rule_a"]["precision_high"], 3)) == (0.8, 0.490, 0.943)
    assert (rules["rule_b"]["links"], rules["rule_b"]["confirmed"], rules["rule_b"]["precision"]) == (40, 5, 1.0)
    feb = periods["2026-02"]["overall"]
    assert (feb["links"], feb["audited"], feb["confirmed"], feb["rejected"], feb["cannot_tell"], feb["precision"]) == \
        (20, 4, 3, 0, 1, 1.0)
    everything = periods["all"]
    assert everything["overall"]["links"] == 120 and everything["overall"]["audited"] == 19
    # rule_a over both months: one stratum (rule_a|30+), 80 links, 11 same / 2 not.
    assert {r["rule"]: r["precision"] for r in everything["rules"]}["rule_a"] == round(11 / 13, 6)
    assert periods["2026-01"]["below_threshold"]["sampled"] == 0  # drawn in February
    below = everything["below_threshold"]
    assert below == periods["2026-02"]["below_threshold"]
    low, high = wilson_interval(1 / 5, 5)
    assert (below["sampled"], below["audited"], below["confirmed"], below["rejected"], below["cannot_tell"]) == \
        (6, 6, 1, 4, 1)
    assert (below["true_match_share"], below["share_low"], below["share_high"]) == \
        pytest.approx((0.2, low, high), abs=1e-6)


def test_audit_report_on_hand_made_verdicts(verdicts):
    _check_report(audit_report())
    out = StringIO()
    call_command("audit_report", "--json", stdout=out)
    _check_report(json.loads(out.getvalue()))
    out = StringIO()
    call_command("audit_report", stdout=out)
    assert "rule_a" in out.getvalue() and "0.8000 [0.4902, 0.9433]" in out.getvalue()


def test_quality_api_permission_and_figures(verdicts, ana):
    url = "/api/v1/identity/quality"
    assert reverse("api:identity-quality") == url
    assert APIClient().get(url).status_code in (401, 403)
    clerk = get_user_model().objects.create_user("clerk", password="x-lima-2026")
    client = APIClient()
    client.force_authenticate(clerk)
    assert client.get(url).status_code == 403
    client.force_authenticate(ana)  # the reviewer group views every recovery table, audit items included
    response = client.get(url)
    assert response.status_code == 200
    _check_report(response.json())


@pytest.fixture
def linked_twin():
    """A lead the matcher links automatically (the pipeline's own evidence, rule and score)."""
    driver = make_driver(first_name="Nélida", last_name="Soncco Tintaya", phone="987123456", document="44556677")
    lead = make_lead(days_ago=5, first_name="Nélida", last_name="Soncco Tintaya", phone="987 123 456",
                     document="DNI 44.556.677", email=None, birth_date=None)
    drivers_index_refresh()
    recover()
    link = IdentityLink.objects.get(source_table="module_ct_cabinet_leads", source_pk=lead.source_pk)
    assert link.decided_by == "system"
    audit_sample(seed="lima")
    return lead, driver, link, AuditItem.objects.get(source_pk=lead.source_pk)


def test_the_audit_screen_is_blind(client, ana, linked_twin):
    lead, driver, link, item = linked_twin
    client.force_login(ana)
    listing = client.get(reverse("review:list"), {"kind": "audit"}).content.decode()
    assert f'data-item="{item.pk}"' in listing and reverse("review:audit", args=[item.pk]) in listing
    assert link.match_rule not in listing and item.stratum not in listing
    response = client.get(reverse("review:audit", args=[item.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert lead.source_pk in html and driver.driver_id[:10] in html and "Soncco Tintaya" in html
    assert "44556677" in html  # the values themselves, field by field
    lowered = html.lower()
    for hidden in (link.match_rule, item.stratum, "score", "bits", "confidence", "evidence", link.rule_version):
        assert hidden.lower() not in lowered, hidden
    assert f"{link.match_score:.1f}" not in html and f"{link.evidence['score']}" not in html
    assert 'data-status="' not in html  # no field verdicts from the engine either
    assert "<b>undoes the link</b>" in html
    for answer in ("Same person", "Not the same person", "Cannot tell"):
        assert f">{answer}</button>" in html


def test_a_verdict_through_the_screen_and_a_second_refused(client, ana, linked_twin):
    lead, _, link, item = linked_twin
    client.force_login(ana)
    url = reverse("review:audit", args=[item.pk])
    response = client.post(url, {"verdict": "same", "note": "mismo DNI y celular"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("review:list") + "?kind=audit"
    item.refresh_from_db()
    assert (item.verdict, item.decided_by_name, item.note) == ("same", "ana.revisora", "mismo DNI y celular")
    client.force_login(reviewer("luis.revisor"))
    response = client.post(url, {"verdict": "not_same"}, follow=True)
    text = response.content.decode()
    assert "na.revisora already answered \u201cSame person\u201d" in text and "Your answer was not recorded" in text
    item.refresh_from_db()
    assert item.verdict == "same"
    assert IdentityLink.objects.filter(pk=link.pk).exists()
    assert 'id="audit-verdict"' in client.get(url).content.decode()


def test_the_audit_screen_needs_the_reviewer_permission(client, linked_twin):
    *_, item = linked_twin
    url = reverse("review:audit", args=[item.pk])
    assert client.get(url).status_code == 302
    client.force_login(get_user_model().objects.create_user("clerk", password="x-lima-2026", is_staff=True))
    assert client.get(url).status_code == 403
    assert client.post(url, {"verdict": "same"}).status_code == 403
    item.refresh_from_db()
    assert item.verdict is None


@pytest.mark.django_db(transaction=True)
def test_two_answers_at_the_same_moment_record_exactly_one(monkeypatch):
    _links(1, rule="document_exact", score=35.0)
    audit_sample(seed="x")
    item = AuditItem.objects.get()
    users = {"ana.revisora": "same", "bob.revisor": "not_same"}
    accounts = {name: reviewer(name) for name in users}
    # Widen the window between the check and the write: without the item's row lock both answers
    # would find it open and both would be recorded.
    save = AuditItem.save

    def slow_save(self, *args, **kwargs):
        time.sleep(0.5)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(AuditItem, "save", slow_save)
    barrier = threading.Barrier(2)
    outcomes = {}

    def answer(name):
        try:
            barrier.wait()
            outcomes[name] = audit_verdict_record(item_id=item.pk, verdict=users[name], user=accounts[name])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=answer, args=(name,)) for name in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.status for o in outcomes.values()) == ["already_decided", "recorded"]
    winner = next(name for name, o in outcomes.items() if o.status == "recorded")
    item.refresh_from_db()
    assert (item.decided_by_name, item.verdict) == (winner, users[winner])
    loser = next(o for o in outcomes.values() if o.status == "already_decided")
    assert f"{winner} already answered" in loser.message


def test_every_confirmed_or_rejected_audit_answer_is_a_label_and_a_below_threshold_one_links_nothing(ana):
    from identity.estimate import labels_load  # noqa: PLC0415 (the model's view of the verdicts)
    from identity.models import IdentityJudgement  # noqa: PLC0415

    link = _links(1, rule="fs_personal_key", score=25.0)[0]
    same_below, other_below, unsure_below = _below(3, score=6.5)

    def below_item(pk: str) -> AuditItem:
        candidate = IdentityUnmatched.objects.get(source_pk=pk).details["candidates"][0]["person_key"]
        return AuditItem.objects.create(source_pk=pk, person_id=candidate, kind="below_threshold",
                                        stratum="below_threshold")

    item = AuditItem.objects.create(source_pk=link.source_pk, person_id=link.person_id, kind="link", stratum="x")
    items = [item, below_item(same_below), below_item(other_below), below_item(unsure_below)]
    _answer(items, ["same", "same", "not_same", "cannot_tell"], ana)
    judgements = {j.source_pk: j for j in IdentityJudgement.objects.all()}
    assert set(judgements) == {link.source_pk, same_below, other_below}  # "cannot tell" is no label
    judgement = judgements[link.source_pk]
    assert (judgement.person_id, judgement.verdict, judgement.decided_by) == (link.person_id, "link", ana)
    assert judgement.note == f"audit item {item.pk}: same person"
    assert (judgements[same_below].verdict, judgements[other_below].verdict) == ("link", "not_this_person")
    assert judgements[other_below].note == f"audit item {items[2].pk}: not the same person"
    assert sorted(labels_load().rows(), key=lambda row: not row[2]) == [
        *sorted([(link.source_pk, str(link.person_id), True), (same_below, str(items[1].person_id), True)]),
        (other_below, str(items[2].person_id), False)]
    # Below the threshold an answer links nothing: the leads stay unmatched, in the review list.
    assert not IdentityLink.objects.filter(source_pk__in=[same_below, other_below]).exists()
    assert IdentityUnmatched.objects.filter(source_pk__in=[same_below, other_below], status="open").count() == 2
