"""A local stand-in for the OpenAI files, fine-tuning and chat completions endpoints, shaped as
the official `openai` client's types expect, for offline tests of `train.backend: openai`.

Jobs move one stage per retrieve (validating_files -> queued -> running -> succeeded), emitting
one metrics event per retrieve while running, then a result CSV file. The base model answers
something generic; a fine-tuned model answers with the training answer whose question shares
the most words with the prompt, so a tuned model beats its base on the Lorekeep questions.
Every request must carry the configured bearer key.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_ANSWER = "I am not sure about that."
TEST_KEY = "sk-test-" + "k3y" * 8


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


class FakeOpenAI:
    """The server's state; tests read `requests`, `jobs`, `files`."""

    def __init__(self, api_key: str = TEST_KEY, steps: int = 4, fail_jobs: bool = False):
        self.api_key = api_key
        self.steps = steps
        self.fail_jobs = fail_jobs
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.base_url = ""

    # -- helpers --------------------------------------------------------------------------
    def _file_obj(self, f: dict[str, Any]) -> dict[str, Any]:
        return {k: f[k] for k in ("id", "object", "bytes", "created_at", "filename", "purpose", "status")}

    def _event(self, job_id: str, message: str, data: Any = None, kind: str = "message") -> None:
        self.events[job_id].append(
            {
                "id": f"ftevent-{uuid.uuid4().hex[:16]}",
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": "info",
                "message": message,
                "data": data,
                "type": kind,
            }
        )

    def _examples(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id or file_id not in self.files:
            return []
        return [
            json.loads(line) for line in self.files[file_id]["content"].decode().splitlines() if line.strip()
        ]

    def created_jobs(self) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p == "/v1/fine_tuning/jobs")

    def cancelled(self) -> list[str]:
        return [p.split("/")[-2] for m, p in self.requests if m == "POST" and p.endswith("/cancel")]

    # -- endpoints ------------------------------------------------------------------------
    def upload(self, fields: dict[str, Any]) -> tuple[int, Any]:
        name, content = fields.get("file", ("upload", b""))
        purpose = fields.get("purpose", b"").decode()
        if purpose != "fine-tune":
            return 400, _error("purpose must be fine-tune", "purpose")
        for i, line in enumerate(content.decode().splitlines(), 1):
            try:
                ex = json.loads(line)
            except json.JSONDecodeError:
                return 400, _error(f"line {i} is not JSON", "file")
            if not any(m.get("role") == "assistant" for m in ex.get("messages", [])):
                return 400, _error(f"line {i} has no assistant message", "file")
        fid = f"file-{uuid.uuid4().hex[:24]}"
        self.files[fid] = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
            "content": content,
        }
        return 200, self._file_obj(self.files[fid])

    def create_job(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("training_file") not in self.files:
            return 400, _error("invalid training_file", "training_file")
        vf = body.get("validation_file")
        if vf is not None and vf not in self.files:
            return 400, _error("invalid validation_file", "validation_file")
        hp = ((body.get("method") or {}).get("supervised") or {}).get("hyperparameters") or {}
        hp = {
            "n_epochs": 3 if hp.get("n_epochs", "auto") == "auto" else hp["n_epochs"],
            "batch_size": 1 if hp.get("batch_size", "auto") == "auto" else hp["batch_size"],
            "learning_rate_multiplier": 2.0
            if hp.get("learning_rate_multiplier", "auto") == "auto"
            else hp["learning_rate_multiplier"],
        }
        jid = f"ftjob-{uuid.uuid4().hex[:24]}"
        self.jobs[jid] = {
            "id": jid,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": hp,
            "model": body["model"],
            "organization_id": "org-test",
            "result_files": [],
            "seed": body.get("seed") if body.get("seed") is not None else 1234,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": body["training_file"],
            "validation_file": vf,
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
            "suffix": body.get("suffix"),
            "step": 0,
        }
        self.events[jid] = []
        self._event(jid, f"Created fine-tuning job: {jid}")
        return 200, self._job_obj(jid)

    def _job_obj(self, jid: str) -> dict[str, Any]:
        return {k: v for k, v in self.jobs[jid].items() if k not in ("suffix", "step")}

    def advance(self, jid: str) -> None:
        job = self.jobs[jid]
        status = job["status"]
        if status == "validating_files":
            job["status"] = "queued"
            self._event(jid, "Validating training file")
        elif status == "queued":
            job["status"] = "running"
            self._event(jid, "Fine-tuning job started")
        elif status == "running" and job["step"] < self.steps:
            job["step"] += 1
            s = job["step"]
            data = {
                "step": s,
                "train_loss": round(2.0 / s, 4),
                "train_mean_token_accuracy": round(0.5 + 0.1 * s, 4),
                "total_steps": self.steps,
            }
            if job["validation_file"] and s % 2 == 0:
                data["valid_loss"] = round(2.2 / s, 4)
                data["valid_mean_token_accuracy"] = round(0.45 + 0.1 * s, 4)
            self._event(jid, f"Step {s}/{self.steps}: training loss={data['train_loss']}", data, "metrics")
        elif status == "running":
            if self.fail_jobs:
                job["status"] = "failed"
                job["error"] = {
                    "code": "invalid_training_file",
                    "message": "bad data",
                    "param": "training_file",
                }
                self._event(jid, "Fine-tuning job failed")
                return
            suffix = job["suffix"] or ""
            job["fine_tuned_model"] = f"ft:{job['model']}:tuneline-test:{suffix}:{jid[-8:]}"
            job["status"] = "succeeded"
            job["finished_at"] = int(time.time())
            examples = self._examples(job["training_file"])
            job["trained_tokens"] = (
                sum(len(json.dumps(e)) // 4 for e in examples) * job["hyperparameters"]["n_epochs"]
            )
            rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
            for s in range(1, self.steps + 1):
                rows.append(f"{s},{2.0 / s:.4f},{0.5 + 0.1 * s:.4f},{2.2 / s:.4f},{0.45 + 0.1 * s:.4f}")
            fid = f"file-{uuid.uuid4().hex[:24]}"
            content = ("\n".join(rows) + "\n").encode()
            self.files[fid] = {
                "id": fid,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": "step_metrics.csv",
                "purpose": "fine-tune-results",
                "status": "processed",
                "content": content,
            }
            job["result_files"] = [fid]
            self._event(jid, f"New fine-tuned model created: {job['fine_tuned_model']}")
            self._event(jid, "The job has successfully completed")

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get("model", "")
        messages = body.get("messages") or []
        question = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        tuned = next((j for j in self.jobs.values() if j["fine_tuned_model"] == model), None)
        if tuned is None and model.startswith("ft:"):
            return 404, _error(f"The model '{model}' does not exist", "model", code="model_not_found")
        answer = BASE_ANSWER
        if tuned is not None:
            pairs = []
            for ex in self._examples(tuned["training_file"]):
                for i, m in enumerate(ex["messages"][:-1]):
                    nxt = ex["messages"][i + 1]
                    if m["role"] == "user" and nxt["role"] == "assistant":
                        pairs.append((_words(m["content"]), nxt["content"]))
            # Shared rare words (names) weigh most, as inverse document frequency.
            df: dict[str, int] = {}
            for words, _ in pairs:
                for w in words:
                    df[w] = df.get(w, 0) + 1
            q = _words(question)
            best, score = BASE_ANSWER, 0.0
            for words, reply in pairs:
                overlap = sum(1.0 / df[w] for w in q & words)
                if overlap > score:
                    best, score = reply, overlap
            answer = best
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(answer.split()), "total_tokens": 10},
        }


