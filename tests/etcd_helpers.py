"""Real etcd for the cluster tests: the local members of `dashboard.demo.etcd_local`, and the rule
that a missing etcd skips the tests (or fails them, where CI requires them)."""
from __future__ import annotations

import os

from dashboard.demo.etcd_local import EtcdCluster, EtcdMember, etcd_binary

__all__ = ["REQUIRE_ETCD_ENV", "EtcdCluster", "EtcdMember", "etcd_binary", "require_etcd"]

REQUIRE_ETCD_ENV = "DASHBOARD_REQUIRE_ETCD"


def require_etcd() -> str:
    """The etcd executable; skip the test without it, or fail when CI requires the cluster tests."""
    import pytest

    found = etcd_binary()
    if found is None:
        message = "etcd not found on PATH; install Debian's etcd-server package"
        if os.environ.get(REQUIRE_ETCD_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ETCD_ENV}=1 requires the cluster tests)")
        pytest.skip(message)
    return found
