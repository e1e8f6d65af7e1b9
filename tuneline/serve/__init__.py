"""The trained model in use: talk to it, serve it through MLflow, export it.

`chat` (load a trained directory the way evaluation does, render conversations with the chat
template it was trained on, generate, stop at the end-of-turn token), `pyfunc` (the MLflow
model around `chat`), `mlflow_model` (log a trained directory as that model), `export` (a plain
Hugging Face or PEFT directory for other serving stacks), `commands` (`run.py generate`, `chat`,
`export`). Importing this package imports neither torch nor MLflow.
"""
