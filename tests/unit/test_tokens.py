"""The one token formatter (difflens.inputs.tokens.format_token) on planted token strings,
checked against the tokenizers library's own decoders where one applies."""

import html

import pytest
from tokenizers import decoders, pre_tokenizers

from difflens.inputs.tokens import format_token

# (token string, the text it stands for)
PLANTED = [
    ("Ġmade", " made"),  # GPT-2 byte-level: leading space
    ("\u2581made", " made"),  # SentencePiece: leading space
    ("Ċ", "\n"), ("ĊĊ", "\n\n"), ("ĉ", "\t"), ("Ġ", " "),
    ("ĠcafÃ©", " café"),  # two byte-level characters are the bytes of one é
    ("âĢĻ", "\u2019"),
    ("<0x0A>", "\n"), ("<0x09>", "\t"),  # SentencePiece byte fallback
    ("<0xE2><0x80><0x99>", "\u2019"),  # a run of byte tokens decodes together
    ("\u2581<0x0A>", " \n"),
    ("'m", "'m"), ("made", "made"), ("<b>&", "<b>&"),
    # already decoded text is left as it is
    (" made", " made"), ("\n", "\n"), ("a\tb", "a\tb"), (" café", " café"), ("é", "é"),
    ("it\u2019s", "it\u2019s"), ("", ""),
    # a word-level vocabulary's "mąka" is not byte-level BPE for "m\x05ka"
    ("mąka", "mąka"),
]


@pytest.mark.parametrize(("token", "text"), PLANTED)
def test_tokens_read_as_the_text_they_stand_for(token: str, text: str) -> None:
    assert format_token(token) == text
    assert format_token(format_token(token)) == text  # formatting twice is formatting once


@pytest.mark.parametrize("token", ["<0xE2>", "âĢ", "<0xE2><0x80>"])
def test_part_of_a_character_keeps_the_tokenizers_string(token: str) -> None:
    assert format_token(token) == token


def test_quoted_shows_spaces_newlines_and_tabs() -> None:
    assert format_token("Ġmade", quoted=True) == '" made"'
    assert format_token("Ċ", quoted=True) == r'"\n"'
    assert format_token("<0x0A>", quoted=True) == r'"\n"'
    assert format_token("ĉ", quoted=True) == r'"\t"'
    assert format_token('Ġsay"', quoted=True) == r'" say\""'
    assert format_token("ĠcafÃ©", quoted=True) == '" café"'  # not \u00e9


def test_html_escapes_every_special_character() -> None:
    assert format_token("<b>&'\"", html=True) == "&lt;b&gt;&amp;&#39;&#34;"
    assert format_token("Ġ<script>", html=True) == " &lt;script&gt;"
    assert format_token("Ġ<a>", quoted=True, html=True) == "&#34; &lt;a&gt;&#34;"
    # what a browser shows is the text again
    for token in ("<b>&'\"", "Ġ<a href='x'>&amp;", "Ċ"):
        assert html.unescape(format_token(token, html=True)) == format_token(token)


def test_byte_level_tokens_agree_with_the_byte_level_decoder() -> None:
    text = "Once upon\n\ta café — it’s <b>&amp; naïve 日本 🙂 x\r\ny"
    pieces = [p for p, _ in pre_tokenizers.ByteLevel(add_prefix_space=True)
              .pre_tokenize_str(text)]
    decoder = decoders.ByteLevel()
    assert "".join(format_token(p) for p in pieces) == " " + text
    for p in pieces:
        assert format_token(p) == decoder.decode([p])
    # each of the 256 byte characters alone: its character, or (part of a character, a
    # control character) kept as written
    for ch in pre_tokenizers.ByteLevel.alphabet():
        want = decoder.decode([ch])
        control = ord(want[0]) < 32 and want not in "\t\n\r" or 127 <= ord(want[0]) < 160
        assert format_token(ch) == (ch if "\ufffd" in want or control else want), ch


def test_sentencepiece_tokens_agree_with_its_decoder() -> None:
    decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                 decoders.Fuse()])
    for tokens in (["\u2581Once"], ["\u2581upon"], ["<0x0A>"], ["<0x09>"], ["ing"],
                   ["\u2581\u2581"], ["\u2581a", "<0x0A>", "b"],
                   ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]):
        # several tokens joined are decoded together, as the tokenizer decodes the list
        assert format_token("".join(tokens)) == decoder.decode(tokens)
