"""How a token is shown: the one formatter from a token's string to the text people read.

Tables, figures, the HTML report and the explorer all show tokens through
``format_token``, so a token looks the same wherever it appears. It takes either a
tokenizer's own token string (``convert_ids_to_tokens``: ``Ġmade``, ``▁made``, ``<0x0A>``)
or text already decoded (``" made"``), which it leaves as it is.
"""

import json
import re

#: A run of SentencePiece byte-fallback tokens (``<0x0A>``): one byte each.
_BYTE_RUN = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")
#: Control characters a decoded token may hold; any other means it was not byte-level BPE.
_WHITESPACE_CONTROLS = "\t\n\r"
#: HTML escapes; quotes as numeric references, which plotly's labels decode too (it knows
#: no ``&quot;``).
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's map from the character that stands for a byte to the byte."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _bytes_of(run: re.Match[str]) -> str:
    data = bytes(int(run.group()[k + 3:k + 5], 16) for k in range(0, len(run.group()), 6))
    return data.decode("utf-8", errors="replace")


def _decoded(token: str) -> str:
    """The text a token string stands for (``token`` itself when it is not a recognised
    tokenizer form)."""
    if "\u2581" in token or _BYTE_RUN.search(token):  # SentencePiece
        return _BYTE_RUN.sub(_bytes_of, token.replace("\u2581", " "))
    if token.isascii() or not all(ch in _BYTE_DECODER for ch in token):
        return token  # plain text: byte-level BPE never writes a space or a newline as such
    text = bytes(_BYTE_DECODER[ch] for ch in token).decode("utf-8", errors="replace")
    if any(ord(ch) < 32 and ch not in _WHITESPACE_CONTROLS or 127 <= ord(ch) < 160
           for ch in text):
        return token  # e.g. "ą" of a word-level vocabulary, not the control byte 0x05
    return text


def format_token(token: str, *, quoted: bool = False, html: bool = False) -> str:
    """A token as the text people read.

    Decodes the forms tokenizers write: GPT-2 byte-level BPE (``Ġ`` a space, ``Ċ`` a
    newline, ``ĉ`` a tab, ``Ã©`` the bytes of ``é``), SentencePiece's ``▁`` (a space) and
    its byte-fallback tokens (``<0x0A>`` a newline; a run of them is decoded together). A
    token that holds only part of a character's bytes (it would decode to ``�``) keeps
    the tokenizer's own string, so distinct tokens stay distinct. Text that is already
    decoded comes back unchanged, so formatting twice is formatting once.

    Args:
        token: a tokenizer's token string, or decoded text (several tokens joined are
            decoded together).
        quoted: as a JSON string literal: in double quotes, so leading and trailing spaces
            show, with newlines and tabs written ``\\n`` and ``\\t`` (labels of single
            tokens in figures and top-k lists).
        html: escaped for HTML (``&``, ``<``, ``>``, and both quotes as ``&#34;`` and
            ``&#39;``), for text that goes into a page or a plotly label.

    Returns:
        The text (quoted and/or escaped when asked), e.g. ``format_token("Ġmade")`` is
        ``" made"``, with ``quoted=True`` ``'" made"'``.
    """
    text = _decoded(token)
    if "\ufffd" in text and "\ufffd" not in token:
        text = token
    if quoted:
        text = json.dumps(text, ensure_ascii=False)
    if html:
        text = text.translate(_HTML)
    return text
