"""Top-level URLs: the admin, the review screens, the ops dashboard, the REST API and its schema."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="ops:dashboard", permanent=False)),
    path("admin/", admin.site.urls),
    path("review/", include("identity.review_urls")),
    path("ops/", include("recovery.dashboard_urls")),
    path("api/", include("recovery.api.urls", namespace="api")),
]
