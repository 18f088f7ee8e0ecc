"""Pure-Python statement of llmedge's prompt-compression rules.

Produces text identical to ``llmedge.PromptOptimizer.compress`` for every input
(tests/test_prompt_optimizer.py checks this with hypothesis); benches/bench_prompt.py
times the two side by side. Written the way a Python programmer would: the
`re` module for the scanners, `json.loads` for validation, tiktoken for counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# ---- character classes -----------------------------------------------------

W = r"[A-Za-z0-9_'\x80-\U0010ffff]"  # word characters: ASCII alnum, _, ', non-ASCII
_BLANK = re.compile(r"[ \t\r]*")
_ASCII_SPACE = " \t\n\r\x0b\x0c"


def is_blank(line: str) -> bool:
    return _BLANK.fullmatch(line) is not None


# ---- fences ----------------------------------------------------------------

_FENCE_OPEN = re.compile(r"( {0,3})(`{3,}|~{3,})(.*)")


def fences(lines: list[str]) -> list[tuple[int, int, bool, bool]]:
    """(start, end, closed, json) for each fenced block."""
    out = []
    i, n = 0, len(lines)
    while i < n:
        m = _FENCE_OPEN.fullmatch(lines[i])
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            run = m.group(2)
            close = re.compile(r" {0,3}" + re.escape(run[0]) + "{" + str(len(run)) + r",}[ \t\r]*")
            info = m.group(3).strip(" \t\r")
            is_json = info.isascii() and info.lower() == "json"
            j = i + 1
            while j < n and not close.fullmatch(lines[j]):
                j += 1
            closed = j < n
            end = j + 1 if closed else n
            out.append((i, end, closed, is_json))
            i = end
        else:
            i += 1
    return out


def fence_mask(lines: list[str]) -> list[bool]:
    mask = [False] * len(lines)
    for s, e, _, _ in fences(lines):
        for k in range(s, e):
            mask[k] = True
    return mask


# ---- protected spans -------------------------------------------------------

SPAN = re.compile(
    r"(?<!`)(`+)(?!`)[^\n]*?(?<!`)\1(?!`)"  # inline code
    r"|(?<!" + W + r")(?:https?://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"  # URL
    r"|\$?(?:\{\{[^{}\n\"]{1,100}\}\}|\{[^{}\n\"]{1,100}\})"  # placeholder
    r"|\"[^\"\n]{0,200}\""  # "quote"
    r"|“[^”\n]{0,200}”"  # “quote”
    r"|(?<!" + W + r")'(?=[^\s'])(?:[^'\n]|'(?=" + W + r")){1,200}?'(?!" + W + r")"  # 'quote'
    r"|(?<!" + W + r")[0-9]+(?:[.,:/-][0-9]+)*[A-Za-z0-9_]*",  # number
    re.ASCII,
)


def spans(line: str) -> list[tuple[int, int]]:
    return [m.span() for m in SPAN.finditer(line)]


def map_free(line: str, f: Callable[[str], str]) -> str:
    parts = []
    last = 0
    for m in SPAN.finditer(line):
        s, e = m.span()
        if s > last:
            parts.append(f(line[last:s]))
        parts.append(line[s:e])
        last = e
    if last < len(line):
        parts.append(f(line[last:]))
    return "".join(parts)


def paragraphs(lines: list[str], fenced: list[bool]) -> list[tuple[int, int]]:
    out = []
    i, n = 0, len(lines)
    while i < n:
        if fenced[i] or is_blank(lines[i]):
            i += 1
            continue
        s = i
        while i < n and not fenced[i] and not is_blank(lines[i]):
            i += 1
        out.append((s, i))
    return out


def indentation(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


# ---- json ------------------------------------------------------------------

MAX_DEPTH = 256
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\n\r]+')


def _reject_constant(name: str):
    raise ValueError(name)


def _depth(o) -> int:
    if isinstance(o, dict):
        return 1 + max((_depth(v) for v in o.values()), default=0)
    if isinstance(o, list):
        return 1 + max((_depth(v) for v in o), default=0)
    return 0


def minified_container(body: str) -> str | None:
    t = body.strip(" \t\n\r")
    if not t.startswith(("{", "[")):
        return None
    try:
        obj = json.loads(t, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if _depth(obj) > MAX_DEPTH:
        return None
    return _JSON_TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", t)


def minify_json(text: str) -> str:
    lines = text.split("\n")
    blocks = fences(lines)
    fenced = [False] * len(lines)
    for s, e, _, _ in blocks:
        for k in range(s, e):
            fenced[k] = True
    repl = []
    for start, end, closed, is_json in blocks:
        if not is_json or not closed or end - start < 3:
            continue
        s, e = start + 1, end - 1
        body = "\n".join(lines[s:e])
        mini = minified_container(body)
        if mini is not None and (e - s != 1 or mini != body):
            repl.append((s, e, mini))
    for ps, pe in paragraphs(lines, fenced):
        first = next((i for i in range(ps, pe) if lines[i].lstrip(" \t")[:1] in ("{", "[")), None)
        if first is None:
            continue
        ends = (
            i for i in range(pe - 1, first - 1, -1) if lines[i].rstrip(" \t\r")[-1:] in ("}", "]")
        )
        last = next(ends, None)
        if last is None:
            continue
        body = "\n".join(lines[first : last + 1])
        mini = minified_container(body)
        if mini is None:
            continue
        if not all(ln[a:b] in mini for ln in lines[first : last + 1] for a, b in spans(ln)):
            continue
        line = indentation(lines[first]) + mini
        if last != first or line != lines[first]:
            repl.append((first, last + 1, line))
    if not repl:
        return text
    repl.sort(key=lambda r: r[0])
    out = []
    i = 0
    for s, e, ln in repl:
        out.extend(lines[i:s])
        out.append(ln)
        i = e
    out.extend(lines[i:])
    return "\n".join(out)


# ---- whitespace ------------------------------------------------------------

_RUN = re.compile(r"[ \t]+")


def _collapse(seg: str) -> str:
    return _RUN.sub(" ", seg)


def whitespace(text: str) -> str:
    lines = text.split("\n")
    fenced = fence_mask(lines)
    out = []
    prev_blank = False
    for i, line in enumerate(lines):
        if fenced[i]:
            out.append(line)
            prev_blank = False
            continue
        blank = is_blank(line)
        if blank and prev_blank:
            continue
        prev_blank = blank
        ind = indentation(line)
        rest = line[len(ind) :]
        if not rest:
            out.append("")
            continue
        out.append(ind + map_free(rest, _collapse).rstrip(" \t"))
    return "\n".join(out)


# ---- duplicates ------------------------------------------------------------

_LETTER = re.compile(r"[A-Za-z]")


def substantial(s: str) -> bool:
    t = s.strip(_ASCII_SPACE)
    return len(t) >= 16 and _LETTER.search(t) is not None


def duplicates(text: str) -> str:
    lines = text.split("\n")
    fenced = fence_mask(lines)
    delete = [False] * len(lines)
    seen_paras: set[str] = set()
    seen_lines: set[str] = set()
    for s, e in paragraphs(lines, fenced):
        joined = "\n".join(lines[s:e])
        gone = False
        if substantial(joined):
            if joined in seen_paras:
                for k in range(s, e):
                    delete[k] = True
                gone = True
            else:
                seen_paras.add(joined)
        if not gone:
            for k in range(s, e):
                ln = lines[k]
                if substantial(ln) and not ln.lstrip(_ASCII_SPACE).startswith("|"):
                    if ln in seen_lines:
                        delete[k] = True
                    else:
                        seen_lines.add(ln)
            gone = all(delete[s:e])
        if gone:
            j = s
            while j > 0 and not fenced[j - 1] and is_blank(lines[j - 1]):
                j -= 1
                delete[j] = True
    if not any(delete):
        return text
    return "\n".join(ln for ln, d in zip(lines, delete, strict=True) if not d)


# ---- markdown --------------------------------------------------------------

_BREAK = re.compile(r"[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t\r]*")
_EMPHASIS = re.compile(
    r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!" + W + r")__(?=\S)(.+?)(?<=\S)__(?!" + W + r")",
    re.ASCII,
)


def _emphasis(m: re.Match) -> str:
    if m.group(1) is not None:
        return m.group(1)
    inner = m.group(2)
    return inner if " " in inner else m.group(0)


def _strip_emphasis(seg: str) -> str:
    return _EMPHASIS.sub(_emphasis, seg)


def markdown(text: str) -> str:
    lines = text.split("\n")
    fenced = fence_mask(lines)
    out = []
    after_break = False
    last_blank = None
    for i, line in enumerate(lines):
        if not fenced[i]:
            if _BREAK.fullmatch(line):
                after_break = True
                continue
            if after_break and is_blank(line) and last_blank is not False:
                continue
        after_break = False
        if fenced[i]:
            out.append(line)
            last_blank = False
            continue
        last_blank = is_blank(line)
        if "**" in line or "__" in line:
            out.append(map_free(line, _strip_emphasis))
        else:
            out.append(line)
    return "\n".join(out)


# ---- fillers and stop words ------------------------------------------------

FILLERS: list[tuple[str, str]] = [
    ("it is important to note that", ""),
    ("it's important to note that", ""),
    ("it is worth noting that", ""),
    ("it is worth mentioning that", ""),
    ("it should be noted that", ""),
    ("please note that", ""),
    ("please note", ""),
    ("needless to say", ""),
    ("as a matter of fact", ""),
    ("at the end of the day", ""),
    ("for what it's worth", ""),
    ("basically", ""),
    ("actually", ""),
    ("essentially", ""),
    ("literally", ""),
    ("kindly", ""),
    ("please", ""),
    ("in order to", "to"),
    ("in order for", "for"),
    ("due to the fact that", "because"),
    ("owing to the fact that", "because"),
    ("despite the fact that", "although"),
    ("in spite of the fact that", "although"),
    ("in the event that", "if"),
    ("at this point in time", "now"),
    ("at the present time", "now"),
    ("for the purpose of", "for"),
    ("with the exception of", "except"),
    ("in the near future", "soon"),
    ("a large number of", "many"),
    ("the majority of", "most"),
    ("on a daily basis", "daily"),
    ("on a regular basis", "regularly"),
    ("is able to", "can"),
    ("are able to", "can"),
    ("has the ability to", "can"),
    ("have the ability to", "can"),
    ("prior to", "before"),
    ("in close proximity to", "near"),
    ("make sure that", "ensure"),
    ("each and every", "every"),
    ("first and foremost", "first"),
    ("until such time as", "until"),
    ("in a timely manner", "promptly"),
    ("with regard to", "about"),
    ("with regards to", "about"),
    ("in regard to", "about"),
]

STOP_WORDS: list[str] = (
    "a an the is are was were be been being am of to in on at by for with from into onto "
    "upon about as that which this these those it its itself there their then so such very "
    "just also too quite rather really some any here has have had having and your my our "
    "his her them me us what when where how while whether both each other"
).split()


class PhraseSet:
    def __init__(self, pairs: list[tuple[str, str]], eat_comma: bool):
        self.repl = {p.lower(): r for p, r in pairs}
        alts = "|".join(re.escape(p) for p in sorted(self.repl, key=len, reverse=True))
        comma = "(,?)" if eat_comma else "()"
        self.pattern = re.compile(
            r"([ \t]*)(?<!" + W + r")(" + alts + r")(?!" + W + r")" + comma + r"([ \t]*)",
            re.ASCII | re.IGNORECASE,
        )

    def segment(self, seg: str) -> str:
        out: list[str] = []
        pending = False

        def emit(s: str) -> None:
            nonlocal pending
            if not s:
                return
            if pending:
                pending = False
                if "a" <= s[0] <= "z":
                    out.append(s[0].upper() + s[1:])
                    return
            out.append(s)

        copied = 0
        for m in self.pattern.finditer(seg):
            lead, phrase, comma, trail = m.group(1), m.group(2), m.group(3), m.group(4)
            emit(seg[copied : m.start()])
            repl = self.repl[phrase.lower()]
            upper = "A" <= phrase[0] <= "Z"
            if not repl:
                if trail:
                    emit(lead)
                if upper:
                    pending = True
            else:
                emit(lead)
                if upper:
                    pending = True
                emit(repl)
                emit(comma + trail)
            copied = m.end()
        emit(seg[copied:])
        return "".join(out)

    def apply(self, text: str) -> str:
        lines = text.split("\n")
        fenced = fence_mask(lines)
        return "\n".join(
            ln if fenced[i] else map_free(ln, self.segment) for i, ln in enumerate(lines)
        )


FILLER_SET = PhraseSet(FILLERS, eat_comma=True)
STOP_SET = PhraseSet([(w, "") for w in STOP_WORDS], eat_comma=False)

# ---- pipeline --------------------------------------------------------------

STEPS: list[tuple[str, Callable[[str], str]]] = [
    ("json", minify_json),
    ("whitespace", whitespace),
    ("duplicates", duplicates),
    ("markdown", markdown),
    ("fillers", FILLER_SET.apply),
    ("stopwords", STOP_SET.apply),
]
LEVELS = {"lossless": 3, "balanced": 5, "aggressive": 6}


def compress(
    text: str,
    count: Callable[[str], int],
    level: str = "lossless",
    target_reduction: float | None = None,
) -> tuple[str, int, int, list[str]]:
    """(text, tokens_before, tokens_after, steps) exactly as llmedge computes them."""
    before = count(text)
    cur, tokens, steps = text, before, []
    for name, step in STEPS[: LEVELS[level]]:
        if target_reduction is not None and before > 0:
            if (before - tokens) / before >= target_reduction:
                break
        nxt = step(cur)
        if nxt == cur:
            continue
        n = count(nxt)
        if n <= tokens:
            cur, tokens = nxt, n
            steps.append(name)
    return cur, before, tokens, steps
