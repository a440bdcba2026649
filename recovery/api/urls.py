"""API URLs: /api/v1/... (namespace `api`), the OpenAPI schema and its docs (served offline)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from recovery.api import views

app_name = "api"

v1 = [
    path("ops/payments/cabinet-financial-14d/kpi-red-recovery-metrics", views.KpiRedRecoveryMetricsView.as_view(),
         name="kpi-red-recovery-metrics"),
    path("ops/payments/cabinet-financial-14d", views.Financial14dView.as_view(), name="cabinet-financial-14d"),
    path("ops/identity-gaps", views.IdentityGapsView.as_view(), name="identity-gaps"),
    path("ops/identity-gaps/run-recovery", views.RunRecoveryView.as_view(), name="run-recovery"),
    path("ops/jobs/<int:run_id>", views.JobRunView.as_view(), name="job-run"),
    path("ops/cabinet-leads/limbo", views.LimboView.as_view(), name="cabinet-leads-limbo"),
    path("ops/cabinet-leads/funnel-weekly", views.FunnelWeeklyView.as_view(), name="cabinet-leads-funnel-weekly"),
    path("identity/quality", views.IdentityQualityView.as_view(), name="identity-quality"),
    path("review/items", views.ReviewItemsView.as_view(), name="review-items"),
    # path: an external_id may hold any character, a slash included (as on the review screen).
    path("review/items/<path:source_pk>/decision", views.ReviewDecisionView.as_view(), name="review-decision"),
    path("identity/drivers-index/refresh", views.DriversIndexRefreshView.as_view(), name="drivers-index-refresh"),
]

urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
]
