"""The API's views: parse the input, call one selector or service, serialize the output.

Reads need the view permission of the data they show; starting a job needs
recovery.run_recovery and is throttled. Job starts answer 202 with the job run to follow.
The review items and their decisions need the review permission, like the review screens, and go
through the screens' services (recovery.review.items): a decision someone made first answers 409.
The reads of the views answer from a short-lived cache (recovery.read_cache: CT4_API_CACHE_SECONDS,
dropped when a job run starts or finishes); permissions and parameters are checked first, every time.
"""

from __future__ import annotations

from django.urls import reverse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from identity.models import JobRun
from recovery import selectors
from recovery.api import serializers as s
from recovery.api.errors import error_response
from recovery.api.filters import Financial14dFilter, FunnelWeeklyFilter, LimboFilter
from recovery.api.permissions import CanReview, CanRunRecovery, HasViewPermission
from recovery.models import AuditItem
from recovery.read_cache import read_cached
from recovery.review.items import CONFLICT_STATUSES, ItemKind, ReviewItems, review_item_decide
from recovery.review.quality import audit_report
from recovery.sql_views import (
    CabinetFinancial14d,
    CabinetLeadsLimbo,
    FunnelAuditWeekly,
    IdentityGapAnalysis,
    KpiRedRecoveryMetricsDaily,
)
from recovery.tasks import job_enqueue


class ErrorBodySerializer(s.serializers.Serializer):
    status = s.serializers.IntegerField()
    code = s.serializers.CharField()
    message = s.serializers.CharField()
    fields = s.serializers.DictField(required=False)


class ErrorSerializer(s.serializers.Serializer):
    error = ErrorBodySerializer()


ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="not logged in"),
    400: OpenApiResponse(ErrorSerializer, description="a parameter is not valid (the reason is in fields)"),
    403: OpenApiResponse(ErrorSerializer, description="without the permission (or a session POST without CSRF token)"),
}
LIST_ERRORS = {**ERRORS, 404: OpenApiResponse(ErrorSerializer, description="no such page")}
JOB_ERRORS = {**ERRORS, 429: OpenApiResponse(ErrorSerializer, description="too many job starts; retry later")}


class Pages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ReadView(APIView):
    permission_classes = [HasViewPermission]


class KpiRedRecoveryMetricsView(ReadView):
    permission_model = KpiRedRecoveryMetricsDaily

    @extend_schema(parameters=[s.MetricsQuerySerializer], responses={200: s.MetricsSerializer, **ERRORS},
                   summary="Red-KPI daily metrics for a date range, the backlog now and the top fail reasons")
    def get(self, request):
        query = s.MetricsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(read_cached(request.build_absolute_uri(), lambda: s.MetricsSerializer(
            selectors.metrics_daily(**query.validated_data)).data))


class IdentityGapsView(ReadView):
    permission_model = IdentityGapAnalysis

    @extend_schema(responses={200: s.IdentityGapsSerializer, **ERRORS},
                   summary="Identity gap summary: counts by reason and risk, freshness, recovery status")
    def get(self, request):
        return Response(read_cached(request.build_absolute_uri(),
                                    lambda: s.IdentityGapsSerializer(selectors.identity_gaps()).data))


class IdentityQualityView(ReadView):
    """Precision of the automatic links and true matches left below the threshold, from the audit verdicts.
    Not cached: a verdict is no job run, so the shared read cache would not drop it."""

    permission_model = AuditItem

    @extend_schema(responses={200: s.QualitySerializer, **ERRORS},
                   summary="Estimated precision per rule and month (Wilson 95 %), from the audit sample")
    def get(self, request):
        return Response(s.QualitySerializer(audit_report()).data)


def _listing(serializer, summary: str):
    """The schema of a paginated listing: its rows, and the errors a listing can answer."""
    return extend_schema_view(get=extend_schema(responses={200: serializer(many=True), **LIST_ERRORS}, summary=summary))


class _ListView(generics.ListAPIView):
    permission_classes = [HasViewPermission]
    pagination_class = Pages
    filter_backends = [DjangoFilterBackend]

    def list(self, request, *args, **kwargs):
        # The whole page (count, links, rows) by its absolute URL: a bad filter or page raises, uncached.
        return Response(read_cached(request.build_absolute_uri(),
                                    lambda: super(_ListView, self).list(request, *args, **kwargs).data))


@_listing(s.Financial14dSerializer, "Per-lead 14-day money: expected, claimed, paid")
class Financial14dView(_ListView):
    """Per lead: trips in its 14-day window, milestones reached, expected, claimed and paid amounts."""

    permission_model = CabinetFinancial14d
    serializer_class = s.Financial14dSerializer
    filterset_class = Financial14dFilter

    def get_queryset(self):
        return selectors.financial_14d()


@_listing(s.LimboSerializer, "Leads by limbo stage")
class LimboView(_ListView):
    """Per lead, the funnel stage where it is stuck (NO_IDENTITY ... OK)."""

    permission_model = CabinetLeadsLimbo
    serializer_class = s.LimboSerializer
    filterset_class = LimboFilter

    def get_queryset(self):
        return selectors.leads_limbo()


