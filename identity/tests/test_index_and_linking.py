"""The drivers index, person registration and linking on a real PostgreSQL."""

import threading
import uuid
from datetime import timedelta

import polars as pl
import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone

from identity import linking
from identity.index import drivers_index_refresh
from identity.models import (
    Driver,
    DriverChange,
    DriverIndexEntry,
    HiresPerDay,
    IdentityLink,
    IdentityOrigin,
    IdentityUnmatched,
    JobRun,
    NameTokenStat,
    Person,
)
from identity.normalize import name_key
from identity.resolution import leads_match, leads_resolve, unlinked_leads
from identity.tests.factories import LIMA, lima_today, link_lead, make_driver, make_lead, make_trips

pytestmark = pytest.mark.django_db


def _person_of(driver_id: str) -> str:
    return str(DriverIndexEntry.objects.get(driver_id=driver_id).person_id)


def test_refresh_normalizes_drivers_and_registers_persons():
    make_driver(driver_id="D1", first_name="José Luis", last_name="Ñahui Quispe", phone="987 123 456",
                document="DNI 44.556.677", email=" JL.Nahui@Gmail.com ", plate="abc-123")
    result = drivers_index_refresh()
    assert (result.changed, result.new_persons, result.driver_links) == (1, 1, 1)
    entry = DriverIndexEntry.objects.get(driver_id="D1")
    assert entry.phone == "+51987123456"
    assert entry.document == "44556677"
    assert entry.email == "jl.nahui@gmail.com"
    assert entry.plate == "ABC123"
    assert entry.given_tokens == ["jose", "luis"] and entry.surname_tokens == ["nahui", "quispe"]
    assert entry.name_key == name_key("José Luis", None, "Ñahui Quispe") == "jose luis nahui quispe"
    assert IdentityLink.objects.get(source_table="drivers", source_pk="D1").person_id == entry.person_id
    assert NameTokenStat.objects.get(token="quispe").drivers == 1
    assert JobRun.objects.filter(name="refresh_drivers_index", status="succeeded").count() == 1


def test_same_document_is_one_person_and_person_keys_are_stable():
    make_driver(driver_id="D1", document="44556677", park_id="park-a")
    drivers_index_refresh()
    first = _person_of("D1")
    # The same human drives for a second park: joins the existing person incrementally.
    make_driver(driver_id="D2", document="44556677", park_id="park-b")
    make_driver(driver_id="D3", document=None, license_number="Q44556677", park_id="park-c")
    result = drivers_index_refresh()
    assert result.changed == 2 and result.joined_existing == 2 and result.new_persons == 0
    assert _person_of("D2") == first == _person_of("D3")
    # A changed driver is re-normalized but keeps its person; an unchanged index does nothing.
    Driver.objects.filter(driver_id="D1").update(phone="912345678", updated_at=timezone.now())
    assert drivers_index_refresh().changed == 1
    assert _person_of("D1") == first
    assert drivers_index_refresh().changed == 0
    assert drivers_index_refresh(full=True).new_persons == 0 and _person_of("D1") == first


