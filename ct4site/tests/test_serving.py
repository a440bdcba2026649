"""Production serving end to end: collectstatic, then gunicorn with ct4site.settings_production (DEBUG off)
serves the probes, the admin's and the API docs' static files (WhiteNoise) and sums metrics over workers."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.db import connection

HTTPS = {"X-Forwarded-Proto": "https"}  # what the TLS-terminating proxy in front of gunicorn sends


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - a loopback http:// URL
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture
def production_server(tmp_path):
    """gunicorn (2 workers) on the test database with the production settings; yields its base URL."""
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "ct4site.settings_production",
           "SECRET_KEY": secrets.token_urlsafe(64), "STATIC_ROOT": str(tmp_path / "static"),
           "CT4_DB_NAME": connection.settings_dict["NAME"], "WEB_CONCURRENCY": "2",
           "CT4_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    env.pop("DEBUG", None)
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=settings.BASE_DIR,
                   env=env, check=True, capture_output=True, timeout=300)
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "ct4site/deploy/gunicorn.conf.py",
                                "ct4site.wsgi"], cwd=settings.BASE_DIR, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        yield base, tmp_path / "static", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.slow
@pytest.mark.django_db
def test_gunicorn_with_production_settings_serves_probes_static_files_and_metrics(production_server):
    base, static_root, _ = production_server
    status, _, body = _get(f"{base}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = _get(f"{base}/readyz")
    assert status == 200, body
    assert json.loads(body)["checks"]["migrations"] == {"ok": True, "unapplied": 0}

    # Plain HTTP is redirected to HTTPS; behind the proxy the pages render.
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(f"{base}/admin/login/", timeout=10)
    assert redirect.value.code == 301
    status, _, page = _get(f"{base}/admin/login/", HTTPS)
    assert status == 200
    admin_assets = re.findall(r'(/static/admin/[^"]+\.[0-9a-f]{12}\.(?:css|js))"', page.decode())
    assert admin_assets, "the admin page names hashed static files (manifest storage)"

    # The API docs' JavaScript comes from the sidecar package, collected and hashed like the admin's.
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    sidecar = [f"/static/{manifest[name]}" for name in (
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js")]
    for asset in [*admin_assets, *sidecar]:
        status, headers, content = _get(f"{base}{asset}", HTTPS)
        assert status == 200 and content, asset
        assert "immutable" in headers.get("Cache-Control", ""), (asset, headers)
    status, headers, _ = _get(f"{base}{sidecar[0]}", {**HTTPS, "Accept-Encoding": "gzip"})
    assert (status, headers.get("Content-Encoding")) == (200, "gzip")

    # DEBUG is off: a missing page is the plain 404, not Django's debug page with the URL patterns.
    status, _, body = _get(f"{base}/no/such/page/", HTTPS)
    assert status == 404 and b"URLconf" not in body

    # Request metrics of both workers add up in one scrape.
    text = _get(f"{base}/metrics")[2].decode()
    static_hits = sum(float(value) for value in re.findall(
        r'^ct4_http_requests_total\{method="GET",status="200",view="static"\} (\S+)$', text, re.M))
    assert static_hits == len(admin_assets) + len(sidecar) + 1


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115 - /proc, read at once
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_each_gunicorn_worker_runs_on_one_cpu_and_the_workers_take_them_in_turn(production_server):
    _, _, master = production_server
    deadline = time.monotonic() + 30
    while len(workers := _children(master)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2, workers
    cpus = [os.sched_getaffinity(worker) for worker in workers]
    assert all(len(allowed) == 1 for allowed in cpus), cpus
    if len(os.sched_getaffinity(master)) > 1:
        assert cpus[0] != cpus[1], cpus
