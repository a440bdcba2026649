"""The ops dashboard page (`/ops/`): one selector read, three server-rendered charts, one template."""

from django.contrib.auth.decorators import login_required, permission_required
from django.shortcuts import render

from recovery.charts import dashboard_charts
from recovery.dashboard import dashboard_read
from recovery.read_cache import read_cached

# Who may see the dashboard: whoever may view the red-KPI queue (staff with that permission, the
# reviewer group, superusers). Anonymous users go to the login page; others get 403.
DASHBOARD_PERMISSION = "recovery.view_kpiredrecoveryqueue"


@login_required
@permission_required(DASHBOARD_PERMISSION, raise_exception=True)
def dashboard(request):
    # The figures and their charts, at most CT4_API_CACHE_SECONDS old (recovery.read_cache).
    context = read_cached("dashboard", _dashboard_context)
    return render(request, "ops/dashboard.html", context)


def _dashboard_context() -> dict:
    data = dashboard_read()
    return {"data": data, "charts": dashboard_charts(data)}