def _gin_pending_pages() -> int:
    """Pages waiting in the name index's GIN pending list (moving them also empties it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT gin_clean_pending_list('canon.drivers_index_name_gin'::regclass)")
        return cursor.fetchone()[0]


def test_an_incremental_refresh_leaves_no_gin_pending_list():
    """Name blocks read the whole pending list on every search: a refresh must not leave one."""
    for n in range(300):
        make_driver(first_name=f"Nombre{n}", last_name=f"Apellido{n} Segundo{n}")
    drivers_index_refresh()
    assert DriverIndexEntry.objects.count() == 300
    assert _gin_pending_pages() == 0


def test_name_token_stats_follow_changes():
    make_driver(driver_id="D1", first_name="Rosa", last_name="Quispe Flores")
    make_driver(driver_id="D2", first_name="Ana", last_name="Quispe Rojas")
    drivers_index_refresh()
    assert NameTokenStat.objects.get(token="quispe").drivers == 2
    Driver.objects.filter(driver_id="D2").update(last_name="Huamán Rojas", updated_at=timezone.now())
    drivers_index_refresh()
    assert NameTokenStat.objects.get(token="quispe").drivers == 1
    assert NameTokenStat.objects.get(token="huaman").drivers == 1
    incremental = dict(NameTokenStat.objects.values_list("token", "drivers"))
    drivers_index_refresh(full=True)
    assert dict(NameTokenStat.objects.values_list("token", "drivers")) == incremental


def test_the_refresh_takes_the_drivers_the_triggers_noted_and_only_those():
    make_driver(driver_id="D1", first_name="Rosa", last_name="Quispe Flores")
    make_driver(driver_id="D2", first_name="Ana", last_name="Rojas Luna")
    assert set(DriverChange.objects.values_list("driver_id", flat=True)) == {"D1", "D2"}  # inserted: noted
    drivers_index_refresh()
    assert not DriverChange.objects.exists()  # taken by the refresh
    # An operator's SQL that changes a name but not updated_at: noted all the same (comparing
    # updated_at with the entry's, as the refresh did before, would never see it).
    with connection.cursor() as cursor:
        cursor.execute("UPDATE public.drivers SET last_name = 'Huamán Luna' WHERE driver_id = 'D2'")
    assert list(DriverChange.objects.values_list("driver_id", flat=True)) == ["D2"]
    result = drivers_index_refresh()
    assert result.changed == 1 and not DriverChange.objects.exists()
    assert DriverIndexEntry.objects.get(driver_id="D2").surname_tokens == ["huaman", "luna"]
    # A noted driver deleted since is not indexed again; nothing noted, nothing changed.
    Driver.objects.filter(driver_id="D1").update(first_name="Rosa María")
    Driver.objects.filter(driver_id="D1").delete()
    assert drivers_index_refresh().changed == 0 and not DriverChange.objects.exists()


def _counts() -> tuple:
    with connection.cursor() as cursor:
        cursor.execute("SELECT drivers, persons FROM canon.drivers_index_counts")
        kept = cursor.fetchone()
        cursor.execute("SELECT count(*), count(DISTINCT person_key) FROM canon.drivers_index")
        counted = cursor.fetchone()
    hires = dict(((h.park_id, h.hire_date), h.hired) for h in HiresPerDay.objects.all())
    return kept, counted, hires


def test_the_index_counts_and_hires_per_day_follow_every_refresh_and_the_sql_path_reads_them():
    day = timezone.localdate()
    make_driver(driver_id="D1", first_name="Rosa", last_name="Quispe Flores", document="40000001", hire_date=day)
    make_driver(driver_id="D2", first_name="Rosa", last_name="Quispe Flores", document="40000001", hire_date=day)
    drivers_index_refresh()  # the first build: D1 and D2 are one person (same document)
    kept, counted, hires = _counts()
    assert kept == counted == (2, 1)
    assert list(hires.values()) == [2]
    make_driver(driver_id="D3", first_name="Ana", last_name="Rojas Luna", hire_date=day - timedelta(days=1))
    Driver.objects.filter(driver_id="D2").update(hire_date=day - timedelta(days=1), updated_at=timezone.now())
    drivers_index_refresh()  # incremental: one new driver and person, one hire date moved
    kept, counted, hires = _counts()
    assert kept == counted == (3, 2)
    assert sorted(hires.values()) == [1, 2] and sum(hires.values()) == 3
    Driver.objects.filter(driver_id="D3").delete()
    drivers_index_refresh(full=True)  # the full refresh drops the deleted driver's entry
    kept, counted, hires = _counts()
    assert kept == counted == (2, 1) and sorted(hires.values()) == [1, 1]
    # The SQL path (a lead arriving now) reads the kept counts; the in-memory path counts its records.
    from identity.candidates import IndexFrame, frequencies_load  # noqa: PLC0415 (the two paths side by side)

    from_sql, in_memory = frequencies_load(), IndexFrame.load().freq
    assert (from_sql.drivers, from_sql.persons) == (in_memory.drivers, in_memory.persons) == (2, 1)
    assert from_sql.hires_frame().sort("park_id", "hire_date").equals(in_memory.hires_frame().sort("park_id",
                                                                                                   "hire_date"))


def _park():
    make_driver(driver_id="D1", first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456", email=None,
                document="44556677", birth_date="1990-05-17")
    make_driver(driver_id="D2", first_name="Rosa", last_name="Flores Huamán", phone="912300400")
    drivers_index_refresh()


def test_match_links_origin_is_earliest_and_unmatched_recorded():
    _park()
    now = timezone.now()
    make_lead(id=1, first_name="QUISPE MAMANI JUAN CARLOS", last_name=None, phone="+51 987 123 456", email=None,
              birth_date=None, created_at=now - timedelta(days=3))
    make_lead(id=2, external_id="CAB-2", first_name="Juan Carlos", last_name="Quispe", document="44556677",
              phone="987-123-456", email=None, birth_date=None, created_at=now - timedelta(days=9))
    make_lead(id=3, first_name="Pedro", last_name="Ramos Soto", phone="912300400", created_at=now)
    make_lead(id=4, first_name="Pedro", last_name=None, phone=None, document=None, email=None, created_at=now)
    totals = leads_match()
    assert totals["linked"] == 2
    person = _person_of("D1")
    lead_links = IdentityLink.objects.filter(source_table="module_ct_cabinet_leads")
    assert set(lead_links.values_list("source_pk", flat=True)) == {"1", "CAB-2"}
    assert IdentityOrigin.objects.get(person_id=person).origin_source_id == "CAB-2"  # the earlier lead
    reasons = dict(IdentityUnmatched.objects.values_list("source_pk", "reason_code"))
    assert reasons == {"3": "WEAK_MATCH_ONLY", "4": "MISSING_IDENTIFIERS"}
    evidence = IdentityLink.objects.get(source_pk="1").evidence
    assert evidence["rule_version"] and evidence["candidates"][0]["fields"]
    # Idempotent: a second run finds nothing to do.
    assert leads_match()["linked"] == 0
    assert IdentityLink.objects.filter(source_table="module_ct_cabinet_leads").count() == 2


def test_negative_judgement_keeps_the_lead_from_that_person():
    _park()
    make_lead(id=1, first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456", email=None, birth_date=None)
    linking.judgement_record(source_pk="1", person_key=_person_of("D1"), verdict="not_this_person",
                             decided_by_name="reviewer")
    leads_match()
    assert not IdentityLink.objects.filter(source_pk="1").exists()


def test_automatic_run_never_overwrites_a_manual_link():
    _park()
    make_lead(id=1, first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456", email=None, birth_date=None)
    linking.leads_link(links=[linking.LeadLink("1", _person_of("D2"), "manual", None, "manual", {}, "manual")],
                       decided_by="ana.reviewer")
    outcome = leads_resolve(source_pks=["1"])
    assert outcome.decisions == {} and outcome.linked == []  # a linked lead is not decided again
    assert IdentityLink.objects.get(source_pk="1").decided_by == "ana.reviewer"
    # Even a decision made before the manual link landed cannot replace it.
    late = linking.leads_link(links=[linking.LeadLink("1", _person_of("D1"), "fellegi_sunter", 20.0, "high", {}, "r")])
    assert late.already_linked == ["1"]
    assert IdentityLink.objects.get(source_pk="1").decided_by == "ana.reviewer"


@pytest.mark.django_db(transaction=True)
def test_two_batches_racing_on_one_lead_make_one_link():
    _park()
    make_lead(id=1, first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456", email=None, birth_date=None)
    barrier = threading.Barrier(2)
    results = []

    def worker():
        try:
            barrier.wait()
            results.append(leads_resolve(source_pks=["1"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert IdentityLink.objects.filter(source_pk="1").count() == 1
    assert sorted(len(r.linked) for r in results) == [0, 1]


def test_explain_lead_masks_personal_data(capsys):
    _park()
    make_lead(id=1, first_name="Juan Carlos", last_name="Quispe Mamani", phone="987123456", document="44556677",
              email=None, birth_date=None)
    call_command("explain_lead", "1")
    out = capsys.readouterr().out
    assert "Decision: link" in out and "name" in out and "phone" in out
    assert "987123456" not in out and "44556677" not in out
    call_command("explain_lead", "1", "--show-pii")
    assert "+51987123456" in capsys.readouterr().out


def test_single_lead_path_uses_indexes():
    _park()
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT driver_id FROM canon.drivers_index WHERE name_tokens @> ARRAY['quispe','juan']")
        plan = " ".join(r[0] for r in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert "drivers_index_name_gin" in plan


def test_shards_split_the_leads_without_overlap():
    _park()
    for n in range(1, 21):
        make_lead(id=n, first_name="Rosa", last_name="Flores Huamán", phone=None, email=None)
    shards = [set(unlinked_leads(shard=(i, 3))) for i in range(3)]
    assert sum(len(s) for s in shards) == 20
    assert set.union(*shards) == set(unlinked_leads())


def test_recruitment_evidence_end_to_end_from_the_drivers_hire_date():
    """Hire date: drivers -> index (and kept by incremental refreshes) -> the evidence a reviewer sees."""
    today = lima_today()
    make_driver(driver_id="D1", first_name="Wilmer", last_name="Ccahuana Huillca", phone="911222333",
                document=None, email=None, plate=None, birth_date=None, park_id="park-a", hire_date=today)
    drivers_index_refresh()
    assert DriverIndexEntry.objects.get(driver_id="D1").hire_date == today
    lead_day = today - timedelta(days=2)
    created = timezone.datetime.combine(lead_day, timezone.datetime.min.time().replace(hour=10), tzinfo=LIMA)
    # A new phone, nothing else but the name: a reviewer decides, and sees the hire in the lead's park.
    make_lead(id=1, first_name="WILMER", last_name="CCAHUANA HUILLCA", phone="955666777", document=None,
              email=None, plate=None, birth_date=None, park_id="park-b", created_at=created)
    make_lead(id=2, first_name="Wilmer", last_name="Ccahuana Huillca", phone="955666777", document=None,
              email=None, plate=None, birth_date=None, park_id="park-a", created_at=created)

    leads_match()

    assert not IdentityLink.objects.filter(source_table="module_ct_cabinet_leads").exists()
    in_park = IdentityUnmatched.objects.get(source_pk="2")
    assert in_park.reason_code == "WEAK_MATCH_ONLY"
    fields = {f["field"]: f["level"] for f in in_park.details["candidates"][0]["fields"]}
    assert fields["recruitment"] == "hired_after_lead"
    # Lead 1 applied in another park: no hire evidence.
    other = IdentityUnmatched.objects.get(source_pk="1")
    assert "recruitment" not in {f["field"] for f in other.details["candidates"][0]["fields"]}

    Driver.objects.filter(driver_id="D1").update(hire_date=today - timedelta(days=400), updated_at=timezone.now())
    drivers_index_refresh()
    assert DriverIndexEntry.objects.get(driver_id="D1").hire_date == today - timedelta(days=400)


def _indexes_and_constraints() -> set:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
            WHERE indrelid IN ('canon.drivers_index'::regclass, 'canon.identity_links'::regclass)
            UNION ALL
            SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid IN ('canon.drivers_index'::regclass, 'canon.identity_links'::regclass)
            """
        )
        return set(cursor.fetchall())


