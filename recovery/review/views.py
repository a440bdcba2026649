"""The review screens: the list of doubtful leads and one lead beside its candidates (thin views).

Login required (anonymous users go to the admin's login page); the `identity.review_lead`
permission (the `reviewer` group) is required to see or decide, others get 403.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views.generic import TemplateView

from identity.models import REVIEW_REASONS, ReasonCode
from recovery.models import AuditVerdict
from recovery.queue import backlog_count
from recovery.review.audit import audit_verdict_record
from recovery.review.audit_screen import audit_open_items, audit_screen
from recovery.review.decide import review_decide
from recovery.review.listing import review_parks, review_queue
from recovery.review.rules import DEFER_HOURS, REVIEW_PERMISSION, Action, review_allowed
from recovery.review.screen import review_lead

PAGE_SIZE = 50
RISKS = ("high", "medium", "low")
# The list's kinds: doubtful leads (conflict, weak match) or AUDIT items (recovery.review.audit).
KIND_LEADS, KIND_AUDIT = "leads", "audit"


class ReviewerRequired(PermissionRequiredMixin):
    permission_required = REVIEW_PERMISSION

    def has_permission(self) -> bool:
        # The rule lives in recovery.review.rules (the API's CanReview asks it too).
        return review_allowed(self.request.user)

    def admin_context(self, title: str) -> dict:
        # Without the admin's model sidebar: the side-by-side tables need the laptop screen's width.
        return {**admin.site.each_context(self.request), "title": title, "is_nav_sidebar_enabled": False}


def _page_number(raw) -> int:
    try:
        return max(int(raw), 1)
    except (TypeError, ValueError):
        return 1


class ReviewListView(ReviewerRequired, TemplateView):
    template_name = "review/list.html"

    def get_context_data(self, **kwargs):
        if self.request.GET.get("kind") == KIND_AUDIT:
            return self._audit_context(**kwargs)
        filters = {
            "reason": self.request.GET.get("reason") if self.request.GET.get("reason") in REVIEW_REASONS else None,
            "risk": self.request.GET.get("risk") if self.request.GET.get("risk") in RISKS else None,
            "park": self.request.GET.get("park") or None,
        }
        number = _page_number(self.request.GET.get("page"))
        result = review_queue(**filters, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
        pages = max(-(-result.total // PAGE_SIZE), 1)
        if number > pages:  # past the end (the list shrank): show the last page
            number = pages
            result = review_queue(**filters, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
        return {
            **super().get_context_data(**kwargs),
            **self.admin_context("Leads to review"),
            "rows": result.rows,
            "total": result.total,
            "page": {"number": number, "pages": pages, "previous": number - 1 if number > 1 else None,
                     "next": number + 1 if number < pages else None},
            "backlog": backlog_count(),
            "filters": filters,
            "reasons": [(code, ReasonCode(code).label) for code in REVIEW_REASONS],
            "risks": RISKS,
            "parks": review_parks(),
            "defer_hours": DEFER_HOURS,
            "query": {k: v for k, v in filters.items() if v},
            "kind": KIND_LEADS,
        }

    def _audit_context(self, **kwargs):
        number = _page_number(self.request.GET.get("page"))
        items, total = audit_open_items(limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
        pages = max(-(-total // PAGE_SIZE), 1)
        return {
            **super().get_context_data(**kwargs),
            **self.admin_context("Audit items to review"),
            "kind": KIND_AUDIT,
            "audit_items": items,
            "total": total,
            "page": {"number": number, "pages": pages, "previous": number - 1 if number > 1 else None,
                     "next": number + 1 if number < pages else None},
            "backlog": backlog_count(),
        }


class DecisionForm(forms.Form):
    action = forms.ChoiceField(choices=[(a, label) for a, label in Action.LABELS.items()])
    person_key = forms.UUIDField(required=False)
    seen = forms.IntegerField(required=False, min_value=0)
    note = forms.CharField(required=False, max_length=500)


class ReviewLeadView(ReviewerRequired, TemplateView):
    template_name = "review/lead.html"

    def get_context_data(self, **kwargs):
        lead_review = review_lead(self.kwargs["source_pk"])
        if lead_review is None:
            raise Http404("No such lead")
        return {
            **super().get_context_data(**kwargs),
            **self.admin_context(f"Review lead {lead_review.lead.source_pk}"),
            "review": lead_review,
            "actions": Action,
            "defer_hours": DEFER_HOURS,
        }

    def post(self, request, *args, **kwargs):
        source_pk = self.kwargs["source_pk"]
        form = DecisionForm(request.POST)
        if not form.is_valid():
            messages.error(request, "The decision could not be read; nothing was applied.")
            return redirect("review:lead", source_pk=source_pk)
        data = form.cleaned_data
        outcome = review_decide(
            source_pk=source_pk, action=data["action"], user=request.user,
            person_key=str(data["person_key"]) if data["person_key"] else None, seen=data["seen"], note=data["note"],
        )
        if outcome.status == "not_found":
            raise Http404("No such lead")
        if not outcome.applied:
            messages.error(request, outcome.message)
            return redirect("review:lead", source_pk=source_pk)
        messages.success(request, outcome.message)
        if outcome.status == "rejected" and review_queue(source_pks=[source_pk], limit=1).rows:
            # Candidates still stand: stay on the lead.
            return redirect("review:lead", source_pk=source_pk)
        return redirect(reverse("review:list"))


class AuditVerdictForm(forms.Form):
    verdict = forms.ChoiceField(choices=AuditVerdict.choices)
    note = forms.CharField(required=False, max_length=500)


class AuditItemView(ReviewerRequired, TemplateView):
    """One audit item, blind: the lead and the linked person field by field, without the score, the rule,
    the confidence or the evidence; the reviewer answers same person, not the same person, cannot tell."""

    template_name = "review/audit.html"

    def get_context_data(self, **kwargs):
        screen = audit_screen(self.kwargs["item_id"])
        if screen is None:
            raise Http404("No such audit item")
        return {**super().get_context_data(**kwargs), **self.admin_context(f"Audit item {screen.item.pk}"),
                "screen": screen, "verdicts": AuditVerdict.choices}

    def post(self, request, *args, **kwargs):
        item_id = self.kwargs["item_id"]
        form = AuditVerdictForm(request.POST)
        if not form.is_valid():
            messages.error(request, "The answer could not be read; nothing was recorded.")
            return redirect("review:audit", item_id=item_id)
        outcome = audit_verdict_record(item_id=item_id, verdict=form.cleaned_data["verdict"], user=request.user,
                                       note=form.cleaned_data["note"])
        if outcome.status == "not_found":
            raise Http404("No such audit item")
        if not outcome.applied:
            messages.error(request, outcome.message)
            return redirect("review:audit", item_id=item_id)
        messages.success(request, outcome.message)
        return redirect(reverse("review:list") + f"?kind={KIND_AUDIT}")