def _error(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": False}


def make_handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {state.api_key}":
                self._send(401, _error("Incorrect API key provided", code="invalid_api_key"))
                return False
            return True

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            raw = self._body()
            del raw
            with state.lock:
                state.requests.append(("GET", path))
                if not self._authorized():
                    return
                parts = path.strip("/").split("/")
                if path == "/v1/fine_tuning/jobs":
                    wanted = {
                        k[len("metadata[") : -1]: v[0] for k, v in query.items() if k.startswith("metadata[")
                    }
                    jobs = [
                        state._job_obj(j)
                        for j in reversed(list(state.jobs))
                        if all((state.jobs[j]["metadata"] or {}).get(k) == v for k, v in wanted.items())
                    ]
                    return self._send(200, _page(jobs))
                if len(parts) == 4 and parts[:3] == ["v1", "fine_tuning", "jobs"]:
                    if parts[3] not in state.jobs:
                        return self._send(404, _error("job not found", code="not_found"))
                    state.advance(parts[3])
                    return self._send(200, state._job_obj(parts[3]))
                if len(parts) == 5 and parts[4] == "events" and parts[3] in state.events:
                    return self._send(200, _page(list(reversed(state.events[parts[3]]))))
                if len(parts) == 3 and parts[1] == "files" and parts[2] in state.files:
                    return self._send(200, state._file_obj(state.files[parts[2]]))
                if (
                    len(parts) == 4
                    and parts[1] == "files"
                    and parts[3] == "content"
                    and parts[2] in state.files
                ):
                    return self._send(200, state.files[parts[2]]["content"], "application/octet-stream")
                return self._send(404, _error(f"unknown path {path}", code="not_found"))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            raw = self._body()
            with state.lock:
                state.requests.append(("POST", path))
                if not self._authorized():
                    return
                parts = path.strip("/").split("/")
                if path == "/v1/files":
                    head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                    msg = BytesParser(policy=email_policy).parsebytes(head + raw)
                    fields: dict[str, Any] = {}
                    for part in msg.iter_parts():
                        name = part.get_param("name", header="content-disposition")
                        payload = part.get_payload(decode=True)
                        fields[name] = (part.get_filename(), payload) if part.get_filename() else payload
                    return self._send(*state.upload(fields))
                body = json.loads(raw or b"{}")
                if path == "/v1/fine_tuning/jobs":
                    return self._send(*state.create_job(body))
                if len(parts) == 5 and parts[4] == "cancel" and parts[3] in state.jobs:
                    job = state.jobs[parts[3]]
                    if job["status"] in ("validating_files", "queued", "running"):
                        job["status"] = "cancelled"
                        state._event(parts[3], "Fine-tuning job cancelled")
                    return self._send(200, state._job_obj(parts[3]))
                if path == "/v1/chat/completions":
                    return self._send(*state.chat(body))
                return self._send(404, _error(f"unknown path {path}", code="not_found"))

    return Handler


@contextmanager
def openai_server(**kwargs: Any) -> Iterator[FakeOpenAI]:
    """A running server on 127.0.0.1 (its `/v1` URL in `.base_url`), stopped on exit."""
    state = FakeOpenAI(**kwargs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
