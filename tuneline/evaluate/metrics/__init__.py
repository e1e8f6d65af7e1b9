"""Metric scripts in the layout `evaluate.load(path)` expects: <name>/<name>.py, one `evaluate.Metric` each."""
