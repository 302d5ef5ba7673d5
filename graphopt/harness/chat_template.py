"""A checkpoint's own chat template, found where transformers / llama.cpp keep it and rendered as
transformers' `apply_chat_template(..., tokenize=False)` renders it (what lm-eval's hf model calls for
--apply_chat_template and --system_instruction).

Where: beside the tokenizer (the `tokenizer` model arg, else the checkpoint folder) chat_template.jinja
(transformers 5 writes it there) or tokenizer_config.json's "chat_template" (a string, or a list of
{name, template}); in a .gguf file, the metadata `tokenizer.chat_template` (and
`tokenizer.chat_template.NAME`). Rendering: jinja2's ImmutableSandboxedEnvironment with trim_blocks /
lstrip_blocks, loop controls, `{% generation %}` blocks, the filter tojson and the globals
raise_exception / strftime_now as transformers defines them, the tokenizer's special tokens (bos_token,
eos_token, ...) as variables, `messages` and `add_generation_prompt`; continue_final_message cuts the
text after the last message as transformers does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from graphopt.errors import UserError

SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # transformers' SPECIAL_TOKENS_ATTRIBUTES
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for continue_final_message
_GGUF_SPECIAL_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                     "sep": "seperator_token_id", "pad": "padding_token_id", "cls": "cls_token_id",
                     "mask": "mask_token_id"}  # (llama.cpp spells "seperator")


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the file (and key) it came from
    templates: dict[str, str]  # name -> jinja text; one unnamed template is "default"
    special_tokens: dict[str, str] = field(default_factory=dict)  # "bos_token": "<s>", ...

    def select(self, name: str | None = None) -> str:
        """The template lm-eval's hf model picks (its chat_template()): a name given picks it among several,
        otherwise "default"."""
        if len(self.templates) == 1 and "default" in self.templates:
            return self.templates["default"]
        if name is not None:
            if name not in self.templates:
                raise UserError(f"{self.source}: no chat template named {name!r} (there are "
                                f"{', '.join(sorted(self.templates))})")
            return self.templates[name]
        if "default" not in self.templates:
            raise UserError(f"{self.source}: several chat templates ({', '.join(sorted(self.templates))}) and none "
                            "named 'default'; pass the name: --apply_chat_template NAME")
        return self.templates["default"]

    def render(self, messages: list[dict], add_generation_prompt: bool = True, name: str | None = None) -> str:
        """The conversation as text; add_generation_prompt False continues the last message instead
        (transformers' continue_final_message, as lm-eval's hf model asks for a task's gen_prefix)."""
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        continue_final = not add_generation_prompt
        if continue_final:
            if not messages or "content" not in messages[-1]:
                raise ValueError("continue_final_message needs a last message with content")
            final = messages[-1]["content"]
            messages[-1] = {**messages[-1], "content": final + _CONTINUE_TAG}
        text = _compile(self.select(name)).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  tools=None, documents=None, **self.special_tokens)
        if continue_final:
            if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
                raise ValueError("the chat template dropped part of the final message, so it cannot be continued")
            at = text.rindex(_CONTINUE_TAG.strip())
            text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text


def _compile(text: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):  # transformers' {% generation %} ... {% endgeneration %}: rendered as is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(text)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise UserError(f"chat template: not a valid jinja template (line {e.lineno}: {e.message})") from None


# ---- finding it

def _token_text(value) -> str | None:
    if isinstance(value, dict):  # an AddedToken as older tokenizer_config.json files write it
        value = value.get("content")
    return value if isinstance(value, str) else None


def _from_folder(folder: Path) -> ChatTemplate | None:
    config_path = folder / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{config_path}: not valid JSON ({e})") from None
    special = {f"{n}_token": t for n in SPECIAL_NAMES if (t := _token_text(config.get(f"{n}_token"))) is not None}
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return ChatTemplate(str(jinja_file), {"default": jinja_file.read_text()}, _with_pad(special))
    raw = config.get("chat_template")
    if raw is None:
        return None
    where = f"{config_path} (chat_template)"
    if isinstance(raw, str):
        return ChatTemplate(where, {"default": raw}, _with_pad(special))
    if isinstance(raw, list) and all(isinstance(t, dict) and {"name", "template"} <= set(t) for t in raw):
        return ChatTemplate(where, {t["name"]: t["template"] for t in raw}, _with_pad(special))
    raise UserError(f"{where}: expected a template string or a list of {{name, template}}, got {type(raw).__name__}")


def _from_gguf(path: Path) -> ChatTemplate | None:
    from graphopt.checkpoints.gguf_reader import gguf_value, open_gguf

    reader = open_gguf(path)
    templates = {}
    for key in reader.fields:
        if key == "tokenizer.chat_template":
            templates["default"] = gguf_value(reader, key)
        elif key.startswith("tokenizer.chat_template."):
            templates[key[len("tokenizer.chat_template."):]] = gguf_value(reader, key)
    if not templates:
        return None
    tokens = gguf_value(reader, "tokenizer.ggml.tokens", [])
    special = {}
    for name, key in _GGUF_SPECIAL_IDS.items():
        tid = gguf_value(reader, f"tokenizer.ggml.{key}", None)
        if tid is not None and 0 <= tid < len(tokens):
            special[f"{name}_token"] = tokens[tid]
    return ChatTemplate(f"{path} (tokenizer.chat_template)", templates, _with_pad(special))


def _with_pad(special: dict[str, str]) -> dict[str, str]:
    """lm-eval's hf model gives a tokenizer without a pad token its unk token, else its eos token."""
    pad = special.get("pad_token") or special.get("unk_token") or special.get("eos_token")
    return {**special, "pad_token": pad} if pad is not None else special


def find_chat_template(pretrained: str, tokenizer: str | None = None) -> ChatTemplate | None:
    """The chat template beside the tokenizer: `tokenizer` when given (a folder, a tokenizer file beside its
    tokenizer_config.json, or a .gguf), else the checkpoint (a folder or a .gguf file), as transformers
    loads it with the tokenizer; None if there is none."""
    p = Path(tokenizer or pretrained)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return _from_gguf(p)
    if p.is_dir() or p.is_file():
        return _from_folder(p if p.is_dir() else p.parent)
    return None  # a preset: no files, no template
