"""CSV import (SPEC §8): every kind loads, bad rows go to the rejects file, re-imports update in place."""

import csv
import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from identity.importing import (
    VACUUM_AFTER_ROWS,
    ImportFileError,
    Invalid,
    parse_amount,
    parse_date,
    parse_timestamp,
    rejects_path_for,
    source_import,
)
from identity.models import CabinetLead, Claim, Driver, DriverTrips, IdentityLink, Person

LEADS_HEADER = (
    "id,external_id,created_at,first_name,middle_name,last_name,phone,document,email,plate,park_id,birth_date"
)
DRIVERS_HEADER = (
    "driver_id,park_id,first_name,middle_name,last_name,phone,license_number,document,email,plate,birth_date,hire_date,status"
)
LEADS = f"""{LEADS_HEADER}
1001,,2024-03-01 09:15,José,Luis,Quispe Mamani,987654321,45871236,jose.quispe@gmail.com,ABC123,park-7,15/08/1990
1002,CAB-2002,2024-03-02T03:00:00Z,María,,Núñez Peña,912345678,71234568,,,park-7,
"""
DRIVERS = f"""{DRIVERS_HEADER}
drv-001,park-7,Rosa,Elena,Huamán Flores,955111222,Q45871236,45871236,rosa.huaman@hotmail.com,BCD456,1988-11-02,2023-05-10,active
drv-002,park-7,Ángel,,Chávez Ramírez,966333444,,70112233,,XYZ789,,01/02/2024,inactive
"""  # noqa: E501 - CSV rows as a file holds them
TRIPS = """driver_id,date,trips
drv-001,2024-03-02,4
drv-001,03/03/2024,2
drv-002,2024-03-02,0
"""
CLAIMS = """lead_source_pk,driver_id,milestone,amount,status,claimed_at
1001,drv-001,1,25.00,paid,2024-03-05 10:00
1001,drv-001,5,"35,00",Claimed,
CAB-2002,,1,25,,
"""


def rejects_of(path):
    with open(rejects_path_for(path), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def exit_code(*args):
    """The command's exit status: 0 when it returns, else its SystemExit code."""
    try:
        call_command("import_source", *map(str, args))
    except SystemExit as exit:
        return exit.code
    return 0


# --- Every kind -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cabinet_leads_load_with_lima_time_and_source_pk(tmp_csv):
    result = source_import(kind="cabinet_leads", path=tmp_csv("leads.csv", LEADS))

    assert (result.rows_read, result.inserted, result.rejected, result.exit_status) == (2, 2, 0, 0)
    assert result.rejects_path is None
    jose = CabinetLead.objects.get(id=1001)
    # Empty external_id is NULL, so the source_pk is the id.
    assert jose.external_id is None and jose.source_pk == "1001"
    assert jose.created_at == datetime(2024, 3, 1, 14, 15, tzinfo=timezone.utc)  # 09:15 in Lima
    assert jose.birth_date == date(1990, 8, 15)
    assert (jose.last_name, jose.phone, jose.document) == ("Quispe Mamani", "987654321", "45871236")
    maria = CabinetLead.objects.get(id=1002)
    assert maria.source_pk == "CAB-2002" and maria.middle_name is None and maria.email is None
    # 03:00 UTC on 2 March is still 1 March in Lima.
    assert maria.lead_date == date(2024, 3, 1)


@pytest.mark.django_db
def test_drivers_trips_and_claims_load(tmp_csv):
    drivers = source_import(kind="drivers", path=tmp_csv("drivers.csv", DRIVERS))
    trips = source_import(kind="trips", path=tmp_csv("trips.csv", TRIPS))
    claims = source_import(kind="claims", path=tmp_csv("claims.csv", CLAIMS))

    assert (drivers.inserted, trips.inserted, claims.inserted) == (2, 3, 3)
    angel = Driver.objects.get(driver_id="drv-002")
    assert (angel.first_name, angel.hire_date, angel.birth_date, angel.license_number) == (
        "Ángel",
        date(2024, 2, 1),
        None,
        None,
    )
    assert DriverTrips.objects.get(driver_id="drv-001", date=date(2024, 3, 3)).trips == 2
    paid = Claim.objects.get(lead_source_pk="1001", milestone=1)
    assert (paid.status, paid.amount, paid.created_by) == ("paid", Decimal("25.00"), "import")
    assert paid.claimed_at == datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)
    claimed = Claim.objects.get(lead_source_pk="1001", milestone=5)
    assert (claimed.status, claimed.amount, claimed.claimed_at) == ("claimed", Decimal("35.00"), None)
    # An empty status is the model's default.
    assert Claim.objects.get(lead_source_pk="CAB-2002").status == "expected"


