"""Reading a TUNELINE_HOME's ZenML store from tests, in a subprocess: ZenML binds its global
configuration once per process, so querying it in the test process would tie the whole session
to one test's home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_VERSIONS = """
import json, sys
from pipelines.stack import configure_environment
configure_environment()
from zenml.client import Client
c = Client()
try:
    c.get_model(sys.argv[1])
except KeyError:
    print("null"); sys.exit(0)
out = []
for mv in c.list_model_versions(model=sys.argv[1], hydrate=True, size=1000, sort_by="number"):
    arts = c.list_artifact_versions(model_version_id=mv.id, size=1000)
    out.append({
        "name": mv.name,
        "stage": getattr(mv.stage, "value", mv.stage),
        "meta": {k: v for k, v in mv.run_metadata.items()},
        "artifacts": sorted({a.artifact.name for a in arts}),
    })
print(json.dumps(out))
"""


def zenml_versions(home: Path, model_name: str) -> list[dict] | None:
    """`zenml model version list --model NAME` through the Client API, oldest first: name, stage,
    run metadata and linked artifact names per version; None when ZenML has no such model."""
    env = {**os.environ, "TUNELINE_HOME": str(home)}
    env.pop("ZENML_CONFIG_PATH", None)
    r = subprocess.run(
        [sys.executable, "-c", _VERSIONS, model_name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
