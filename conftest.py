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