def test_a_bulk_refresh_builds_every_index_and_foreign_key_again():
    before = _indexes_and_constraints()
    assert any(kind == "constraint" and "FOREIGN KEY" in definition for kind, _, definition in before)
    make_driver(driver_id="D1", document="44556677")
    make_driver(driver_id="D2", document="44556677")
    result = drivers_index_refresh(full=True)
    assert "rebuild_indexes" in result.phases and result.driver_links == 2
    assert _indexes_and_constraints() == before
    assert _person_of("D1") == _person_of("D2")
    assert uuid.UUID(_person_of("D1")).version == 4
    with connection.cursor() as cursor:  # the first build emptied the unlinked set (drivers_first_write)
        cursor.execute("SELECT count(*) FROM canon.drivers_unlinked")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT t, count(*) FROM canon.drivers_index, unnest(name_tokens) t GROUP BY t")
        direct = dict(cursor.fetchall())
    assert direct and {s.token: s.drivers for s in NameTokenStat.objects.all()} == direct


def test_a_first_build_leaves_a_driver_it_did_not_read_listed_as_unlinked(monkeypatch):
    # The first build empties canon.drivers_unlinked instead of deleting a million rows through its
    # trigger, then lists again the drivers still without a link: here one imported after its read.
    make_driver(driver_id="D1", document="44556677")
    drawn = linking.drivers_first_persons

    def with_a_late_driver(drivers):
        make_driver(driver_id="LATE", document="11223344")
        return drawn(drivers)

    monkeypatch.setattr(linking, "drivers_first_persons", with_a_late_driver)
    result = drivers_index_refresh(full=True)
    assert result.driver_links == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT driver_id FROM canon.drivers_unlinked")
        assert cursor.fetchall() == [("LATE",)]
        cursor.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'drivers_unlinked_link_insert'")
        assert cursor.fetchone() == ("O",)  # enabled again


