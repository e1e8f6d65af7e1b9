"""The summary counts what is there and renders as one self-contained HTML page."""

from __future__ import annotations

import json
import re

from tuneline.config import DataConfig, SourceConfig
from tuneline.data import load_records, render_summary_html, summarize


def _rs(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q" * (i + 1)},
                {"role": "assistant", "content": "a" * 10 * (i + 1)},
            ]
        }
        for i in range(30)
    ]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "<script>alert(1)</script>"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "y"},
                {"role": "assistant", "content": "z"},
            ]
        }
    )
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = tmp_path / "e.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only"}]}) + "\n")
    cfg = DataConfig(
        sources=[SourceConfig(path="d.jsonl"), SourceConfig(path="e.jsonl")],
        on_error="skip",
        max_skip_fraction=1.0,
        validation_split=0.2,
    )
    return load_records(cfg, str(tmp_path))


def test_summarize_counts_and_lengths(tmp_path, tiny_tokenizer):
    rs = _rs(tmp_path)
    s = summarize(rs, tokenizer=tiny_tokenizer)
    assert s["kind"] == "chat"
    assert sum(sp["records"] for sp in s["splits"].values()) == 31
    train = s["splits"]["train"]
    assert train["records"] == len(rs.splits["train"])
    assert train["shapes"] == {"chat": train["records"]}
    assert sum(train["chars"]["hist"]["counts"]) == train["records"]
    all_turns = [sp["turns"]["max"] for sp in s["splits"].values()]
    assert max(all_turns) == 4 and min(sp["turns"]["min"] for sp in s["splits"].values()) == 2
    assert train["chars"]["min"] <= train["chars"]["p50"] <= train["chars"]["p90"] <= train["chars"]["max"]
    assert train["tokens"]["n"] == train["records"] and train["tokens"]["max"] > 0
    assert s["dropped"]["total"] == 1 and s["fingerprints"] == rs.fingerprints
    json.dumps(s)  # JSON-able for artifact logging


def test_render_summary_html_is_self_contained_and_escaped(tmp_path):
    rs = _rs(tmp_path)
    html = render_summary_html(summarize(rs))
    assert html.startswith("<!doctype html>") and html.endswith("</html>")
    assert "<svg" in html and "<script" not in html
    assert not re.search(r"(src|href)=[\"']https?://", html)
    assert rs.fingerprints["train"] in html
    assert "no assistant turn" in html  # the dropped record's reason is shown


def test_summary_for_preference_and_text(tmp_path):
    pref = [{"prompt": f"p{i}", "chosen": "good" * i + "g", "rejected": "b"} for i in range(10)]
    rs = load_records(DataConfig(sources=[SourceConfig(records=pref)], validation_split=0), str(tmp_path))
    s = summarize(rs)
    assert s["kind"] == "preference" and s["splits"]["train"]["chosen_chars"]["max"] == 37
    assert "rejected characters" in render_summary_html(s)
    rs = load_records(
        DataConfig(sources=[SourceConfig(records=[{"text": "abc"}])], validation_split=0), str(tmp_path)
    )
    s = summarize(rs)
    assert s["splits"]["train"]["chars"]["max"] == 3 and s["splits"]["validation"]["records"] == 0
    render_summary_html(s)
