"""An installed wheel works as well as a checkout: templates and static files travel with the code."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
from pathlib import Path
import dashboard
from dashboard.config import load_settings
from dashboard.web import create_app
assert "site" in dashboard.__file__ or "wheel" in dashboard.__file__, dashboard.__file__
app = create_app(load_settings(sys.argv[1], environ={}))
client = app.test_client()
page = client.get("/")
assert page.status_code == 200, page.status_code
assert b'id="overview"' in page.data
for url in ("/static/app.css", "/static/app.js", "/static/vendor/htmx-2.0.11/htmx.min.js",
            "/static/vendor/plotly.js-basic-4.1.1/plotly-basic.min.js"):
    assert client.get(url).status_code == 200, url
print("ok", Path(app.template_folder).relative_to(Path(dashboard.__file__).parent))
"""


def test_wheel_carries_templates_and_static_and_serves_pages_without_the_checkout(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dashboard/templates/base.html" in names
    assert "dashboard/static/vendor/htmx-2.0.11/LICENSE" in names
    site = tmp_path / "wheel"
    zipfile.ZipFile(wheel).extractall(site)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "deployment": {"region": "a", "primary_region": "a", "regions": ["a"],
                       "region_base_urls": {"a": "http://127.0.0.1:9"}},
        "dashboard": {"database": "db.sqlite"},
    }))
    # Only the unpacked wheel on the path, run from elsewhere: the checkout cannot help.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[2]);"
                             + CHECK.replace("\n", "\n"), str(config), str(site)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok templates"
