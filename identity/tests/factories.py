"""Small composable test factories: leads, drivers, persons, links, origins, claims and trips.

The data looks like a Lima park's: mobiles of 9 digits starting with 9, 8-digit DNIs, two surnames.
"""

import itertools
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from identity.domain import PARK_ZONE
from identity.domain import lima_today as lima_today  # the tests' "today" is the product's
from identity.models import (
    DRIVERS_TABLE,
    LEADS_TABLE,
    CabinetLead,
    Claim,
    Driver,
    DriverTrips,
    IdentityLink,
    IdentityOrigin,
    Person,
)

LIMA = PARK_ZONE
DEFAULT_PARK = "park-lima-norte"

FIRST_NAMES = ("José", "María", "Lucía", "Jesús", "Ángel", "Rocío", "Martín", "Sofía", "Raúl", "Inés")
SURNAMES = ("Quispe", "Mamani", "Huamán", "Flores", "Ñahui", "Condori", "Rodríguez", "Chávez", "Gutiérrez", "Ramírez")

# One sequence for every factory: ids, phones and DNIs never collide inside a test database.
_sequence = itertools.count(1)


def lima_datetime(day: date, hour: int = 10, minute: int = 0) -> datetime:
    """An aware datetime on `day` in Lima; 10:00 keeps the UTC date equal to the Lima date."""
    return datetime.combine(day, time(hour, minute), tzinfo=LIMA)


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _person_data(n: int) -> dict:
    first = FIRST_NAMES[n % len(FIRST_NAMES)]
    surname_1 = SURNAMES[n % len(SURNAMES)]
    surname_2 = SURNAMES[(n * 7 + 3) % len(SURNAMES)]
    return {
        "first_name": first,
        "last_name": f"{surname_1} {surname_2}",
        "phone": f"9{n % 100_000_000:08d}",
        "document": f"{40_000_000 + n % 50_000_000:08d}",
        "email": f"{_ascii(first).lower()}.{_ascii(surname_1).lower()}{n}@correo.pe",
        "birth_date": date(1985, 1, 1) + timedelta(days=n % 5000),
    }


def make_lead(
    *,
    id: int | None = None,
    external_id: str | None = None,
    lead_date: date | None = None,
    days_ago: int | None = None,
    created_at: datetime | None = None,
    park_id: str | None = DEFAULT_PARK,
    **fields,
) -> CabinetLead:
    """A cabinet lead. Its date comes from `created_at`, else `lead_date`, else `days_ago` (Lima), else now."""
    n = next(_sequence)
    if created_at is None:
        if lead_date is None and days_ago is not None:
            lead_date = lima_today() - timedelta(days=days_ago)
        created_at = lima_datetime(lead_date) if lead_date is not None else timezone.now()
    lead = CabinetLead.objects.create(
        id=id if id is not None else 500_000 + n,
        external_id=external_id,
        created_at=created_at,
        park_id=park_id,
        **{**_person_data(n), **fields},
    )
    # lead_date and source_pk are computed by the database.
    lead.refresh_from_db(fields=["lead_date", "source_pk"])
    return lead


def make_driver(*, driver_id: str | None = None, park_id: str | None = DEFAULT_PARK, **fields) -> Driver:
    """A driver record of the fleet, with a platform-style hex id unless given."""
    n = next(_sequence)
    data = _person_data(n)
    defaults = {
        **data,
        "license_number": f"Q{data['document']}",
        "plate": f"B{n % 10}{chr(65 + n % 26)}-{n % 1000:03d}",
        "hire_date": date(2024, 1, 1) + timedelta(days=n % 600),
        "status": "working",
    }
    return Driver.objects.create(
        driver_id=driver_id or uuid.uuid4().hex, park_id=park_id, **{**defaults, **fields}
    )


def make_person() -> Person:
    return Person.objects.create()


def _source_pk(source) -> str:
    if isinstance(source, CabinetLead):
        return source.source_pk
    if isinstance(source, Driver):
        return source.driver_id
    return str(source)


def link(
    source_table: str,
    source_pk,
    person: Person,
    *,
    linked_at: datetime | None = None,
    match_rule: str = "test_factory",
    confidence_level: str = "high",
    decided_by: str = "system",
    **fields,
) -> IdentityLink:
    """Link a source record (a source_pk, or a CabinetLead / Driver) to a person, optionally at a past time."""
    row = IdentityLink.objects.create(
        source_table=source_table,
        source_pk=_source_pk(source_pk),
        person=person,
        match_rule=match_rule,
        confidence_level=confidence_level,
        decided_by=decided_by,
        **fields,
    )
    if linked_at is not None:
        # linked_at has a database default; set the chosen time after the insert.
        IdentityLink.objects.filter(pk=row.pk).update(linked_at=linked_at)
    row.refresh_from_db(fields=["linked_at"])
    return row


def link_lead(lead: CabinetLead | str, person: Person, **kwargs) -> IdentityLink:
    return link(LEADS_TABLE, lead, person, **kwargs)


def link_driver(driver: Driver | str, person: Person, **kwargs) -> IdentityLink:
    return link(DRIVERS_TABLE, driver, person, **kwargs)


def make_person_with_driver(**driver_fields) -> tuple[Person, Driver]:
    """A person who already has one linked driver record."""
    person = make_person()
    driver = make_driver(**driver_fields)
    link_driver(driver, person)
    return person, driver


def set_origin(person: Person, lead: CabinetLead | str, *, origin_tag: str = "cabinet_lead") -> IdentityOrigin:
    """Set (or replace) the person's origin to name `lead` (a CabinetLead or a source_pk)."""
    origin, _ = IdentityOrigin.objects.update_or_create(
        person=person, defaults={"origin_source_id": _source_pk(lead), "origin_tag": origin_tag}
    )
    return origin


def make_claim(
    lead: CabinetLead | str,
    *,
    milestone: int = 1,
    status: str = "claimed",
    amount: Decimal | str | None = None,
    driver_id: str | None = None,
    claimed_at: datetime | None = None,
    created_at: datetime | None = None,
    **fields,
) -> Claim:
    """A claim for a lead's milestone; the amount defaults to the milestone's amount in settings."""
    if amount is None:
        amount = settings.CT4["MILESTONES"][milestone]
    row = Claim.objects.create(
        lead_source_pk=_source_pk(lead),
        driver_id=_source_pk(driver_id) if driver_id is not None else None,
        milestone=milestone,
        amount=Decimal(str(amount)),
        status=status,
        claimed_at=claimed_at,
        **fields,
    )
    if created_at is not None:
        Claim.objects.filter(pk=row.pk).update(created_at=created_at)
    row.refresh_from_db(fields=["created_at"])
    return row


def make_trips(
    driver: Driver | str,
    daily: Mapping[date, int] | None = None,
    *,
    start: date | None = None,
    counts: Sequence[int] = (),
) -> list[DriverTrips]:
    """Trips of a driver: a {date: trips} mapping, and/or `counts` on consecutive days from `start`."""
    days = dict(daily or {})
    if counts:
        if start is None:
            raise ValueError("make_trips(counts=...) needs start=")
        days.update({start + timedelta(days=i): trips for i, trips in enumerate(counts)})
    driver_id = _source_pk(driver)
    return DriverTrips.objects.bulk_create(
        [DriverTrips(driver_id=driver_id, date=day, trips=trips) for day, trips in sorted(days.items())]
    )
