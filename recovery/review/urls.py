"""The review screens for doubtful leads (namespace `review`)."""

from django.urls import path

from recovery.review.views import AuditItemView, ReviewLeadView, ReviewListView

app_name = "review"
urlpatterns = [
    path("", ReviewListView.as_view(), name="list"),
    # Before the lead's path, which would take "audit/<id>/" as a source_pk.
    path("audit/<int:item_id>/", AuditItemView.as_view(), name="audit"),
    # path: an external_id may hold any character, a slash included.
    path("<path:source_pk>/", ReviewLeadView.as_view(), name="lead"),
]
