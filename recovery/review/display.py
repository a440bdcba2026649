"""How the review screen shows a field: the lead's value beside each driver record's, each with the
engine's own verdict on it (identity.fields levels: agree, near, disagree, missing)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from identity import fields as registry
from identity.fields import AGREEING_FIELDS, shown_as
from identity.matching import Scored
from identity.models import CabinetLead, Driver


@dataclass(frozen=True)
class Cell:
    value: str
    status: str  # agree, near, disagree, missing, info


@dataclass
class FieldRow:
    field: str
    label: str
    lead_value: str
    cells: list[Cell]
    # The lead has a value, but normalization found nothing usable in it (a placeholder, junk).
    lead_unusable: bool = False
    level: str | None = None
    bits: float | None = None
    shared_by: int | None = None


def _rows_shown() -> tuple[tuple[str, str], ...]:
    """The registry's fields a lead carries (name first), then the park as context."""
    fields = sorted((f for f in registry.FIELDS.values() if f.lead_column), key=lambda f: f.name != "name")
    return (*((f.name, f.label) for f in fields), ("park_id", "Park"))


def field_rows(lead: CabinetLead, keys, scored: Scored, person_records, raw: dict,
               record_levels: dict) -> list[FieldRow]:
    """The screen's rows for one candidate: the lead's value, each driver record's, the engine's level."""
    evidence = {f.field: f for f in scored.fields}
    rows = []
    for name, label in _rows_shown():
        lead_value = _lead_display(lead, name)
        cells = [_cell(name, lead, record, raw.get(record.driver_id),
                       record_levels.get((scored.person_key, record.driver_id), {})) for record in person_records]
        ev = evidence.get(name)
        unusable = bool(lead_value) and name in AGREEING_FIELDS and getattr(keys, name) is None
        rows.append(FieldRow(name, label, lead_value, cells, unusable, ev.level if ev else None,
                             round(ev.bits, 1) if ev else None, ev.shared_by if ev else None))
    return rows


def lead_values(lead: CabinetLead) -> dict[str, str]:
    """The lead's values as both screens show them, field by field (name first, then the park)."""
    return {name: _lead_display(lead, name) for name, _ in _rows_shown()}


def _lead_display(lead: CabinetLead, name: str) -> str:
    if name == "name":
        return " ".join(p for p in (lead.first_name, lead.middle_name, lead.last_name) if p) or ""
    value = getattr(lead, name)
    return "" if value is None else str(value)


def _driver_display(driver: Driver | None, record, name: str) -> str:
    if name == "name":
        if driver is not None:
            return " ".join(p for p in (driver.first_name, driver.middle_name, driver.last_name) if p)
        return " ".join(record.given_tokens + record.surname_tokens)
    if name == "document":
        values = [getattr(driver, "document", None) or record.document]
        licence = getattr(driver, "license_number", None)
        if licence:
            values.append(f"licence {licence}")
        return " / ".join(v for v in values if v)
    value = getattr(driver, name, None) if driver is not None else getattr(record, name, None)
    return "" if value is None else str(value)


def _cell(name: str, lead: CabinetLead, record, driver: Driver | None, levels: dict[str, str]) -> Cell:
    """A driver record's value with the engine's own verdict on it (identity.fields levels)."""
    shown = _driver_display(driver, record, name)
    if name == "park_id":
        return Cell(shown, "agree" if shown and shown == (lead.park_id or "") else "info")
    return Cell(shown, shown_as(name, levels.get(name)))


@dataclass
class BlindRow:
    """A field of the blind audit screen: the lead's value and each driver record's, no verdict on them."""

    field: str
    label: str
    lead_value: str
    values: list[str]


_NO_RECORD = SimpleNamespace(document=None)


def blind_rows(lead: CabinetLead, drivers: list[Driver]) -> list[BlindRow]:
    """The lead beside the person's driver records, field by field, values only (no level, no bits)."""
    return [BlindRow(name, label, _lead_display(lead, name), [_driver_display(d, _NO_RECORD, name) for d in drivers])
            for name, label in _rows_shown()]
