"""Secrets never become params (the promotion rules are in tests/test_registry.py)."""

from __future__ import annotations

from tuneline.tracking import safe_params


def test_secrets_never_become_params():
    params = safe_params({"tracking": {"mlflow_tracking_uri": "x", "api_token": "s3cr3t"}, "hf_token": "t"})
    assert "s3cr3t" not in params.values() and "t" not in params.values()
    assert params["tracking.mlflow_tracking_uri"] == "x"
