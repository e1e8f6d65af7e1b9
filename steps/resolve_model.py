"""The model a standalone evaluation scores: a registered version or a local directory, as an artifact."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Annotated

from zenml import log_metadata, step

from materializers.model_artifact_materializer import ModelArtifactMaterializer
from steps._caching import cache_policy
from steps._tracking import active_run
from tuneline.artifacts import ModelArtifact

log = logging.getLogger("tuneline")


@step(output_materializers=ModelArtifactMaterializer, cache_policy=cache_policy(__name__))
def resolve_model(reference: str, fingerprint: str) -> Annotated[ModelArtifact, "model"]:
    """`reference` is pinned before the run (`models:/NAME/N` or an absolute directory) and
    `fingerprint` is the content of what it names: both are in the cache key, so a moved alias
    or an edited directory is evaluated again. The files are copied, because the materializer
    writes the model card into the directory it stores and a user's directory is not ours to
    change."""
    import mlflow

    from tuneline.home import mlflow_tracking_uri, tuneline_home
    from tuneline.tracking import resolve_model_ref

    # The tracker's store (the one the reference was pinned in); a stack without one: tuneline's.
    uri = mlflow.get_tracking_uri() if active_run() is not None else mlflow_tracking_uri()
    local, pinned = resolve_model_ref(
        reference, tracking_uri=uri, cache_root=str(tuneline_home() / "cache" / "models")
    )
    scratch = tempfile.mkdtemp(prefix="tuneline-eval-model-")
    shutil.copytree(local, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    recorded = ModelArtifact.from_dir(scratch)
    log.info("evaluating %s (%s)", pinned, local)
    log_metadata(
        metadata={"reference": pinned, "fingerprint": fingerprint, "method": recorded.method or "unknown"},
        infer_artifact=True,
    )
    return ModelArtifact(
        path=scratch,
        method=recorded.method or "unknown",
        base_model=recorded.base_model,
        metrics=recorded.metrics,
        scratch=True,
    )
