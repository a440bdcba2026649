"""Top-level URLs: the admin, the review screens, the ops dashboard, the REST API and its schema."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="ops:dashboard", permanent=False)),
    path("admin/", admin.site.urls),
    path("review/", include("recovery.review.urls")),
    path("ops/", include("recovery.dashboard_urls")),
    path("api/", include("recovery.api.urls", namespace="api")),
]

# Under /api/ errors answer in the API's JSON error shape; elsewhere, Django's pages.
handler404 = "recovery.api.errors.not_found"
handler500 = "recovery.api.errors.server_error"