# --- Rejects ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bad_rows_go_to_rejects_with_line_and_column_while_good_rows_load(tmp_csv):
    path = tmp_csv(
        "drivers.csv",
        f"""{DRIVERS_HEADER}
drv-001,park-7,Rosa,,Huamán Flores,955111222,,45871236,,,31/02/1988,,active
,park-7,Sin,,Código,955000000,,40000000,,,,,active
drv-003,park-7,Luis,,Peña Quispe,944555666,,47112233,,,1990-13-01,ayer,active
drv-004,park-7,Ana,,Rojas Díaz,933222111,,48123456,,,,,active
drv-005,park-7,too,few,fields
""",
    )

    result = source_import(kind="drivers", path=path)

    assert (result.rows_read, result.inserted, result.rejected, result.exit_status) == (5, 1, 4, 1)
    assert result.rejects_path == rejects_path_for(path)
    assert list(Driver.objects.values_list("driver_id", flat=True)) == ["drv-004"]
    rows = rejects_of(path)
    assert [(r["line"], r["column"]) for r in rows] == [
        ("2", "birth_date"),
        ("3", "driver_id"),
        ("4", "birth_date"),
        ("6", ""),
    ]
    assert rows[0]["reason"] == "not a valid date (no such calendar day)"
    assert rows[1]["reason"] == "required value is missing"
    # Every bad column of a row is named, never its (personal) value.
    assert "also hire_date: not a valid date" in rows[2]["reason"]
    assert "1990-13-01" not in rows[2]["reason"] and "31/02" not in rows[0]["reason"]
    assert rows[3]["reason"] == "the row has 5 fields, the header has 13"
    # The original fields follow, under the file's own header.
    assert rows[0]["birth_date"] == "31/02/1988" and rows[0]["last_name"] == "Huamán Flores"


@pytest.mark.django_db
def test_rejects_of_each_kind(tmp_csv):
    leads = tmp_csv(
        "leads.csv",
        f"""{LEADS_HEADER}
10x1,,2024-03-01 09:15,José,,Quispe,,,,,,
1002,,el lunes,María,,Peña,,,,,,
""",
    )
    trips = tmp_csv("trips.csv",
                    "driver_id,date,trips\ndrv-001,2024-03-02,cuatro\ndrv-001,2024-03-03,-1\ndrv-001,2024-03-04,3\n")
    claims = tmp_csv(
        "claims.csv",
        "lead_source_pk,driver_id,milestone,amount,status,claimed_at\n1001,,3,25,paid,\n1002,,5,-35,,\n1003,,25,100,lost,\n1004,,25,100.5,,\n",
    )

    assert source_import(kind="cabinet_leads", path=leads).rejected == 2
    assert [(r["line"], r["column"]) for r in rejects_of(leads)] == [("2", "id"), ("3", "created_at")]
    assert source_import(kind="trips", path=trips).rejected == 2
    assert [(r["line"], r["column"]) for r in rejects_of(trips)] == [("2", "trips"), ("3", "trips")]
    assert DriverTrips.objects.get().trips == 3
    assert source_import(kind="claims", path=claims).rejected == 3
    assert [(r["line"], r["column"], r["reason"]) for r in rejects_of(claims)] == [
        ("2", "milestone", "milestone must be 1, 5 or 25"),
        ("3", "amount", "amount must not be negative"),
        ("4", "status", "status must be one of expected, claimed, paid, rejected"),
    ]
    assert Claim.objects.get().amount == Decimal("100.50")