def test_a_first_build_stamps_its_persons_links_and_entries_with_its_transaction_time():
    # Left to the columns' default (migration 0019), the time of the build's one transaction: with the
    # statement's time each COPY would stamp its own.
    make_driver(driver_id="D1", document="44556677")
    make_driver(driver_id="D2", document="11223344")
    drivers_index_refresh(full=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT array_agg(DISTINCT created_at) FROM canon.identity_registry),"
                       " (SELECT array_agg(DISTINCT linked_at) FROM canon.identity_links),"
                       " (SELECT array_agg(DISTINCT indexed_at) FROM canon.drivers_index)")
        persons, links, entries = cursor.fetchone()
    assert len(persons) == 1
    assert persons == links == entries


def test_a_first_build_leaves_the_lead_window_kept_for_leads_linked_after_it():
    # Its driver links are copied with the lead window's insert trigger disabled (their persons are new):
    # enabled again, it fills the window of a lead linked after the build.
    driver = make_driver(driver_id="D1", document="44556677")
    lead = make_lead(days_ago=5)
    make_trips(driver, start=lead.lead_date, counts=[2, 3])
    drivers_index_refresh(full=True)
    link_lead(lead, Person.objects.get(pk=_person_of("D1")))
    with connection.cursor() as cursor:
        cursor.execute("SELECT trips_14d FROM ops.lead_window_14d WHERE lead_source_pk = %s", [lead.source_pk])
        assert cursor.fetchone() == (5,)
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'canon.identity_links'::regclass"
                       " AND NOT tgisinternal AND tgenabled <> 'O'")
        assert cursor.fetchall() == []