@_listing(s.FunnelWeekSerializer, "Weekly 14-day funnel")
class FunnelWeeklyView(_ListView):
    """Per week: leads and where they are stuck in the 14-day funnel."""

    permission_model = FunnelAuditWeekly
    serializer_class = s.FunnelWeekSerializer
    filterset_class = FunnelWeeklyFilter

    def get_queryset(self):
        return selectors.funnel_weekly()


class _StartJobView(APIView):
    permission_classes = [CanRunRecovery]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "jobs"
    job: str
    query_serializer: type[s.serializers.Serializer]

    def post(self, request):
        query = self.query_serializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        run = job_enqueue(self.job, params=query.validated_data, trigger="api")
        url = reverse("api:job-run", kwargs={"run_id": run.pk})
        body = {"job_run_id": run.pk, "name": self.job, "status": run.status, "url": url}
        return Response(s.JobAcceptedSerializer(body).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": url})


def _job_start(query_serializer, summary: str):
    """The schema of a job start: its query parameters, 202 with the run to follow, the errors."""
    return extend_schema_view(post=extend_schema(
        parameters=[query_serializer], request=None, responses={202: s.JobAcceptedSerializer, **JOB_ERRORS},
        summary=summary))


@_job_start(s.RunRecoveryQuerySerializer,
            "Start a recovery run over the red-KPI queue (answers at once; follow the job run)")
class RunRecoveryView(_StartJobView):
    job = "recover_kpi_red_leads"
    query_serializer = s.RunRecoveryQuerySerializer


@_job_start(s.IndexRefreshQuerySerializer, "Start a drivers-index refresh (answers at once; follow the job run)")
class DriversIndexRefreshView(_StartJobView):
    job = "refresh_drivers_index"
    query_serializer = s.IndexRefreshQuerySerializer


class JobRunView(ReadView):
    permission_model = JobRun

    @extend_schema(parameters=[OpenApiParameter("run_id", int, OpenApiParameter.PATH)],
                   responses={200: s.JobRunSerializer, 404: OpenApiResponse(ErrorSerializer), **ERRORS},
                   summary="One job run: its status, progress counts and result")
    def get(self, request, run_id: int):
        run = selectors.job_run_get(run_id=run_id)
        if run is None:
            raise NotFound("No job run with this id.")
        return Response(s.JobRunSerializer(run).data)


# --- review (recovery.review.items) ----------------------------------------------------------


class ReviewPages(Pages):
    # Each lead on a page is explained afresh (review_lead, as the screen draws it): smaller pages.
    page_size = 20
    max_page_size = 100


REVIEW_ITEM = PolymorphicProxySerializer(
    component_name="ReviewItem", resource_type_field_name="kind",
    serializers={ItemKind.CONFLICT: s.LeadItemSerializer, ItemKind.WEAK: s.LeadItemSerializer,
                 ItemKind.AUDIT: s.AuditItemSerializer},
)


@extend_schema_view(get=extend_schema(
    parameters=[s.ReviewItemsQuerySerializer], responses={200: REVIEW_ITEM, **LIST_ERRORS},
    summary="Review items: doubtful leads with their candidates and evidence, and blind audit items"))
class ReviewItemsView(generics.ListAPIView):
    """The review list of the screens: conflict and weak-match leads (most urgent first) beside their
    candidates with the engine's evidence, and the open audit items, blind (values only). Not cached:
    a decision is no job run, so the shared read cache would not drop it."""

    permission_classes = [CanReview]
    pagination_class = ReviewPages
    serializer_class = s.ReviewItemSerializer

    def get_queryset(self):
        query = s.ReviewItemsQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return ReviewItems(query.validated_data.get("kind"))


# A refused decision: the HTTP status and the error body's code of each refusing outcome.
DECISION_REFUSALS = {"invalid": (400, "invalid"), "not_found": (404, "not_found"),
                     "forbidden": (403, "permission_denied"),
                     **{status_: (409, status_) for status_ in CONFLICT_STATUSES}}


class ReviewDecisionView(APIView):
    permission_classes = [CanReview]

    @extend_schema(
        parameters=[OpenApiParameter("source_pk", str, OpenApiParameter.PATH, description="the lead")],
        request=s.ReviewDecisionSerializer,
        responses={
            200: s.ReviewDecisionResultSerializer, **ERRORS,
            404: OpenApiResponse(ErrorSerializer, description="no such lead, or (an audit answer) no audit item"),
            409: OpenApiResponse(ErrorSerializer, description="decided by someone else first (code already_linked, "
                                                              "stale or already_decided): nothing was applied"),
        },
        summary="Decide a review item: link, reject, reject_all, defer a lead; confirm, not_same, cannot_tell an "
                "audit item")
    def post(self, request, source_pk: str):
        body = s.ReviewDecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        outcome = review_item_decide(
            source_pk=source_pk, action=data["action"], user=request.user,
            person_key=str(data["person_key"]) if data.get("person_key") else None, seen=data.get("seen"),
            note=data["note"],
        )
        if not outcome.applied:
            http_status, code = DECISION_REFUSALS[outcome.status]
            return error_response(http_status, code, outcome.message)
        return Response(s.ReviewDecisionResultSerializer(outcome).data)
