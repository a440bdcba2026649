"""Test-wide fixtures. Tests run against a real PostgreSQL: DATABASE_URL, or the embedded server."""

import pytest


@pytest.fixture
def tmp_csv(tmp_path):
    """Write a CSV file (text or bytes) under tmp_path and return its path."""

    def write(name: str, content, encoding: str = "utf-8"):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding=encoding)
        return path

    return write


@pytest.fixture(autouse=True)
def audit_sample_after_runs_off(settings, monkeypatch):
    """No audit sample after each linking run, except in the tests of that feature (which turn it on).

    In production it is on (CT4_AUDIT sample_after_runs). Left on here, every test whose job run commits
    (transaction=True tests, the commands the tests start as subprocesses) would get an extra
    audit_sample run and audit items it never asked for, changing the job runs and review lists those
    tests read. The environment variable reaches the subprocesses, which read the settings anew."""
    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "sample_after_runs": False}
    monkeypatch.setenv("CT4_AUDIT_SAMPLE_AFTER_RUNS", "false")


@pytest.fixture(autouse=True)
def index_images_off(settings, monkeypatch):
    """No drivers index image on disk (identity.index_image), except in the tests of that feature.

    In production it is on. Here a test that writes index rows itself, without the refresh that gives
    the index a new version, could read an image of the rows it replaced; and images would pile up under
    .data/ from every test database. The environment variable reaches the subprocesses."""
    settings.CT4_INDEX_IMAGE_DIR = ""
    monkeypatch.setenv("CT4_INDEX_IMAGE_DIR", "")


@pytest.fixture(autouse=True)
def index_kept_off(settings, monkeypatch):
    """No in-memory index kept from one run to the next in a process (identity.candidates._KEPT), except in
    the tests of that feature: for the same reason as the images, and the test process runs every test."""
    from identity import candidates  # noqa: PLC0415 - after Django is set up

    settings.CT4_INDEX_KEEP = False
    monkeypatch.setenv("CT4_INDEX_KEEP", "false")
    monkeypatch.setattr(candidates, "_KEPT", {"key": None, "index": None})
