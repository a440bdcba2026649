"""ops.lead_window_14d equals its direct computation after every kind of write, and the guardrail's repair.

Each test compares three things: the kept table, the direct SQL (recovery.lead_window.DIRECT_SQL) and an
independent computation in Python from the source rows (the person's driver links, their trips in
[lead_date, lead_date + 14), the milestones with a claim row).
"""

import threading
import time
from collections import defaultdict
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from identity.domain import CLAIM_WINDOW_DAYS
from identity.importing import source_import
from identity.models import DRIVERS_TABLE, LEADS_TABLE, CabinetLead, Claim, DriverTrips, IdentityLink
from identity.tests.factories import (
    lima_datetime,
    lima_today,
    link_driver,
    link_lead,
    make_driver,
    make_lead,
    make_person,
    make_trips,
)
from recovery import lead_window
from recovery.claims import claims_create_expected
from recovery.sql_views import CabinetFinancial14d

pytestmark = pytest.mark.django_db


def _rows(sql: str, params=None) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {pk: (str(person), list(drivers), trips, list(claimed))
                for pk, person, drivers, trips, claimed in cursor.fetchall()}


def kept() -> dict:
    return _rows(f"SELECT {lead_window.COLUMNS} FROM {lead_window.TABLE}")


def direct() -> dict:
    return _rows(f"SELECT {lead_window.COLUMNS} FROM ({lead_window.DIRECT_SQL}) d")


def computed() -> dict:
    """The figure from the source rows, in Python."""
    lead_dates = dict(CabinetLead.objects.values_list("source_pk", "lead_date"))
    lead_person, person_drivers = {}, defaultdict(list)
    for table, pk, person in IdentityLink.objects.values_list("source_table", "source_pk", "person_id"):
        if table == LEADS_TABLE and pk in lead_dates:
            lead_person[pk] = str(person)
        elif table == DRIVERS_TABLE:
            person_drivers[str(person)].append(pk)
    trips = list(DriverTrips.objects.values_list("driver_id", "date", "trips"))
    claimed = defaultdict(set)
    for pk, milestone in Claim.objects.values_list("lead_source_pk", "milestone"):
        claimed[pk].add(milestone)
    figure = {}
    for pk, person in lead_person.items():
        start, end = lead_dates[pk], lead_dates[pk] + timedelta(days=CLAIM_WINDOW_DAYS)
        drivers = sorted(person_drivers[person])
        in_window = sum(n for d, day, n in trips if d in drivers and start <= day < end)
        figure[pk] = (person, drivers, in_window, sorted(claimed[pk]))
    return figure


def assert_in_step() -> dict:
    figure = kept()
    assert figure == direct() == computed()
    return figure


def trips_of(lead) -> int:
    return kept()[lead.source_pk][2]


def write_csv(path, header: str, rows: list[str]):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def family():
    """Ana has two driver records and two leads (two windows); Beto one driver and one lead; one lead unlinked."""
    ana, beto = make_person(), make_person()
    d_ana_1 = make_driver(driver_id="D-ANA-LIMA")
    d_ana_2 = make_driver(driver_id="D-ANA-CALLAO", park_id="park-callao")
    d_beto = make_driver(driver_id="D-BETO")
    for driver, person in ((d_ana_1, ana), (d_ana_2, ana), (d_beto, beto)):
        link_driver(driver, person)
    lead_ana_first = make_lead(days_ago=40, first_name="Ana María", last_name="Quispe Huamán")
    lead_ana_again = make_lead(days_ago=20, external_id="CAB-2026-000201", first_name="Ana María")
    lead_beto = make_lead(days_ago=30, first_name="Beto", last_name="Ñahui Condori")
    lead_alone = make_lead(days_ago=25)
    link_lead(lead_ana_first, ana)
    link_lead(lead_ana_again, ana)
    link_lead(lead_beto, beto)
    return {"ana": ana, "beto": beto, "d_ana_1": d_ana_1, "d_ana_2": d_ana_2, "d_beto": d_beto,
            "lead_ana_first": lead_ana_first, "lead_ana_again": lead_ana_again, "lead_beto": lead_beto,
            "lead_alone": lead_alone}


def test_linked_leads_have_a_row_and_no_trips_yet(family):
    figure = assert_in_step()

    assert set(figure) == {family["lead_ana_first"].source_pk, family["lead_ana_again"].source_pk,
                           family["lead_beto"].source_pk}
    assert figure[family["lead_ana_first"].source_pk] == (
        str(family["ana"].person_key), ["D-ANA-CALLAO", "D-ANA-LIMA"], 0, [])


