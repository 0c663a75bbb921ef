"""The structure stays as designed: import contracts, lint and types are checked with the tests.

The contracts (pyproject.toml, [tool.importlinter]) say which layer may import which: the model
and the evaluation do no I/O, the read side never imports the poller, routing never loads the
charts, the product never imports the fakes, and no two sibling modules import each other.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ruff_finds_nothing():
    result = run(sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_finds_nothing():
    # No cache directory in the checkout: each run checks from scratch (a few seconds).
    result = run(sys.executable, "-m", "mypy", "--cache-dir", "/dev/null")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_evaluation_imports_without_the_network_stack():
    """`dashboard.health` (and the model it works on) import where httpx and aiohttp do not exist."""
    script = textwrap.dedent("""
        import sys
        for name in ("httpx", "aiohttp", "httpx_aiohttp", "sqlite3", "sqlite_utils", "flask", "plotly"):
            sys.modules[name] = None  # importing it now raises ImportError, as if not installed
        import dashboard.health
        print(dashboard.health.evaluate_cycle.__name__)
    """)
    result = run(sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "evaluate_cycle"


def test_no_merge_conflict_marker_is_left_in_our_files():
    """Ruff and mypy see only Python; a marker left in a stylesheet silently drops the rule after it
    (one did: the overview's filter rule, for a session)."""
    markers = ("<<<<<<< ", "=======\n", ">>>>>>> ")
    ours = [p for folder in ("dashboard", "templates", "static", "tests", "bench", "docs") for p in
            (REPO_ROOT / folder).rglob("*") if p.is_file() and "vendor" not in p.parts
            and p.suffix in {".py", ".html", ".css", ".js", ".md", ".yaml", ".toml", ".txt"}]
    ours += [REPO_ROOT / name for name in ("README.md", "pyproject.toml", "config.yaml", "Makefile")]
    assert len(ours) > 100
    found = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in ours if path.exists()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1)
             if line.startswith(markers)]
    assert found == [], f"merge conflict markers left in: {found}"
