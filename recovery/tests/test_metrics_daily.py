"""ops.v_cabinet_kpi_red_recovery_metrics_daily across several simulated days of seed and recover."""

from datetime import timedelta

import pytest

from identity.index import drivers_index_refresh
from identity.tests.factories import lima_datetime, lima_today, make_claim, make_driver, make_lead
from recovery.jobs.recover import queue_recover
from recovery.models import KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.sql_views import KpiRedBacklog, KpiRedRecoveryMetricsDaily
from recovery.tests.factories import backlog, faceless, shift_current_step, stranger

pytestmark = pytest.mark.django_db


def test_metrics_daily_invariants_hold_across_simulated_days():
    today = lima_today()
    day = {k: today - timedelta(days=k) for k in range(7)}

    def arrive(days_ago: int, lead_factory, **kw):
        return lead_factory(created_at=lima_datetime(day[days_ago], 9), **kw)

    def run_jobs(days_ago: int) -> None:
        queue_seed()
        queue_recover()
        shift_current_step(day[days_ago])

    # Day -6: two leads, one of them has a driver already.
    make_driver(first_name="José", last_name="Quispe Huamán", phone="951100001", document="41100001")
    drivers_index_refresh()
    a1 = arrive(6, make_lead, first_name="José", last_name="Quispe Huamán", phone="951100001", document="41100001",
                email=None, birth_date=None)
    a2 = arrive(6, make_lead, first_name="Sofía", last_name="Chávez Ramírez", phone="951100002", document="41100002",
                email=None, birth_date=None)
    shift_current_step(day[6], hour=8)
    run_jobs(6)
    # Day -4: a2's driver registers (index refresh) and two more leads arrive.
    make_driver(first_name="Sofía", last_name="Chávez Ramírez", phone="951100002", document="41100002")
    drivers_index_refresh()
    shift_current_step(day[4], hour=8)
    b1 = arrive(4, stranger)
    b2 = arrive(4, faceless)
    run_jobs(4)
    # Day -2: an imported claim takes b1 out of the red KPI; a new lead arrives.
    make_claim(b1, milestone=1, status="claimed", created_at=lima_datetime(day[2], 11))
    c1 = arrive(2, stranger)
    run_jobs(2)
    # Today: one more lead, nothing matches it yet.
    arrive(0, stranger)
    queue_seed()
    queue_recover()

    rows = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))
    assert rows[0].metric_date == day[6] and rows[-1].metric_date == today and len(rows) == 7
    previous_end = 0
    for row in rows:
        assert row.backlog_end == row.backlog_start + row.new_backlog_in - row.matched_out
        assert row.backlog_start == previous_end
        assert row.net_change == row.new_backlog_in - row.matched_out
        previous_end = row.backlog_end
    assert rows[-1].backlog_end == KpiRedBacklog.objects.count() == 3  # b2, c1, today's lead
    flows = {r.metric_date: (r.new_backlog_in, r.matched_out) for r in rows}
    assert flows[day[6]] == (2, 1)  # a1 linked the day it arrived
    assert flows[day[4]] == (2, 1)  # a2 linked once its driver registered
    assert flows[day[2]] == (1, 1)  # b1 claimed
    assert flows[today] == (1, 0)
    assert {a1.source_pk, a2.source_pk} == set(
        KpiRedRecoveryQueue.objects.filter(status="matched").values_list("lead_source_pk", flat=True))
    assert {b2.source_pk, c1.source_pk} <= backlog()
