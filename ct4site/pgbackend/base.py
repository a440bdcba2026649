"""Django's PostgreSQL backend, with introspection that covers the runbook schemas.

Our runbook tables live in `canon` and `ops` with `db_table = 'canon"."identity_links'`.
Django's introspection only lists relations on the search path, so without this `flush`,
transactional tests and constraint changes would silently skip those tables.
"""

from django.db.backends.postgresql import base

from ct4site.pgbackend.introspection import DatabaseIntrospection


class DatabaseWrapper(base.DatabaseWrapper):
    introspection_class = DatabaseIntrospection
