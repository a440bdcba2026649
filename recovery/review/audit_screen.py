"""The blind audit screen's selectors: an audit item's lead beside the person's driver records, with no
score, rule, confidence or evidence (the verdict must not lean on the machine's), and the open items."""

from __future__ import annotations

from dataclasses import dataclass

from identity.domain import DRIVERS_TABLE
from identity.models import CabinetLead, Driver, IdentityLink
from recovery.models import AuditItem
from recovery.review.display import BlindRow, blind_rows


@dataclass
class AuditScreen:
    item: AuditItem
    lead: CabinetLead
    drivers: list[Driver]
    rows: list[BlindRow]


def audit_screen(item_id: int) -> AuditScreen | None:
    item = AuditItem.objects.filter(pk=item_id).first()
    if item is None:
        return None
    lead = CabinetLead.objects.filter(source_pk=item.source_pk).first()
    if lead is None:
        return None
    driver_ids = IdentityLink.objects.filter(source_table=DRIVERS_TABLE, person_id=item.person_id).values("source_pk")
    drivers = list(Driver.objects.filter(driver_id__in=driver_ids).order_by("driver_id"))
    return AuditScreen(item=item, lead=lead, drivers=drivers, rows=blind_rows(lead, drivers))


def audit_open_items(*, limit: int, offset: int) -> tuple[list[AuditItem], int]:
    """Audit items waiting for a verdict, oldest sample first (what the review list shows as AUDIT)."""
    items = AuditItem.objects.filter(verdict__isnull=True).order_by("sampled_at", "id")
    return list(items[offset:offset + limit]), items.count()