@pytest.mark.django_db
def test_same_key_twice_last_occurrence_wins_and_earlier_is_rejected(tmp_csv):
    path = tmp_csv(
        "drivers.csv",
        f"""{DRIVERS_HEADER}
drv-001,park-7,Rosa,,Huamán Flores,955111222,,45871236,,,,,active
drv-002,park-7,Ángel,,Chávez Ramírez,966333444,,70112233,,,,,active
drv-001,park-7,Rosa,,Huamán Flores,955111222,,45871236,,,,,inactive
""",
    )

    result = source_import(kind="drivers", path=path)

    assert (result.rows_read, result.inserted, result.rejected) == (3, 2, 1)
    assert Driver.objects.get(driver_id="drv-001").status == "inactive"
    [row] = rejects_of(path)
    assert (row["line"], row["column"], row["reason"]) == ("2", "driver_id", "duplicate key, superseded by line 4")
    assert row["status"] == "active"


@pytest.mark.django_db
def test_a_bad_last_occurrence_still_supersedes_the_earlier_one(tmp_csv):
    path = tmp_csv("trips.csv", "driver_id,date,trips\ndrv-001,2024-03-02,4\ndrv-001,02/03/2024,muchos\n")

    result = source_import(kind="trips", path=path)

    assert (result.inserted, result.rejected) == (0, 2)
    assert [(r["line"], r["reason"]) for r in rejects_of(path)] == [
        ("2", "duplicate key, superseded by line 3 (itself rejected)"),
        ("3", "not a whole number of trips >= 0"),
    ]


@pytest.mark.django_db
def test_lead_source_pk_collisions_are_rejected(tmp_csv):
    CabinetLead.objects.create(id=1, external_id="CAB-9", created_at=datetime(2024, 3, 1, tzinfo=timezone.utc))
    path = tmp_csv(
        "leads.csv",
        f"""{LEADS_HEADER}
2,CAB-9,2024-03-02 10:00,José,,Quispe,,,,,,
3,CAB-7,2024-03-02 10:00,María,,Peña,,,,,,
4,CAB-7,2024-03-02 11:00,Rosa,,Flores,,,,,,
5,,2024-03-02 12:00,Luis,,Núñez,,,,,,
1,CAB-9,2024-03-01 00:00,Ana,,Rojas,,,,,,
""",
    )

    result = source_import(kind="cabinet_leads", path=path)

    assert (result.inserted, result.updated, result.rejected) == (1, 1, 3)
    assert sorted(CabinetLead.objects.values_list("id", "source_pk")) == [(1, "CAB-9"), (5, "5")]
    rows = rejects_of(path)
    assert [(r["line"], r["column"]) for r in rows] == [("2", "external_id"), ("3", "external_id"),
                                                        ("4", "external_id")]
    assert rows[0]["reason"] == "source_pk CAB-9 already belongs to lead id 1"
    assert rows[1]["reason"] == "source_pk CAB-7 is given to the different leads on lines 3, 4"


@pytest.mark.django_db
def test_source_pk_of_a_linked_lead_does_not_change(tmp_csv):
    CabinetLead.objects.create(id=7, external_id="CAB-7", created_at=datetime(2024, 3, 1, tzinfo=timezone.utc))
    IdentityLink.objects.create(
        source_table="module_ct_cabinet_leads",
        source_pk="CAB-7",
        person=Person.objects.create(),
        match_rule="test",
        confidence_level="high",
    )
    path = tmp_csv("leads.csv", f"{LEADS_HEADER}\n7,,2024-03-01 00:00,José,,Quispe,,,,,,\n")

    assert source_import(kind="cabinet_leads", path=path).rejected == 1
    assert "identity links or claims refer to" in rejects_of(path)[0]["reason"]
    assert CabinetLead.objects.get(id=7).source_pk == "CAB-7"


