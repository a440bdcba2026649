"""The ops dashboard (namespace `ops`)."""

from django.urls import path

from recovery import dashboard_views

app_name = "ops"
urlpatterns = [
    path("", dashboard_views.dashboard, name="dashboard"),
]
