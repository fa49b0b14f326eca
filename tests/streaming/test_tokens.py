"""engine/streaming/tokens.py: special tokens removed from streamed text, also when split across deltas."""

from __future__ import annotations

import pytest

from engine.streaming import TokenFilter, strip_tokens

TOKENS = ("<|im_end|>", "</s>", "<|eot_id|>")


def filtered(pieces: list[str], tokens: tuple[str, ...] = TOKENS) -> tuple[list[str], str]:
    filt = TokenFilter(tokens)
    out = [filt.feed(p) for p in pieces]
    return out, filt.flush()


def test_strip_tokens_removes_every_occurrence_of_every_token():
    assert strip_tokens("a</s>b</s>c<|im_end|>", TOKENS) == "abc"
    assert strip_tokens("nothing special", TOKENS) == "nothing special"
    assert strip_tokens("a</s>", ()) == "a</s>"


@pytest.mark.parametrize("text", ["Done.<|im_end|>", "<|eot_id|>Hi</s> there", "a < b </s", "<|im_end|><|im_end|>"])
def test_a_token_split_anywhere_is_removed(text):
    expected = strip_tokens(text, TOKENS)
    for cut in range(len(text) + 1):
        out, tail = filtered([text[:cut], text[cut:]])
        assert "".join(out) + tail == expected, cut
    out, tail = filtered(list(text))  # one character per delta
    assert "".join(out) + tail == expected


def test_a_possible_token_start_is_held_back_until_the_next_delta_decides():
    filt = TokenFilter(TOKENS)
    assert filt.feed("Done.<|im") == "Done."
    assert filt.feed("_end|> ok") == " ok"
    assert filt.feed("x <") == "x "
    assert filt.feed("b") == "<b"  # not a token after all: released
    assert filt.flush() == ""


def test_flush_releases_what_was_held_at_the_end_of_the_stream():
    filt = TokenFilter(TOKENS)
    assert filt.feed("a </") == "a "
    assert filt.flush() == "</"
    assert filt.flush() == ""  # nothing held twice
    assert filt.feed("b") == "b"


def test_text_without_any_token_prefix_passes_straight_through():
    out, tail = filtered(["Hello", ", world", "!"])
    assert out == ["Hello", ", world", "!"] and tail == ""


def test_the_longest_possible_start_of_any_token_is_held():
    filt = TokenFilter(("</s>", "<|im_end|>"))
    assert filt.feed("x<|im_en") == "x"
    assert filt.feed("d|") == ""
    assert filt.feed(">y") == "y"


def test_a_filter_without_tokens_holds_nothing():
    filt = TokenFilter(())
    assert filt.feed("a<") == "a<"
    assert filt.flush() == ""