# --- Encodings and dialects -------------------------------------------------------------------


@pytest.mark.django_db
def test_latin1_file_keeps_its_accents(tmp_csv):
    path = tmp_csv("drivers.csv", DRIVERS.replace("Huamán Flores", "Núñez Peña"), encoding="latin-1")

    result = source_import(kind="drivers", path=path)

    assert (result.encoding, result.inserted) == ("latin-1", 2)
    assert Driver.objects.get(driver_id="drv-001").last_name == "Núñez Peña"
    assert Driver.objects.get(driver_id="drv-002").first_name == "Ángel"


@pytest.mark.django_db
def test_windows_1252_punctuation_is_read_as_cp1252(tmp_csv):
    path = tmp_csv("drivers.csv", "driver_id,first_name,last_name\ndrv-001,María,D’Angelo Peña\n", encoding="cp1252")

    assert source_import(kind="drivers", path=path).encoding == "cp1252"
    assert Driver.objects.get().last_name == "D’Angelo Peña"


@pytest.mark.django_db
def test_utf8_bom_semicolons_header_case_extra_and_absent_columns(tmp_csv):
    content = "DRIVER_ID ; Park_ID;Last Name;Comentario;Birth_Date\ndrv-001;park-7;Núñez Peña;llamar;15/08/1990\n"
    path = tmp_csv("drivers.csv", content, encoding="utf-8-sig")

    result = source_import(kind="drivers", path=path)

    assert (result.encoding, result.delimiter, result.inserted) == ("utf-8-sig", ";", 1)
    assert result.ignored_columns == ["Comentario"]
    assert "phone" in result.absent_columns and "ignored columns: Comentario" in result.summary()
    driver = Driver.objects.get()
    assert (driver.driver_id, driver.last_name, driver.birth_date, driver.phone) == (
        "drv-001",
        "Núñez Peña",
        date(1990, 8, 15),
        None,
    )


@pytest.mark.django_db
def test_absent_columns_are_kept_on_existing_rows(tmp_csv):
    source_import(kind="drivers", path=tmp_csv("full.csv", DRIVERS))

    result = source_import(kind="drivers", path=tmp_csv("partial.csv", "driver_id,status\ndrv-001,inactive\n"))

    assert (result.updated, result.inserted) == (1, 0)
    driver = Driver.objects.get(driver_id="drv-001")
    assert (driver.status, driver.phone) == ("inactive", "955111222")


@pytest.mark.django_db
def test_leads_without_external_id_column_keep_their_source_pk(tmp_csv):
    CabinetLead.objects.create(id=7, external_id="CAB-7", created_at=datetime(2024, 3, 1, tzinfo=timezone.utc))
    path = tmp_csv("leads.csv",
                   "id,created_at,first_name,last_name\n7,2024-03-01 00:00,José,Quispe\n8,2024-03-02 00:00,Rosa,Peña\n")

    result = source_import(kind="cabinet_leads", path=path)

    assert (result.inserted, result.updated, result.rejected) == (1, 1, 0)
    assert sorted(CabinetLead.objects.values_list("id", "source_pk", "first_name")) == [
        (7, "CAB-7", "José"),
        (8, "8", "Rosa"),
    ]


@pytest.mark.django_db
def test_a_file_broken_midway_loads_nothing(tmp_csv):
    broken = "drv-002,park-7,Luis,,Peña," + "9" * 200_000 + ",,,,,,,active\n"
    path = tmp_csv("drivers.csv", DRIVERS + broken)

    with pytest.raises(ImportFileError, match="line 4: not valid CSV"):
        source_import(kind="drivers", path=path)
    assert Driver.objects.count() == 0
    assert not rejects_path_for(path).exists()