def test_trips_imported_and_reimported_through_the_importer(family, tmp_path):
    first = family["lead_ana_first"].lead_date
    again = family["lead_ana_again"].lead_date
    beto = family["lead_beto"].lead_date
    header = "driver_id,date,trips"
    rows = [
        f"D-ANA-LIMA,{first - timedelta(days=1)},50",  # the day before the window
        f"D-ANA-LIMA,{first},2",
        f"D-ANA-CALLAO,{first + timedelta(days=13)},3",  # the window's last day
        f"D-ANA-CALLAO,{first + timedelta(days=14)},40",  # the day after
        f"D-ANA-CALLAO,{again},30",  # the second lead's window
        f"D-BETO,{beto + timedelta(days=5)},7",
        f"D-NOBODY,{beto},9",  # a driver no link names
    ]
    result = source_import(kind="trips", path=write_csv(tmp_path / "trips.csv", header, rows))
    assert result.inserted == 7

    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 5
    assert trips_of(family["lead_ana_again"]) == 30
    assert trips_of(family["lead_beto"]) == 7

    # Re-import: one count corrected (UPDATE), one day added (INSERT), the rest unchanged.
    rows[1] = f"D-ANA-LIMA,{first},12"
    rows.append(f"D-BETO,{beto + timedelta(days=6)},1")
    result = source_import(kind="trips", path=write_csv(tmp_path / "trips.csv", header, rows))
    assert (result.inserted, result.updated) == (1, 1)

    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 15
    assert trips_of(family["lead_beto"]) == 8


def test_trips_written_deleted_and_truncated_in_bulk(family):
    first = family["lead_ana_first"].lead_date
    with connection.cursor() as cursor:
        # one statement, 60 rows over both of Ana's windows and beyond
        cursor.execute(
            "INSERT INTO public.driver_trips (driver_id, date, trips, imported_at) "
            "SELECT d, %s::date + g, 1, now() "
            "FROM generate_series(0, 29) g, unnest(ARRAY['D-ANA-LIMA', 'D-ANA-CALLAO']) d",
            [first],
        )
    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 28 and trips_of(family["lead_ana_again"]) == 20

    DriverTrips.objects.filter(driver_id="D-ANA-CALLAO", date__lt=first + timedelta(days=7)).update(trips=3)
    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 28 + 7 * 2

    DriverTrips.objects.filter(driver_id="D-ANA-LIMA").delete()
    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 7 * 3 + 7

    with connection.cursor() as cursor:
        cursor.execute("UPDATE public.driver_trips SET date = date + 30 WHERE driver_id = 'D-ANA-CALLAO'")
    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 0

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE public.driver_trips")
    assert {trips for _, _, trips, _ in assert_in_step().values()} == {0}


def test_links_added_and_removed(family):
    ana, d_ana_1 = family["ana"], family["d_ana_1"]
    first = family["lead_ana_first"].lead_date
    make_trips(d_ana_1, {first: 4})
    new_driver = make_driver(driver_id="D-ANA-NUEVO")
    make_trips(new_driver, {first + timedelta(days=1): 6})
    assert trips_of(family["lead_ana_first"]) == 4

    driver_link = link_driver(new_driver, ana)  # a driver link added: every lead of the person
    figure = assert_in_step()
    assert figure[family["lead_ana_first"].source_pk][1:3] == (["D-ANA-CALLAO", "D-ANA-LIMA", "D-ANA-NUEVO"], 10)

    lead_link = link_lead(family["lead_alone"], ana)  # a lead link added: that lead
    assert_in_step()
    assert family["lead_alone"].source_pk in kept()

    driver_link.delete()  # a driver link removed
    assert_in_step()
    assert trips_of(family["lead_ana_first"]) == 4

    lead_link.delete()  # a lead link removed: its row goes
    assert family["lead_alone"].source_pk not in assert_in_step()

    IdentityLink.objects.filter(source_table=DRIVERS_TABLE, person=ana).delete()  # a person with no driver left
    assert assert_in_step()[family["lead_ana_first"].source_pk][1:3] == ([], 0)


