"""ops.lead_window_14d: what each linked lead's claim window holds, kept by triggers (recovery/lead_window.py).

The weekly funnel, limbo and 14-day money views probed every lead's window and aggregated every claim
on every query (455-645 ms for the funnel at a million drivers). The table, its statement-level
triggers and an index for the funnel's week filter are defined here; the functions come from
recovery.lead_window (the home of the definition), which `migrate` installs again, rebuilding the
table, whenever that module changes them.
"""

from django.db import migrations

from recovery.lead_window import functions_sql

TABLE = """
CREATE TABLE ops.lead_window_14d (
    lead_source_pk text PRIMARY KEY,
    person_key uuid NOT NULL,
    driver_ids text[] NOT NULL,
    trips_14d bigint NOT NULL,
    claimed_milestones smallint[] NOT NULL
);
COMMENT ON TABLE ops.lead_window_14d IS
    'Per linked lead: its person, the person''s driver records, their trips in the lead''s claim window and '
    'the milestones with a claim row. Kept by triggers on public.driver_trips, canon.identity_links, '
    'public.module_ct_cabinet_leads and public.cabinet_milestone_claims (migration recovery 0005, '
    'recovery/lead_window.py); read by ops.v_cabinet_financial_14d and the views on it.';
"""

# The weekly funnel's week_start filter (the API's week_from / week_to, the dashboard's last weeks)
# reaches the leads as this expression: an index range instead of evaluating it, and the caller's
# "this week" expression with it, on every lead. The funnel view owns it, so it lives here.
WEEK_INDEX = """
CREATE INDEX cabinet_lead_week_idx ON public.module_ct_cabinet_leads ((date_trunc('week', lead_date::timestamp)::date));
"""

# Once per statement; INSERT, UPDATE and DELETE read their transition tables.
TRIGGERS = """
CREATE TRIGGER lead_window_14d_trips_insert AFTER INSERT ON public.driver_trips
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_trips();
CREATE TRIGGER lead_window_14d_trips_update AFTER UPDATE ON public.driver_trips
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_trips();
CREATE TRIGGER lead_window_14d_trips_delete AFTER DELETE ON public.driver_trips
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_trips();
CREATE TRIGGER lead_window_14d_trips_truncate AFTER TRUNCATE ON public.driver_trips
    FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_truncate_figures();

CREATE TRIGGER lead_window_14d_links_insert AFTER INSERT ON canon.identity_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_links();
CREATE TRIGGER lead_window_14d_links_update AFTER UPDATE ON canon.identity_links
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_links();
CREATE TRIGGER lead_window_14d_links_delete AFTER DELETE ON canon.identity_links
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_links();
CREATE TRIGGER lead_window_14d_links_truncate AFTER TRUNCATE ON canon.identity_links
    FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_truncate();

CREATE TRIGGER lead_window_14d_leads_insert AFTER INSERT ON public.module_ct_cabinet_leads
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_leads();
CREATE TRIGGER lead_window_14d_leads_update AFTER UPDATE ON public.module_ct_cabinet_leads
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_leads();
CREATE TRIGGER lead_window_14d_leads_delete AFTER DELETE ON public.module_ct_cabinet_leads
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_leads();
CREATE TRIGGER lead_window_14d_leads_truncate AFTER TRUNCATE ON public.module_ct_cabinet_leads
    FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_truncate();

CREATE TRIGGER lead_window_14d_claims_insert AFTER INSERT ON public.cabinet_milestone_claims
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_claims();
CREATE TRIGGER lead_window_14d_claims_update AFTER UPDATE ON public.cabinet_milestone_claims
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_claims();
CREATE TRIGGER lead_window_14d_claims_delete AFTER DELETE ON public.cabinet_milestone_claims
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_claims();
CREATE TRIGGER lead_window_14d_claims_truncate AFTER TRUNCATE ON public.cabinet_milestone_claims
    FOR EACH STATEMENT EXECUTE FUNCTION ops.lead_window_14d_on_truncate_figures();
"""

BACKWARD = """
DROP INDEX IF EXISTS public.cabinet_lead_week_idx;
DROP TRIGGER IF EXISTS lead_window_14d_trips_insert ON public.driver_trips;
DROP TRIGGER IF EXISTS lead_window_14d_trips_update ON public.driver_trips;
DROP TRIGGER IF EXISTS lead_window_14d_trips_delete ON public.driver_trips;
DROP TRIGGER IF EXISTS lead_window_14d_trips_truncate ON public.driver_trips;
DROP TRIGGER IF EXISTS lead_window_14d_links_insert ON canon.identity_links;
DROP TRIGGER IF EXISTS lead_window_14d_links_update ON canon.identity_links;
DROP TRIGGER IF EXISTS lead_window_14d_links_delete ON canon.identity_links;
DROP TRIGGER IF EXISTS lead_window_14d_links_truncate ON canon.identity_links;
DROP TRIGGER IF EXISTS lead_window_14d_leads_insert ON public.module_ct_cabinet_leads;
DROP TRIGGER IF EXISTS lead_window_14d_leads_update ON public.module_ct_cabinet_leads;
DROP TRIGGER IF EXISTS lead_window_14d_leads_delete ON public.module_ct_cabinet_leads;
DROP TRIGGER IF EXISTS lead_window_14d_leads_truncate ON public.module_ct_cabinet_leads;
DROP TRIGGER IF EXISTS lead_window_14d_claims_insert ON public.cabinet_milestone_claims;
DROP TRIGGER IF EXISTS lead_window_14d_claims_update ON public.cabinet_milestone_claims;
DROP TRIGGER IF EXISTS lead_window_14d_claims_delete ON public.cabinet_milestone_claims;
DROP TRIGGER IF EXISTS lead_window_14d_claims_truncate ON public.cabinet_milestone_claims;
-- CASCADE: the views that read it (ops.v_cabinet_financial_14d and the two views on it)
DROP TABLE IF EXISTS ops.lead_window_14d CASCADE;
DROP FUNCTION IF EXISTS ops.lead_window_14d_on_trips(), ops.lead_window_14d_on_links(),
    ops.lead_window_14d_on_leads(), ops.lead_window_14d_on_claims(), ops.lead_window_14d_on_truncate_figures(),
    ops.lead_window_14d_on_truncate(), ops.lead_window_14d_refresh(text[]), ops.lead_window_14d_rebuild(),
    ops.person_window_trips(uuid, date), ops.in_claim_window(date, date);
"""


class Migration(migrations.Migration):
    dependencies = [("recovery", "0004_heartbeats_and_matched_index"), ("identity", "0004_covering_indexes")]

    operations = [
        migrations.RunSQL(sql=TABLE + functions_sql() + TRIGGERS + WEEK_INDEX + "SELECT ops.lead_window_14d_rebuild();",
                          reverse_sql=BACKWARD),
    ]
