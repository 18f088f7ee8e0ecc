"""Pure-Python chat token accounting: the OpenAI cookbook's
``num_tokens_from_messages`` (tiktoken for each string), extended with the
rules llmedge documents (tool calls, function results, content parts, images,
tool definitions), so that both count the same.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def offline_tiktoken():
    """tiktoken made to work offline from the vocabularies inside the
    tiktoken-rs crate (byte-identical); ``None`` when either is missing."""
    try:
        import tiktoken
    except ImportError:
        return None
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pattern = str(Path.home() / ".cargo/registry/src/*/tiktoken-rs-*/assets")
        assets = sorted(glob.glob(pattern))
        if not assets:
            return None
        cache = Path(tempfile.gettempdir()) / "llmedge-tiktoken-cache"
        cache.mkdir(exist_ok=True)
        for name in ("cl100k_base", "o200k_base", "p50k_base", "r50k_base"):
            src = Path(assets[-1]) / f"{name}.tiktoken"
            dst = cache / hashlib.sha1(_URL.format(name).encode()).hexdigest()
            if src.is_file() and not dst.is_file():
                shutil.copyfile(src, dst)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return tiktoken


def _family(model: str, base: str) -> bool:
    return model == base or model.startswith(base + "-")


class ChatRules:
    def __init__(self, model: str, encoding_name: str):
        tiktoken = offline_tiktoken()
        if tiktoken is None:
            raise RuntimeError("tiktoken or its vocabularies are not available")
        self.encoding = tiktoken.get_encoding(encoding_name)
        legacy = _family(model, "gpt-3.5-turbo-0301")
        self.tokens_per_message = 4 if legacy else 3
        self.tokens_per_name = -1 if legacy else 1
        if _family(model, "gpt-4o-mini"):
            self.image_base, self.image_tile = 2833, 5667
        elif _family(model, "o1") or _family(model, "o1-pro") or _family(model, "o3"):
            self.image_base, self.image_tile = 75, 150
        elif _family(model, "gpt-5") or _family(model, "gpt-5-chat-latest"):
            self.image_base, self.image_tile = 70, 140
        else:
            self.image_base, self.image_tile = 85, 170
        self.func_init = 10 if encoding_name == "cl100k_base" else 7

    def n(self, text: str) -> int:
        return len(self.encoding.encode(text)) if text else 0

    def image(self, image_url, part) -> int:
        detail, width, height = "auto", None, None
        if isinstance(image_url, dict):
            detail = image_url.get("detail") or "auto"
            width, height = image_url.get("width"), image_url.get("height")
        if width is None:
            width, height = part.get("width"), part.get("height")
        if detail == "low":
            return self.image_base
        if width is None or height is None:
            return self.image_base + self.image_tile * 8
        w, h = float(width), float(height)
        if max(w, h) > 2048:
            s = 2048 / max(w, h)
            w, h = max(math.floor(w * s), 1), max(math.floor(h * s), 1)
        if min(w, h) > 768:
            s = 768 / min(w, h)
            w, h = max(math.floor(w * s), 1), max(math.floor(h * s), 1)
        return self.image_base + self.image_tile * math.ceil(w / 512) * math.ceil(h / 512)

    def message(self, m) -> int:
        n = self.tokens_per_message + self.n(m["role"])
        content = m.get("content")
        if isinstance(content, str):
            n += self.n(content)
        elif isinstance(content, list):
            for part in content:
                kind = part["type"]
                if kind in ("text", "refusal"):
                    n += self.n(part[kind])
                elif kind == "image_url":
                    n += self.image(part["image_url"], part)
        if m.get("name") is not None:
            n += self.n(m["name"]) + self.tokens_per_name
        calls = [c["function"] for c in m.get("tool_calls") or []]
        if m.get("function_call") is not None:
            calls.append(m["function_call"])
        for c in calls:
            n += self.n(c["name"]) + self.n(c.get("arguments") or "") + 3
        if m["role"] == "function":
            n -= 2
        return n

    def _props(self, params) -> int:
        props = (params or {}).get("properties") or {}
        if not props:
            return 0
        n = 3
        for key, p in props.items():
            n += 3
            if p.get("enum") is not None:
                n += -3
                for item in p["enum"]:
                    text = item if isinstance(item, str) else _json_scalar(item)
                    n += 3 + self.n(text)
            t = p.get("type") or ""
            if isinstance(t, list):
                t = ", ".join(t)
            desc = p.get("description") or ""
            desc = desc[:-1] if desc.endswith(".") else desc
            n += self.n(f"{key}:{t}:{desc}")
            n += self._props(p)
        return n

    def tools(self, tools) -> int:
        if not tools:
            return 0
        n = 0
        for t in tools:
            f = t.get("function", t)
            desc = f.get("description") or ""
            desc = desc[:-1] if desc.endswith(".") else desc
            n += self.func_init + self.n(f"{f['name']}:{desc}") + self._props(f.get("parameters"))
        return n + 12


def _json_scalar(v) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def num_tokens_from_messages(messages, rules: ChatRules, tools=None) -> int:
    """The cookbook's function with the extended rules."""
    return sum(rules.message(m) for m in messages) + 3 + rules.tools(tools)