def test_a_driver_linked_to_another_person(family):
    first = family["lead_ana_first"].lead_date
    beto_only = family["lead_beto"].lead_date + timedelta(days=5)  # in Beto's window, in neither of Ana's
    make_trips(family["d_ana_2"], {first: 5, beto_only: 11})
    assert (trips_of(family["lead_ana_first"]), trips_of(family["lead_beto"])) == (5, 0)

    # moved by UPDATE (an admin fix): both persons' leads follow
    IdentityLink.objects.filter(source_table=DRIVERS_TABLE, source_pk="D-ANA-CALLAO").update(person=family["beto"])
    figure = assert_in_step()
    assert (trips_of(family["lead_ana_first"]), trips_of(family["lead_beto"])) == (0, 11)
    assert figure[family["lead_beto"].source_pk][1] == ["D-ANA-CALLAO", "D-BETO"]

    # moved back by delete + insert (how the linking service would do it), in one transaction
    with transaction.atomic():
        IdentityLink.objects.filter(source_table=DRIVERS_TABLE, source_pk="D-ANA-CALLAO").delete()
        link_driver("D-ANA-CALLAO", family["ana"])
    assert_in_step()
    assert (trips_of(family["lead_ana_first"]), trips_of(family["lead_beto"])) == (5, 0)

    # a link re-pointed to another source record
    IdentityLink.objects.filter(source_table=DRIVERS_TABLE, source_pk="D-BETO").update(source_pk="D-ANA-CALLAO-2")
    assert_in_step()


def test_leads_imported_after_their_link_moved_and_deleted(family, tmp_path):
    ana = family["ana"]
    make_trips(family["d_ana_1"], {lima_today() - timedelta(days=10): 3, lima_today() - timedelta(days=3): 8})
    link_lead("CAB-2026-000777", ana)  # a link written before its lead arrives
    assert "CAB-2026-000777" not in assert_in_step()

    created = lima_datetime(lima_today() - timedelta(days=12), hour=9)
    source_import(kind="cabinet_leads", path=write_csv(
        tmp_path / "leads.csv", "id,external_id,created_at,first_name,last_name",
        [f"777,CAB-2026-000777,{created.isoformat()},Ana María,Quispe Huamán"]))
    assert_in_step()
    assert kept()["CAB-2026-000777"][2] == 11

    # the lead's date moves (created_at corrected): its window moves with it
    CabinetLead.objects.filter(id=777).update(created_at=created + timedelta(days=8))
    assert_in_step()
    assert kept()["CAB-2026-000777"][2] == 8

    CabinetLead.objects.filter(id=777).delete()
    assert "CAB-2026-000777" not in assert_in_step()

    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # Django's deferred FK checks block a TRUNCATE
        cursor.execute("TRUNCATE public.module_ct_cabinet_leads")
    assert assert_in_step() == {}


def test_claims_imported_reconciled_moved_and_truncated(family, tmp_path):
    ana_first, beto, alone = family["lead_ana_first"], family["lead_beto"], family["lead_alone"]
    make_trips(family["d_ana_1"], {ana_first.lead_date: 6})
    header = "lead_source_pk,driver_id,milestone,amount,status"
    rows = [f"{ana_first.source_pk},D-ANA-LIMA,1,25.00,paid", f"{beto.source_pk},D-BETO,5,35.00,rejected",
            f"{alone.source_pk},,1,25.00,claimed"]  # an unlinked lead's claim: no row for it
    source_import(kind="claims", path=write_csv(tmp_path / "claims.csv", header, rows))
    figure = assert_in_step()
    assert (figure[ana_first.source_pk][3], figure[beto.source_pk][3]) == ([1], [5])
    assert alone.source_pk not in figure

    claims_create_expected()  # the reconcile job fills milestone 5 (6 trips), as expected
    assert assert_in_step()[ana_first.source_pk][3] == [1, 5]

    # a status change is not a move; a milestone corrected is
    Claim.objects.filter(lead_source_pk=beto.source_pk).update(status="claimed")
    Claim.objects.filter(lead_source_pk=beto.source_pk).update(milestone=25)
    assert assert_in_step()[beto.source_pk][3] == [25]
    Claim.objects.filter(lead_source_pk=beto.source_pk).update(lead_source_pk=ana_first.source_pk)
    figure = assert_in_step()
    assert (figure[ana_first.source_pk][3], figure[beto.source_pk][3]) == ([1, 5, 25], [])

    Claim.objects.filter(lead_source_pk=ana_first.source_pk, milestone=1).delete()
    assert assert_in_step()[ana_first.source_pk][3] == [5, 25]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE public.cabinet_milestone_claims")
    assert {tuple(claimed) for *_, claimed in assert_in_step().values()} == {()}