def _links_on_stale_statistics(cursor, *, persons: int, leads: int) -> list[str]:
    """`persons` persons with a driver link each and `leads` leads, the links table analyzed before any
    lead link exists (a match run's start after a first build). Returns the person keys."""
    cursor.execute("INSERT INTO canon.identity_registry (person_key) "
                   "SELECT gen_random_uuid() FROM generate_series(1, %s)", [persons])
    cursor.execute(
        "INSERT INTO canon.identity_links (source_table, source_pk, person_key, match_rule, confidence_level, evidence,"
        " rule_version, decided_by) SELECT 'drivers', 'D' || row_number() OVER (), person_key, 'driver_registration',"
        " 'high', '{}', 'index-1', 'system' FROM canon.identity_registry")
    cursor.execute("INSERT INTO public.module_ct_cabinet_leads (id, created_at) "
                   "SELECT n, now() - n * interval '1 minute' FROM generate_series(1, %s) n", [leads])
    cursor.execute("ANALYZE canon.identity_links")
    cursor.execute("SELECT person_key::text FROM canon.identity_registry ORDER BY person_key")
    return [row[0] for row in cursor.fetchall()]


def _lead_links(first: int, last: int, person_keys: list[str]) -> pl.DataFrame:
    pks = [str(n) for n in range(first, last + 1)]
    return pl.DataFrame({"source_pk": pks, "person_key": person_keys[:len(pks)], "match_rule": "fs_personal_key",
                         "match_score": 20.0, "confidence_level": "high", "evidence": "{}", "rule_version": "r"},
                        schema={name: pl.Float64 if name == "match_score" else pl.String
                                for name in linking.LINK_COLUMNS})


def test_a_batch_of_links_reads_its_own_persons_not_every_lead_link_written_before_it():
    # Statistics taken before the run's first lead link made the (source_table, source_pk) index look
    # like the cheap way to a person's lead links: the origins statement and the lead-window trigger
    # then read every lead link written so far, at every batch (16 ms growing to 500 ms at 70,000).
    with connection.cursor() as cursor:
        person_keys = _links_on_stale_statistics(cursor, persons=6000, leads=5700)
        linking.leads_link_frame(links=_lead_links(1, 5000, person_keys))
        cursor.execute("SELECT pg_stat_get_xact_tuples_returned('canon.identity_link_one_per_source'::regclass)")
        before = cursor.fetchone()[0]
        outcome = linking.leads_link_frame(links=_lead_links(5001, 5700, person_keys[5000:]))
        cursor.execute("SELECT pg_stat_get_xact_tuples_returned('canon.identity_link_one_per_source'::regclass)")
        read = cursor.fetchone()[0] - before
    assert len(outcome.linked) == 700 and outcome.origins_written == 700
    # Each new link's own entry, looked up a few times (the lead window, the unmatched rows): not 5,700.
    assert read <= 3 * 700, f"{read} entries of the (source_table, source_pk) index read for a batch of 700 links"
