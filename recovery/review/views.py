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
from recovery.queue import backlog_count
from recovery.review.decide import review_decide
from recovery.review.listing import review_parks, review_queue
from recovery.review.rules import DEFER_HOURS, REVIEW_PERMISSION, Action
from recovery.review.screen import review_lead

PAGE_SIZE = 50
RISKS = ("high", "medium", "low")


class ReviewerRequired(PermissionRequiredMixin):
    permission_required = REVIEW_PERMISSION

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
