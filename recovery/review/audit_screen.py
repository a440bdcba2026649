"""The blind audit screen's selectors: an audit item's lead beside the person's driver records, with no
score, rule, confidence or evidence (the verdict must not lean on the machine's), whether its verdict undid
the link, and the open items."""

from __future__ import annotations

from dataclasses import dataclass

from identity.domain import DRIVERS_TABLE
from identity.models import CabinetLead, Driver, IdentityLink, IdentityLinkHistory
from recovery.models import AuditItem
from recovery.review.display import BlindRow, blind_rows


@dataclass
class AuditScreen:
    item: AuditItem
    lead: CabinetLead
    drivers: list[Driver]
    rows: list[BlindRow]
    # The link this item's verdict undid (None: nothing undone through this item).
    undone: IdentityLinkHistory | None = None


def audit_screen(item_id: int) -> AuditScreen | None:
    item = AuditItem.objects.filter(pk=item_id).first()
    if item is None:
        return None
    lead = CabinetLead.objects.filter(source_pk=item.source_pk).first()
    if lead is None:
        return None
    driver_ids = IdentityLink.objects.filter(source_table=DRIVERS_TABLE, person_id=item.person_id).values("source_pk")
    drivers = list(Driver.objects.filter(driver_id__in=driver_ids).order_by("driver_id"))
    undone = IdentityLinkHistory.objects.filter(audit_item_id=item.pk).order_by("-undone_at").first()
    return AuditScreen(item=item, lead=lead, drivers=drivers, rows=blind_rows(lead, drivers), undone=undone)


def audit_open_items(*, limit: int, offset: int) -> tuple[list[AuditItem], int]:
    """Audit items waiting for a verdict, oldest sample first (what the review list shows as AUDIT)."""
    items = AuditItem.objects.filter(verdict__isnull=True).order_by("sampled_at", "id")
    return list(items[offset:offset + limit]), items.count()
