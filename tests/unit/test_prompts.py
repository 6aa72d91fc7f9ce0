"""Prompt files: every format, and one precise line for each kind of bad input."""

import json

import pytest

from difflens import InputError, read_prompts


def test_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\nsecond\\nwith newline\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second\nwith newline"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b", "x": 1}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n')
    assert read_prompts(tmp_path / "q.jsonl", field="text") == ["a"]
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]))
    assert read_prompts(tmp_path / "p.json") == ["a", "b"]
    (tmp_path / "p.csv").write_text('id,prompt\n1,"hello, world"\n2,bye\n')
    assert read_prompts(tmp_path / "p.csv") == ["hello, world", "bye"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.txt", "ok\n\nok\n", r"e\.txt:2: empty prompt"),
        ("m.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', r"m\.jsonl:2: malformed JSON"),
        ("f.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', r"f\.jsonl:2: expected an object with "
                                                         r"field 'prompt', got \['text'\]"),
        ("t.jsonl", '{"prompt": 3}\n', r"t\.jsonl:1: field 'prompt' should be a string, got int"),
        ("x.json", '{"prompt": "a"}', r"expected a JSON array of prompts, got dict"),
        ("c.csv", "text\nhello\n", r"c\.csv:1: no column 'prompt'"),
        ("c2.csv", "prompt\nhello\n\"\"\n", r"c2\.csv:3: empty prompt"),
        ("p.parquet", "x", r"unknown prompt file type '\.parquet'"),
        ("n.txt", "", r"no prompts found"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        read_prompts(tmp_path / name)


def test_non_utf8_reports_byte_offset(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"fine\ncaf\xe9 au lait\n")
    with pytest.raises(InputError, match=r"b\.txt:2: not valid UTF-8 at byte offset 8 "
                                         r"\(byte 0xe9\)"):
        read_prompts(tmp_path / "b.txt")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="prompt file .*absent.txt does not exist"):
        read_prompts(tmp_path / "absent.txt")
