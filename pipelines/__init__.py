"""Pipelines only wire steps; `pipelines.runner` configures and launches them."""
