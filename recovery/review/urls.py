"""The review screens for doubtful leads (namespace `review`)."""

from django.urls import path

from recovery.review.views import ReviewLeadView, ReviewListView

app_name = "review"
urlpatterns = [
    path("", ReviewListView.as_view(), name="list"),
    # path: an external_id may hold any character, a slash included.
    path("<path:source_pk>/", ReviewLeadView.as_view(), name="lead"),
]
