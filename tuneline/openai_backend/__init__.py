"""Training through the OpenAI fine-tuning API: the records become the API's chat JSONL, the
job is priced, started (or re-attached) and followed, and the tuned model answers evaluation
through chat completions. Pure functions over the official `openai` client; no ZenML here."""
