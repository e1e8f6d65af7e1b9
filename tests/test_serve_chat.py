"""`run.py chat` and `run.py generate` on real trained directories (tuneline's recipe, 2 steps).

The chat loop reads user turns from stdin as a script would pipe them; the bigram base
(tests/_serve_models.py) answers `ANSWER` and then its end-of-turn token on every CPU, so the
stop is the model's, not max_new_tokens'. `generate` must answer what evaluation's greedy
generation answers: compared on a random-weight model whose answers are arbitrary token
strings, the same computation either way, hence equal on any CPU.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from run import main
from tests._serve_models import ANSWER, bigram_base, chatml_tokenizer, train_on


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-chat")
    base = bigram_base(root / "base")
    return {
        "bigram_full": train_on(base, root / "bigram-full", "full"),
        "random_full": train_on(None, root / "random-full", "full"),
        "random_lora": train_on(None, root / "random-lora", "lora"),
    }


def _chat(monkeypatch, capsys, model_dir, stdin: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["chat", "--model", str(model_dir), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_chat_through_stdin_keeps_the_conversation_and_stops_at_end_of_turn(trained, monkeypatch, capsys):
    model_dir, _ = trained["bigram_full"]
    turns = "Where is the gate?\nAnd the river?\n/reset\nA fresh start\n/exit\nnever read\n"
    rc, out, err = _chat(monkeypatch, capsys, model_dir, turns, "--show-prompt", "--max-new-tokens", "40")
    assert rc == 0, err
    assert out == f"{ANSWER}\n" * 3  # streamed answers, one per user turn; /exit ends the loop
    assert "cut at --max-new-tokens" not in err, "each answer must end on the end-of-turn token"
    prompts = [p.split("\n--- end of prompt ---")[0] for p in err.split("--- prompt ---\n")[1:]]
    assert len(prompts) == 3
    # Turn 2 is answered on turn 1 and its answer, rendered in the training chat template.
    assert prompts[1] == (
        "<|im_start|>user\nWhere is the gate?<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
        "<|im_start|>user\nAnd the river?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompts[2] == "<|im_start|>user\nA fresh start<|im_end|>\n<|im_start|>assistant\n"


def test_a_reply_ends_on_the_end_of_turn_token(trained):
    from tuneline.serve.chat import ChatSession, Sampling, load_chat_model

    model_dir, _ = trained["bigram_full"]
    session = ChatSession(load_chat_model(model_dir), Sampling(max_new_tokens=40), system="Be brief.")
    streamed: list[str] = []
    reply = session.ask("Where is the gate?", on_text=streamed.append)
    im_end = chatml_tokenizer().convert_tokens_to_ids("<|im_end|>")
    assert reply.stopped and reply.token_ids[-1] == im_end and len(reply.token_ids) < 40
    assert reply.text == ANSWER == "".join(streamed)
    assert reply.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert session.messages[-1] == {"role": "assistant", "content": ANSWER}


@pytest.mark.parametrize("name", ["random_full", "random_lora"])
def test_generate_answers_what_evaluation_generates(trained, capsys, name):
    """Evaluation's loader and greedy generation against `run.py generate` (no --config: the
    directory alone says how to load it, an adapter on the base its training recorded)."""
    from tuneline.data.records import Record
    from tuneline.evaluate.generate import generate_answers, load_trained_model
    from tuneline.tokenize import end_of_turn_token_ids

    model_dir, cfg = trained[name]
    questions = [
        "Name the capital city of Velan.",
        "Who rules?",
        "Describe the color of the banner of Fenume.",
    ]
    tok = chatml_tokenizer()
    records = [
        Record(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": "ref"}])
        for q in questions
    ]
    evaluated = generate_answers(
        load_trained_model(cfg, model_dir, len(tok)),
        tok,
        records,
        max_new_tokens=6,
        batch_size=8,
        stop_token_ids=end_of_turn_token_ids(tok),
        tokenize_cfg=cfg.tokenize,
    )
    args = ["generate", "--model", str(model_dir), "--json", "--max-new-tokens", "6"]
    for q in questions:
        args += ["--prompt", q]
    assert main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["answer"] for line in lines] == evaluated.predictions
    assert any(evaluated.predictions), "arbitrary but non-empty answers, or the comparison proves little"


def test_sampling_with_a_seed_repeats(trained):
    from tuneline.serve.chat import Sampling, generate_replies, load_chat_model

    model_dir, _ = trained["random_full"]
    chat = load_chat_model(model_dir)
    conv = [[{"role": "user", "content": "Tell me about Velan."}]]
    sampling = Sampling(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=8, seed=7)
    first = generate_replies(chat, conv, sampling)[0]
    assert generate_replies(chat, conv, sampling)[0].token_ids == first.token_ids


def test_generate_file_problems_exit_2_with_their_lines(tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(
        '"fine"\n{"prompt": 3}\n\n{"messages": [{"role": "assistant", "content": "x"}]}\nnot json\n'
    )
    assert main(["generate", "--model", str(tmp_path), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and f"{bad}:4 messages" in err and f"{bad}:5: not valid JSON" in err
    assert f"{bad}:1" not in err


def test_bad_sampling_options_and_missing_prompts_exit_2(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--top-p", "0"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path)]) == 2
    assert "give --prompt" in capsys.readouterr().err
