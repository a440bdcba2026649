"""Top-level URLs: the admin now; the API and dashboard join as they are built."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
