"""Readers of labelled text for state probes: JSONL ``text``/``label`` files, hh-rlhf
preference pairs (the last assistant reply of each transcript) and their first human turns."""

import dataclasses
import json
from pathlib import Path
from typing import Any

from difflens._io import jsonl_objects, text_lines
from difflens.errors import InputError


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """One training example: segments of text, each labelled 1 (bad), 0 (good) or ``None``
    (context: read by the model, not trained on)."""

    segments: tuple[tuple[str, int | None], ...]
    group: int
    """Examples with the same group land in the same split (a preference pair, a story)."""

    @property
    def text(self) -> str:
        return "".join(s for s, _ in self.segments)


def _label(where: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("bad", "good", "0", "1", "true",
                                                              "false"):
        return int(value.strip().lower() in ("bad", "1", "true"))
    raise InputError(f"{where}: label must be 0/1, true/false or \"bad\"/\"good\", got "
                     f"{value!r}")


def read_labelled(path: str | Path) -> list[LabelledText]:
    """JSONL (optionally ``.gz``) with ``text`` and ``label``; optional ``context``, ``group``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labelled data {path} does not exist")
    out = []
    group_ids: dict[str, int] = {}
    for i, (where, obj) in enumerate(jsonl_objects(path, text_lines(path))):
        if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
            raise InputError(f"{where}: expected an object with \"text\" and \"label\" "
                             f"(1 = bad), e.g. {{\"text\": \"...\", \"label\": 1}}")
        text, ctx = obj["text"], obj.get("context", "")
        if not isinstance(text, str) or not text.strip() or not isinstance(ctx, str):
            raise InputError(f"{where}: \"text\" must be non-empty text (and \"context\" text)")
        group = group_ids.setdefault(json.dumps(obj.get("group", f"line {i}")), len(group_ids))
        segs: tuple[tuple[str, int | None], ...] = ((ctx, None),) if ctx else ()
        out.append(LabelledText(segments=(*segs, (text, _label(where, obj["label"]))),
                                group=group))
    return _checked(out, str(path))


def _last_reply(transcript: str) -> tuple[str, str] | None:
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        return None
    head, reply = transcript[:cut + len("\n\nAssistant:")], transcript[cut + len(
        "\n\nAssistant:"):]
    return (head, reply) if reply.strip() else None


def read_preference_pairs(path: str | Path, *, limit: int | None = None) -> list[LabelledText]:
    """hh-rlhf layout (``chosen`` / ``rejected`` transcripts, JSONL or ``.jsonl.gz``): the last
    assistant reply of each is labelled (rejected = 1), the dialogue before it is context.
    Pairs whose replies are equal or whose dialogues differ before the reply are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"preference pairs {path} do not exist")
    out: list[LabelledText] = []
    for i, (where, obj) in enumerate(jsonl_objects(path, text_lines(path))):
        if not isinstance(obj, dict) or not isinstance(obj.get("chosen"), str) or \
                not isinstance(obj.get("rejected"), str):
            raise InputError(f"{where}: expected {{\"chosen\": \"...\", \"rejected\": \"...\"}} "
                             f"transcripts (\\n\\nHuman: ... \\n\\nAssistant: ...)")
        good, bad = _last_reply(obj["chosen"]), _last_reply(obj["rejected"])
        if good is None or bad is None or good[0] != bad[0] or good[1] == bad[1]:
            continue
        for (ctx, reply), label in ((good, 0), (bad, 1)):
            out.append(LabelledText(segments=((ctx, None), (reply, label)), group=i))
        if limit is not None and len(out) >= 2 * limit:
            break
    return _checked(out, str(path))


def first_human_turns(path: str | Path, *, which: str = "rejected",
                      limit: int | None = None) -> list[str]:
    """The first human turn of each hh-rlhf dialogue (prompts that lead towards harm)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"preference pairs {path} do not exist")
    out = []
    for where, obj in jsonl_objects(path, text_lines(path)):
        text = obj.get(which) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise InputError(f"{where}: expected a {which!r} transcript")
        start = text.find("Human:")
        if start < 0:
            continue
        turn = text[start + len("Human:"):].split("\n\nAssistant:")[0].strip()
        if turn:
            out.append(turn)
        if limit is not None and len(out) >= limit:
            break
    return out


def _checked(examples: list[LabelledText], source: str) -> list[LabelledText]:
    labels = {lab for ex in examples for _, lab in ex.segments if lab is not None}
    if labels != {0, 1}:
        raise InputError(f"{source}: a probe needs both good (0) and bad (1) examples; found "
                         f"labels {sorted(labels)} in {len(examples)} examples")
    return examples


@dataclasses.dataclass(frozen=True)
class Preference:
    """One preference pair: a prompt and the reply preferred to the other."""

    prompt: str
    chosen: str
    rejected: str


def read_preferences(path: str | Path, *, limit: int | None = None) -> list[Preference]:
    """Preference pairs for DPO: JSONL (or ``.jsonl.gz``) of ``{prompt, chosen, rejected}``
    (the replies without the prompt), or hh-rlhf transcripts (``chosen``/``rejected`` only:
    the dialogue before the last assistant reply is the prompt; pairs whose dialogues
    differ before it, or whose replies are equal, are skipped). A line without ``chosen`` or
    ``rejected`` is an error with its file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"preference file {path} does not exist")
    out: list[Preference] = []
    for where, obj in jsonl_objects(path, text_lines(path)):
        if not isinstance(obj, dict) or not isinstance(obj.get("chosen"), str) or \
                not isinstance(obj.get("rejected"), str):
            raise InputError(f"{where}: expected {{\"prompt\": ..., \"chosen\": ..., "
                             f"\"rejected\": ...}} or hh-rlhf {{\"chosen\", \"rejected\"}} "
                             f"transcripts; this line has no chosen and rejected text")
        if isinstance(obj.get("prompt"), str):
            pair = Preference(obj["prompt"], obj["chosen"], obj["rejected"])
        else:
            good, bad = _last_reply(obj["chosen"]), _last_reply(obj["rejected"])
            if good is None or bad is None or good[0] != bad[0] or good[1] == bad[1]:
                continue
            pair = Preference(good[0], good[1], bad[1])
        if pair.chosen != pair.rejected:
            out.append(pair)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: no usable preference pair (each needs a chosen and a "
                         f"rejected reply that differ)")
    return out
