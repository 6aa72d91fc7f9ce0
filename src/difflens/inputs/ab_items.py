"""Contrastive A/B datasets: loading, rendering into text, and tokenizing with answer positions.

Four formats are read, and told apart by the fields of their items (the container, a JSON
array or one object a line, does not matter):

- ``anthropic``: model-written-evals A/B questions, ``question`` (choices inside it),
  ``answer_matching_behavior`` / ``answer_not_matching_behavior`` like ``" (A)"``;
- ``caa``: the contrastive-activation-addition arrays, the same fields with ``"(A)"`` (no
  leading space);
- ``persona``: statements with ``" Yes"`` / ``" No"`` answers (and a ``statement`` field);
- ``plain``: difflens's own, one object a line ``{"prompt", "matching", "not_matching"}``,
  where the texts are joined exactly as written (you control the spacing).

The first three are rendered as ``"{question}\\n\\nAnswer: {answer}"`` for a base model, or
inside the tokenizer's chat template (user turn = question, assistant turn = answer) for an
instruct model. Each item is tokenized twice, once per answer; the position read is the
token that holds the answer's first letter or digit (``"answer"``: the ``A`` of ``(A)``,
the ``Y`` of ``Yes``) or the last token (``"last"``).
"""

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from difflens.errors import InputError

FORMATS = ("auto", "anthropic", "caa", "persona", "plain")
POSITIONS = ("answer", "last")
_FIELDS = {
    "anthropic": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "caa": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "persona": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "plain": ("prompt", "matching", "not_matching"),
}


@dataclasses.dataclass(frozen=True)
class ABItem:
    """One contrastive item: a prompt and the answer that matches the behaviour, and not."""

    prompt: str
    matching: str
    not_matching: str
    source: str
    """``file:line`` (or ``file item N`` for a JSON array) it was read from."""


@dataclasses.dataclass(frozen=True)
class ABDataset:
    """Items of one file, the format they were read as, and what was skipped."""

    name: str
    path: str
    format: str
    items: tuple[ABItem, ...]
    skipped: tuple[str, ...] = ()
    """One reason per skipped item (only with ``skip_bad``)."""

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, n: int | None) -> "ABDataset":
        """The first ``n`` items (all of them when ``n`` is None)."""
        if n is None or n >= len(self.items):
            return self
        return dataclasses.replace(self, items=self.items[:n])


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed object or an exception) for every item of a JSON array or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8"
                         ) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file"
                             ) from None
        for i, obj in enumerate(data):
            yield f"{path} item {i}", obj
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{lineno}", ValueError(f"not valid JSON ({exc.msg})")


def _detect(obj: dict[str, Any]) -> str:
    if "prompt" in obj and "matching" in obj:
        return "plain"
    if "statement" in obj:
        return "persona"
    if "question" in obj and "answer_matching_behavior" in obj:
        answer = obj["answer_matching_behavior"]
        first = answer[0] if isinstance(answer, list) and answer else answer
        return "caa" if isinstance(first, str) and not first.startswith(" ") else "anthropic"
    raise ValueError(
        f"unknown item fields {sorted(obj)}; expected question/answer_matching_behavior/"
        f"answer_not_matching_behavior (Anthropic, CAA, persona) or prompt/matching/"
        f"not_matching (plain)")


def _answer(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if isinstance(value, list):  # some model-written evals list several; the first is used
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} should be a non-empty string, got {value!r}")
    return value


def _item(obj: Any, fmt: str, where: str) -> ABItem:
    if isinstance(obj, Exception):
        raise obj
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    fields = _FIELDS[fmt]
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (a {fmt} item has {', '.join(fields)})")
    prompt = obj[fields[0]]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"field {fields[0]!r} should be a non-empty string")
    match, other = _answer(obj, fields[1]), _answer(obj, fields[2])
    if match.strip() == other.strip():
        raise ValueError(f"both answers are {match.strip()!r}; they must differ")
    return ABItem(prompt=prompt, matching=match, not_matching=other, source=where)