def test_views_and_claims_read_the_same_figure(family):
    first = family["lead_ana_first"].lead_date
    make_trips(family["d_ana_1"], {first: 3})
    make_trips(family["d_ana_2"], {first + timedelta(days=2): 4})

    money = {row.lead_source_pk: row for row in CabinetFinancial14d.objects.all()}
    figure = assert_in_step()
    for pk, (person, drivers, trips, _claimed) in figure.items():
        assert (str(money[pk].person_key), money[pk].driver_ids, money[pk].trips_14d) == (person, drivers, trips)
    alone = money[family["lead_alone"].source_pk]
    assert (alone.person_key, alone.driver_ids, alone.driver_count, alone.trips_14d) == (None, [], 0, 0)

    claims_create_expected(source_pks=[family["lead_ana_first"].source_pk])
    claims = dict(Claim.objects.filter(lead_source_pk=family["lead_ana_first"].source_pk)
                  .values_list("milestone", "driver_id"))
    assert claims == {1: "D-ANA-CALLAO", 5: "D-ANA-CALLAO"}  # 7 trips; the busiest driver is named


def test_migrate_reinstalls_a_changed_definition_and_rebuilds(family):
    first = family["lead_ana_first"].lead_date
    make_trips(family["d_ana_1"], {first + timedelta(days=10): 5})
    assert lead_window.lead_window_sync() is False  # nothing changed
    with connection.cursor() as cursor:
        # as if the code had an older, 7-day window
        cursor.execute("CREATE OR REPLACE FUNCTION ops.in_claim_window(trip_date date, lead_date date) RETURNS boolean "
                       "LANGUAGE sql IMMUTABLE AS $$ SELECT trip_date >= lead_date AND trip_date < lead_date + 7 $$")
        cursor.execute("SELECT ops.lead_window_14d_rebuild()")
    assert trips_of(family["lead_ana_first"]) == 0

    assert lead_window.lead_window_sync() is True

    assert assert_in_step()[family["lead_ana_first"].source_pk][2] == 5


def test_rebuild_command_repairs_a_drifted_table(family):
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {lead_window.TABLE} SET trips_14d = 99 WHERE lead_source_pk = %s",
                       [family["lead_beto"].source_pk])
        cursor.execute(f"DELETE FROM {lead_window.TABLE} WHERE lead_source_pk = %s",
                       [family["lead_ana_first"].source_pk])
    out = StringIO()

    call_command("rebuild_lead_window", "--dry-run", stdout=out)
    assert "2 rows differ" in out.getvalue() and kept() != direct()

    call_command("rebuild_lead_window", stdout=out)
    assert "rebuilt, 3 rows" in out.getvalue()
    assert_in_step()


# --- two writers at once ------------------------------------------------------------------


def _in_thread(target) -> threading.Thread:
    def run():
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first_writer", ["trips", "link"])
def test_concurrent_trips_and_link_of_the_same_person_do_not_lose_each_other(first_writer):
    """A trips import and a new lead link of the same person, in two open transactions: without the
    trigger's lock each would compute the lead without the other's uncommitted row."""
    person = make_person()
    driver = make_driver(driver_id="D-CONCURRENT")
    link_driver(driver, person)
    lead = make_lead(days_ago=20)
    first_done, second_started = threading.Event(), threading.Event()

    def write_trips():
        make_trips(driver, {lead.lead_date + timedelta(days=3): 9})

    def write_link():
        link_lead(lead, person)

    writers = {"trips": write_trips, "link": write_link}
    second = writers["link" if first_writer == "trips" else "trips"]

    def first_transaction():
        with transaction.atomic():
            writers[first_writer]()
            first_done.set()
            second_started.wait(10)
            time.sleep(0.5)  # the second writer reaches its trigger and waits for the lock

    def second_transaction():
        first_done.wait(10)
        second_started.set()
        with transaction.atomic():
            second()

    threads = [_in_thread(first_transaction), _in_thread(second_transaction)]
    for thread in threads:
        thread.join(30)

    assert kept()[lead.source_pk][2] == 9
    assert_in_step()


@pytest.mark.django_db(transaction=True)
def test_a_claim_written_while_its_lead_is_being_linked_is_not_lost():
    person = make_person()
    lead = make_lead(days_ago=5)
    linked, claim_started = threading.Event(), threading.Event()

    def link_then_wait():
        with transaction.atomic():
            link_lead(lead, person)
            linked.set()
            claim_started.wait(10)
            time.sleep(0.5)

    def claim():
        linked.wait(10)
        claim_started.set()
        Claim.objects.create(lead_source_pk=lead.source_pk, milestone=1, amount="25.00", status="claimed")

    threads = [_in_thread(link_then_wait), _in_thread(claim)]
    for thread in threads:
        thread.join(30)

    assert kept()[lead.source_pk][3] == [1]
    assert_in_step()
