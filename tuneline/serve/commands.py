"""`run.py generate | chat | export`: a trained model in use from the command line.

    python run.py generate --model REF --prompt "..." [--prompt ...] [--file prompts.jsonl] [--json]
    python run.py chat --model REF [--system TEXT] [--show-prompt]     (one user turn per stdin line)
    python run.py export --model REF --out DIR [--merge]

REF is `models:/NAME@alias` or `models:/NAME/VERSION` in the registry a run writes to (--config's
tracking URI, else MLFLOW_TRACKING_URI, else TUNELINE_HOME's SQLite file), or a local
directory: a training output, a downloaded version, an export. With --config, that project's
model and tokenize settings load and prompt the model, as its evaluation did; without it the
settings logged with the version are used. Parsing here imports nothing heavy, so
`run.py --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from tuneline.errors import UserError

log = logging.getLogger("tuneline")


def add_model_arguments(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate", help="answer prompts with a trained model (greedy unless told otherwise)"
    )
    gen.add_argument("--prompt", action="append", default=[], help="a user message (repeatable)")
    gen.add_argument(
        "--file",
        help="JSONL, one prompt per line: a JSON string, {'prompt': TEXT} or {'messages': [...]}",
    )
    gen.add_argument("--json", action="store_true", help="one JSON object per line: messages and answer")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    chat = sub.add_parser(
        "chat", help="talk to a trained model: one user turn per line of stdin, answers streamed"
    )
    chat.add_argument(
        "--show-prompt", action="store_true", help="print the prompt each answer came from (to stderr)"
    )
    export = sub.add_parser(
        "export", help="write a Hugging Face (or PEFT adapter) directory that transformers and vLLM load"
    )
    export.add_argument("--out", required=True, help="new or empty directory (never overwritten)")
    export.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base")
    for cmd in (gen, chat):
        cmd.add_argument("--system", help="system turn for conversations without one")
        cmd.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        cmd.add_argument("--top-k", type=int, help="sample from the k likeliest tokens (0 = off)")
        cmd.add_argument("--top-p", type=float, help="nucleus sampling threshold")
        cmd.add_argument("--repetition-penalty", type=float, help="1 = off")
        cmd.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
        cmd.add_argument("--seed", type=int, help="makes sampled answers repeatable")
    for cmd, handler in ((gen, generate_command), (chat, chat_command), (export, export_command)):
        cmd.add_argument(
            "--model", required=True, metavar="REF", help="models:/NAME@alias, models:/NAME/N or a dir"
        )
        cmd.add_argument("--config", help="project YAML: its tracking URI, model and tokenize settings")
        cmd.set_defaults(handler=handler)


def resolve(ref: str, config_path: str | None) -> tuple[str, Any]:
    """(local model directory, the project config or None)."""
    from tuneline.home import tuneline_home
    from tuneline.tracking import resolve_model_ref

    cfg = None
    if config_path:
        from tuneline.config import load_config

        cfg = load_config(config_path)
    uri = ""
    if ref.startswith("models:/"):
        from tuneline.cli import registry_target

        uri, _ = registry_target(config_path)
    local, pinned = resolve_model_ref(
        ref, tracking_uri=uri, cache_root=str(tuneline_home() / "cache" / "models")
    )
    if pinned != local:
        log.info("%s is %s (%s)", ref, pinned, local)
    return local, cfg


def sampling_from(args: argparse.Namespace) -> Any:
    from tuneline.serve.chat import Sampling

    return Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def read_prompts(path: str) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file; every bad line is reported with its number at once."""
    from tuneline.serve.chat import check_conversation

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--file {path}: no such file")
    out, problems = [], []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if isinstance(item, str):
                item = {"prompt": item}
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                out.append([{"role": "user", "content": item["prompt"]}])
            elif isinstance(item, dict) and "messages" in item:
                out.append(check_conversation(item["messages"], f"{path}:{n} messages"))
            else:
                problems.append(
                    f"{path}:{n}: expected a JSON string, {{'prompt': TEXT}} or {{'messages': [...]}}"
                )
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg})")
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError("\n".join(problems))
    return out


def generate_command(args: argparse.Namespace) -> str:
    from tuneline.serve.chat import generate_replies, load_chat_model

    conversations = [[{"role": "user", "content": p}] for p in args.prompt]
    if args.file:
        conversations += read_prompts(args.file)
    if not conversations:
        raise UserError("generate: give --prompt TEXT (repeatable) or --file prompts.jsonl")
    sampling = sampling_from(args)  # checked before the model loads
    model_dir, cfg = resolve(args.model, args.config)
    chat = load_chat_model(model_dir, cfg)
    replies = generate_replies(chat, conversations, sampling, system=args.system, batch_size=args.batch_size)
    if args.json:
        return "\n".join(
            json.dumps({"messages": c, "answer": r.text, "stopped": r.stopped}, ensure_ascii=False)
            for c, r in zip(conversations, replies, strict=True)
        )
    return "\n\n".join(r.text for r in replies)


def chat_command(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Read user turns from stdin until EOF (or /exit), streaming each answer to stdout. `/reset`
    starts a new conversation."""
    from tuneline.serve.chat import ChatSession, load_chat_model

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    sampling = sampling_from(args)
    model_dir, cfg = resolve(args.model, args.config)
    session = ChatSession(load_chat_model(model_dir, cfg), sampling, system=args.system)
    interactive = stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}: /reset starts over, /exit or Ctrl-D quits", file=stderr)

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    while True:
        if interactive:
            stderr.write("> ")
            stderr.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            session.reset()
            if interactive:
                print("(new conversation)", file=stderr)
            continue
        dropped = session.dropped
        reply = session.ask(text, on_text=write)
        write("\n")
        if args.show_prompt:
            print(f"--- prompt ---\n{reply.prompt}\n--- end of prompt ---", file=stderr)
        if session.dropped > dropped:
            print(
                f"(the oldest {session.dropped - dropped} exchange(s) no longer fit and were dropped)",
                file=stderr,
            )
        if not reply.stopped:
            print(
                f"(cut at --max-new-tokens {sampling.max_new_tokens} before the end of the turn)", file=stderr
            )


def export_command(args: argparse.Namespace) -> str:
    from tuneline.serve.export import export_model, refuse_non_empty

    refuse_non_empty(Path(args.out).expanduser().absolute())  # before any download
    model_dir, cfg = resolve(args.model, args.config)
    done = export_model(model_dir, args.out, merge=args.merge, cfg=cfg)
    what = {"full": "full model", "merged": "LoRA merged into its base", "adapter": "PEFT adapter"}[done.kind]
    if done.base:
        what += f" on {done.base}" + (f"@{done.base_revision}" if done.base_revision else "")
    lines = [
        f"exported {args.model} to {done.path} ({what})",
        f"  generation_config.json stops on token ids {done.eos_token_ids} (end of turn, EOS)",
    ]
    lines += [f"  note: {n}" for n in done.notes]
    lines.append(f"  transformers: AutoModelForCausalLM.from_pretrained('{done.path}')")
    if done.kind == "adapter":
        lines.append(
            "    (transformers loads the base's generation config: pass "
            f"generation_config=GenerationConfig.from_pretrained('{done.path}') to generate)"
        )
    lines.append(f"  vLLM (GPU, not installed here): {done.serve_command()}")
    return "\n".join(lines)
