"""Chat templates: pick the one the model will be trained *and served* with.

The template string that comes out of `resolve_chat_template` is set on the
tokenizer and saved with it, so inference renders prompts exactly as training
did. Built-ins exist for base models whose tokenizer ships no template.

Rendering goes through transformers' own compiled jinja environment (same
sandbox, `raise_exception`, `tojson`, `{% generation %}` support) with the same
variables `apply_chat_template` passes, so our renders are byte-identical to
`tokenizer.apply_chat_template(..., tokenize=False)` but without its per-call
overhead (that matters at 50k records x several prefix renders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneline.config.template import TemplateConfig
from tuneline.errors import ConfigError, Problem
from tuneline.tokenize.tool_templates import CHATML_TOOLS

# ChatML (Qwen, many fine-tunes). <|im_end|> closes every turn; the "\n" after it is
# formatting, not something the model must generate.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3 instruct, as Meta ships it (content trimmed, BOS written by the template,
# so the tokenizer must not add a second one).
LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 and bos_token %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Zephyr / TinyLlama-chat: role tags are plain text, every turn ends with EOS.
ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Stanford Alpaca. A user turn renders as "### Instruction:"; if the user message
# carries a separate non-empty `input` key (the data layer keeps an alpaca record's
# input/context there) it renders as "### Input:" -- that keeps instruction and context
# distinguishable, which is the format Alpaca-trained models expect. Without it, the
# whole user content is the instruction. The system turn replaces the standard preamble;
# the response ends with EOS so the model learns to stop. Multi-turn repeats
# Instruction/Response blocks.
ALPACA = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% if messages[0]['input'] is defined and messages[0]['input'] %}"
    "{{ 'Below is an instruction that describes a task, paired with an input that provides further context. '"
    " 'Write a response that appropriately completes the request.\\n\\n' }}"
    "{% else %}"
    "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}"
    "{% endif %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% if message['input'] is defined and message['input'] %}{{ '### Input:\\n' + message['input'] + '\\n\\n' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama-3": LLAMA3,
    "zephyr": ZEPHYR,
    "alpaca": ALPACA,
    "chatml-tools": CHATML_TOOLS,
}

# Special tokens a built-in template writes as single control tokens. If the tokenizer
# lacks them they are added (and the model's embeddings must be resized).
BUILTIN_CONTROL_TOKENS: dict[str, list[str]] = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama-3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "zephyr": [],
    "alpaca": [],
    "chatml-tools": ["<|im_start|>", "<|im_end|>"],
}


def compile_template(template: str) -> Any:
    """Compile with transformers' environment so renders match apply_chat_template exactly."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template)
    except ImportError:  # pragma: no cover - older/newer transformers layout
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        return env.from_string(template)


def template_variables(tokenizer: Any) -> dict[str, Any]:
    """The variables apply_chat_template gives a template (bos_token, eos_token, ...)."""
    return dict(getattr(tokenizer, "special_tokens_map", {}) or {})


def render(
    compiled: Any,
    messages: list[dict[str, Any]],
    variables: dict[str, Any],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    if tools is not None:  # only when given: templates differ on an undefined vs a None `tools`
        variables = {**variables, "tools": tools}
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def _validate_jinja(text: str, where: str) -> None:
    """Compile and smoke-render so a broken template fails at config time, not mid-dataset."""
    import jinja2

    try:
        compiled = compile_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError([Problem(where, f"invalid jinja (line {e.lineno}): {e.message}")]) from e
    try:
        out = compiled.render(
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            add_generation_prompt=False,
            bos_token="<s>",
            eos_token="</s>",
        )
    except jinja2.TemplateError as e:
        raise ConfigError(
            [Problem(where, f"template fails on a plain user/assistant conversation: {e}")]
        ) from e
    if "hello" not in out:
        raise ConfigError([Problem(where, "template does not render message['content']")])


def resolve_chat_template(tokenizer: Any, cfg: TemplateConfig, base_dir: str = ".") -> str:
    """Return the jinja chat template to train with (the caller stores it on the tokenizer).

    auto: the tokenizer's own template (what the model was tuned with), else ChatML.
    tokenizer: insist on the tokenizer's own. A built-in name forces that format; a
    jinja_path loads the user's file (relative to base_dir).
    """
    if cfg.jinja_path:
        p = Path(cfg.jinja_path).expanduser()
        if not p.is_absolute():
            p = Path(base_dir) / p
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                [Problem("template.jinja_path", f"cannot read chat template '{p}': {e.strerror or e}")]
            ) from e
        _validate_jinja(text, "template.jinja_path")
        return text
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # multiple named templates: the default one
        own = own.get("default")
    if cfg.name == "tokenizer":
        if not own:
            raise ConfigError(
                [
                    Problem(
                        "template.name",
                        "'tokenizer' requires a tokenizer with a chat_template, but this one has none "
                        f"(base model?); use one of {sorted(BUILTIN_TEMPLATES)} or template.jinja_path",
                    )
                ]
            )
        return own
    if cfg.name == "auto":
        return own or BUILTIN_TEMPLATES["chatml"]
    return BUILTIN_TEMPLATES[cfg.name]


def builtin_name(template: str) -> str | None:
    for name, text in BUILTIN_TEMPLATES.items():
        if text == template:
            return name
    return None