# --- Re-import --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reimport_of_a_changed_file_updates_in_place(tmp_csv):
    source_import(kind="drivers", path=tmp_csv("drivers.csv", DRIVERS))
    source_import(kind="cabinet_leads", path=tmp_csv("leads.csv", LEADS))
    before = dict(Driver.objects.values_list("driver_id", "updated_at"))

    changed = DRIVERS.replace("955111222", "955999888")
    drivers = source_import(kind="drivers", path=tmp_csv("drivers.csv", changed))
    leads = source_import(kind="cabinet_leads", path=tmp_csv("leads.csv", LEADS.replace("CAB-2002", "CAB-2003")))

    assert (drivers.inserted, drivers.updated, drivers.unchanged) == (0, 1, 1)
    assert Driver.objects.count() == 2
    rosa, angel = Driver.objects.order_by("driver_id")
    assert rosa.phone == "955999888" and rosa.updated_at > before["drv-001"]
    assert angel.updated_at == before["drv-002"]
    assert (leads.updated, CabinetLead.objects.count()) == (1, 2)
    assert CabinetLead.objects.get(id=1002).source_pk == "CAB-2003"


@pytest.mark.django_db
def test_reimport_of_trips_and_claims_updates_in_place(tmp_csv):
    source_import(kind="trips", path=tmp_csv("trips.csv", TRIPS))
    source_import(kind="claims", path=tmp_csv("claims.csv", CLAIMS))

    trips = source_import(kind="trips", path=tmp_csv("trips.csv", TRIPS.replace("2024-03-02,4", "2024-03-02,6")))
    paid = CLAIMS.replace("CAB-2002,,1,25,,", "CAB-2002,,1,25,paid,")
    claims = source_import(kind="claims", path=tmp_csv("claims.csv", paid))

    assert (trips.updated, trips.unchanged, DriverTrips.objects.count()) == (1, 2, 3)
    assert DriverTrips.objects.get(driver_id="drv-001", date=date(2024, 3, 2)).trips == 6
    assert (claims.updated, claims.unchanged, Claim.objects.count()) == (1, 2, 3)
    assert Claim.objects.get(lead_source_pk="CAB-2002").status == "paid"


@pytest.mark.django_db
def test_reimport_of_an_identical_file_changes_nothing(tmp_csv):
    path = tmp_csv("drivers.csv", DRIVERS)
    source_import(kind="drivers", path=path)
    before = list(Driver.objects.values_list("driver_id", "updated_at", "imported_at").order_by("driver_id"))

    result = source_import(kind="drivers", path=path)

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 2)
    assert list(Driver.objects.values_list("driver_id", "updated_at", "imported_at").order_by("driver_id")) == before


@pytest.mark.django_db
def test_dry_run_writes_nothing_and_a_clean_run_removes_stale_rejects(tmp_csv):
    path = tmp_csv("trips.csv", "driver_id,date,trips\ndrv-001,2024-03-02,4\ndrv-001,2024-03-03,x\n")
    dry = source_import(kind="trips", path=path, dry_run=True)
    assert (dry.inserted, dry.rejected, DriverTrips.objects.count()) == (1, 1, 0)
    assert rejects_path_for(path).exists()

    path.write_text("driver_id,date,trips\ndrv-001,2024-03-02,4\n", encoding="utf-8")
    assert source_import(kind="trips", path=path).exit_status == 0
    assert not rejects_path_for(path).exists()


# --- The command: exit status, summary, errors ---------------------------------------------------