def load_ab_dataset(path: str | Path, *, format: str = "auto", skip_bad: bool = False,
                    max_items: int | None = None) -> ABDataset:
    """Read a contrastive A/B dataset.

    Args:
        path: a ``.json`` array or a ``.jsonl`` file in one of ``FORMATS``.
        format: ``auto`` (from the first item's fields) or a format name.
        skip_bad: skip malformed items and count them instead of raising.
        max_items: keep only the first ``max_items`` valid items.

    Raises:
        InputError: one line naming the file and the item (line) and what was expected.
    """
    path = Path(path)
    if format not in FORMATS:
        raise InputError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist")
    fmt = None if format == "auto" else format
    items: list[ABItem] = []
    skipped: list[str] = []
    for where, obj in _records(path):
        try:
            if fmt is None:
                if isinstance(obj, Exception):
                    raise obj
                fmt = _detect(obj) if isinstance(obj, dict) else "plain"
            items.append(_item(obj, fmt, where))
        except ValueError as exc:
            if not skip_bad:
                raise InputError(f"{where}: {exc}; fix the item or pass --skip-bad to skip "
                                 f"malformed items") from None
            skipped.append(f"{where}: {exc}")
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise InputError(f"{path}: no valid items ({len(skipped)} skipped); check the format")
    return ABDataset(name=path.stem, path=str(path), format=fmt or "plain", items=tuple(items),
                     skipped=tuple(skipped))


# -- rendering and tokenizing -------------------------------------------------------------


def uses_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Whether to wrap items in the chat template: ``chat`` if given, else if there is one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has:
        raise InputError("--chat was asked for but this tokenizer has no chat template; "
                         "drop --chat")
    return has if chat is None else chat


def render(item: ABItem, fmt: str, tokenizer: Any, chat: bool) -> tuple[str, str, str]:
    """(prefix, matching answer, non-matching answer) as the text the model reads."""
    if chat:
        prefix = tokenizer.apply_chat_template(
            [{"role": "user", "content": item.prompt}], tokenize=False,
            add_generation_prompt=True)
        return prefix, item.matching.strip(), item.not_matching.strip()
    if fmt == "plain":
        return item.prompt, item.matching, item.not_matching
    return (item.prompt.rstrip() + "\n\nAnswer:", " " + item.matching.strip(),
            " " + item.not_matching.strip())


@dataclasses.dataclass(frozen=True)
class TokenizedItem:
    """Both variants of one item as token ids, and where they part."""

    ids: tuple[tuple[int, ...], tuple[int, ...]]
    """Token ids of the matching (0) and non-matching (1) variant."""
    read: tuple[int, int]
    """Position read in each variant."""
    shared: int
    """Length of the prefix both variants share and that ends before both read positions
    and before each variant's last token (so that every answer token is scored)."""


def _answer_char(prefix: str, answer: str) -> int:
    for i, ch in enumerate(answer):
        if ch.isalnum():
            return len(prefix) + i
    return len(prefix) + len(answer) - 1


def _token_at(offsets: Sequence[tuple[int, int]], char: int, where: str) -> int:
    for t, (start, end) in enumerate(offsets):
        if start <= char < end and end > start:
            return t
    raise InputError(f"{where}: no token covers the answer's letter (char {char}); use "
                     f"--position last")


def tokenize_items(tokenizer: Any, items: Sequence[ABItem], fmt: str, *, chat: bool,
                   position: str = "answer", max_length: int | None = None
                   ) -> tuple[list[TokenizedItem], int]:
    """Tokenize both variants of every item; returns the items and how many were truncated.

    Prompts too long for ``max_length`` lose tokens from the left (the answer is kept).
    """
    if position not in POSITIONS:
        raise InputError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if position == "answer" and not getattr(tokenizer, "is_fast", False):
        raise InputError("reading the answer letter needs a fast tokenizer (offset mapping); "
                         "use --position last")
    out: list[TokenizedItem] = []
    n_truncated = 0
    for item in items:
        prefix, *answers = render(item, fmt, tokenizer, chat)
        ids_v, read_v = [], []
        for answer in answers:
            text = prefix + answer
            enc = tokenizer(text, add_special_tokens=not chat,
                            return_offsets_mapping=position == "answer")
            ids = list(enc["input_ids"])
            read = (len(ids) - 1 if position == "last"
                    else _token_at(enc["offset_mapping"], _answer_char(prefix, answer),
                                   item.source))
            ids_v.append(ids)
            read_v.append(read)
        cut = 0
        if max_length is not None and max(map(len, ids_v)) > max_length:
            cut = max(map(len, ids_v)) - max_length
            if min(read_v) - cut < 1:
                raise InputError(f"{item.source}: the answer lies beyond the model's context of "
                                 f"{max_length} tokens; shorten the prompt")
            n_truncated += 1
        a, b = (ids[cut:] for ids in ids_v)
        ra, rb = (r - cut for r in read_v)
        lcp = 0
        while lcp < min(len(a), len(b)) and a[lcp] == b[lcp]:
            lcp += 1
        shared = min(lcp, ra, rb, len(a) - 1, len(b) - 1)
        if shared < 1:
            raise InputError(f"{item.source}: the two variants share no prefix token; give "
                             f"the item a non-empty prompt")
        out.append(TokenizedItem(ids=(tuple(a), tuple(b)), read=(ra, rb), shared=shared))
    return out, n_truncated