@pytest.mark.django_db
def test_command_exit_status_and_summary(tmp_csv, capsys):
    good = tmp_csv("drivers.csv", DRIVERS)
    assert exit_code("drivers", good) == 0
    out = capsys.readouterr().out
    assert out.startswith("drivers: 2 rows read, 2 loaded (2 new, 0 updated, 0 unchanged), 0 rejected [utf-8, ")

    bad = tmp_csv("trips.csv", "driver_id,date,trips\ndrv-001,2024-03-02,4\ndrv-001,2024-02-30,1\n")
    assert exit_code("trips", bad) == 1
    assert f"1 rejected -> {rejects_path_for(bad)}" in capsys.readouterr().out

    assert exit_code("trips", bad, "--json", "--dry-run") == 1
    payload = json.loads(capsys.readouterr().out)
    assert (payload["rejected"], payload["unchanged"], payload["dry_run"]) == (1, 1, True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("drivers", None, "no such file"),
        ("passengers", "driver_id\ndrv-1\n", "unknown kind 'passengers'"),
        ("drivers", "", "the file is empty"),
        ("drivers", "\ndrv-001,park-7\n", "no header row"),
        ("trips", "driver_id,date\ndrv-001,2024-03-02\n", "required column trips missing from the header"),
        ("cabinet_leads", "987654321,45871236,José\n", "line 1 is not a cabinet_leads header"),
        ("drivers", b"PK\x03\x04\x00\x00binary", "not a CSV file"),
        ("drivers", "driver_id,phone,PHONE\ndrv-001,955111222,955111222\n", "column phone appears twice"),
        ("drivers", TRIPS, "the header looks like a trips file, not drivers"),
    ],
)
def test_unusable_files_exit_2_with_one_clear_line(tmp_path, tmp_csv, capsys, kind, content, message):
    path = tmp_path / "missing.csv" if content is None else tmp_csv("input.csv", content)

    assert exit_code(kind, path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    # Personal data from a header-less file is never echoed.
    assert "987654321" not in err[0]
    with pytest.raises(ImportFileError):
        source_import(kind=kind, path=path)


# --- Parsers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-01 09:15", "2024-03-01T09:15:00-05:00"),
        ("2024-03-01T09:15:30", "2024-03-01T09:15:30-05:00"),
        ("2024-03-01T14:15:00Z", "2024-03-01T14:15:00+00:00"),
        ("2024-03-01 09:15:00-05:00", "2024-03-01T09:15:00-05:00"),
        ("01/03/2024 09:15", "2024-03-01T09:15:00-05:00"),
        ("1/3/2024 9:15:07", "2024-03-01T09:15:07-05:00"),
    ],
)
def test_timestamps(raw, expected):
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [
        (parse_date, "2024-02-29", "2024-02-29"),
        (parse_date, "29/02/2024", "2024-02-29"),
        (parse_amount, "1.250,50", "1250.50"),
        (parse_amount, "1,250.50", "1250.50"),
        (parse_amount, "35,5", "35.5"),
    ],
)
def test_values_that_parse(parse, raw, expected):
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (parse_date, "31/02/2024"),
        (parse_date, "2023-02-29"),
        (parse_date, "2024/02/01x"),
        (parse_date, "01/01/1850"),
        (parse_timestamp, "32/01/2024 10:00"),
        (parse_timestamp, "ayer"),
        (parse_amount, "1,250"),
        (parse_amount, "12.345"),
    ],
)
def test_values_that_are_rejected_without_echoing_them(parse, raw):
    with pytest.raises(Invalid) as error:
        parse(raw)
    assert raw not in str(error.value)


@pytest.mark.django_db(transaction=True)
def test_a_bulk_import_vacuums_its_table_and_a_small_one_only_analyzes(tmp_path):
    """VACUUM sets the visibility map, so the views' index-only scans stay index-only."""

    def vacuumed_since(moment) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT last_vacuum >= %s FROM pg_stat_user_tables "
                           "WHERE relid = 'public.driver_trips'::regclass", [moment])
            return bool(cursor.fetchone()[0])

    def trips_file(name, rows):
        lines = [f"{name}-{n % 500:03d},{date.fromordinal(date(2024, 1, 1).toordinal() + n // 500)},1"
                 for n in range(rows)]
        path = tmp_path / name
        path.write_text("driver_id,date,trips\n" + "\n".join(lines) + "\n", encoding="utf-8")
        return path

    started = datetime.now(timezone.utc)
    source_import(kind="trips", path=trips_file("small.csv", 10))
    assert not vacuumed_since(started)

    source_import(kind="trips", path=trips_file("bulk.csv", VACUUM_AFTER_ROWS))
    assert vacuumed_since(started)
