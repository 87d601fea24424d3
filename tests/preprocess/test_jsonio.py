"""Level-file JSON reading: the orjson path and Python's json path must agree on every input."""

import codecs
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapkit.errors import LevelError
from mapkit.preprocess import jsonio
from mapkit.preprocess.jsonio import decode_text, load_json_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "maps"


@pytest.fixture(params=["orjson", "stdlib"])
def parser(request, monkeypatch):
    """Runs a test once with orjson in use and once with Python's json alone."""
    if request.param == "stdlib":
        monkeypatch.setattr(jsonio, "orjson", None)
    else:
        assert jsonio.orjson is orjson  # a requirement of mapkit: the fast path is the one in use
    return request.param


def same(a, b) -> bool:
    """Equal values and equal types all the way down (1 and 1.0 differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def reason(data: bytes) -> str:
    with pytest.raises(LevelError) as e:
        load_json_bytes(data, "Expert.dat")
    assert e.value.path == "Expert.dat"
    return e.value.reason


# --- both paths: same objects, same errors ---------------------------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_rejected_with_the_same_reason(parser, literal):
    assert reason(b'{"_notes": [{"_time": %s}]}' % literal.encode()) == \
        f"invalid JSON: non-finite number {literal} in JSON"


def test_a_literal_beyond_float_range_is_infinity_as_in_pythons_json(parser):
    # orjson refuses 1e400 ("number is infinity"): Python's json decides, and the level reader drops it
    assert load_json_bytes(b'[1e400, -1e400, 1e-400]') == [float("inf"), float("-inf"), 0.0]


@pytest.mark.parametrize("literal", ["123456789012345678901234567890", "18446744073709551616",
                                     "-9223372036854775809", "9223372036854775807", "-9223372036854775808",
                                     "1" + "0" * 400])
def test_integers_stay_exact_integers(parser, literal):
    # orjson reads integers beyond 64 bits as floats; Python keeps them exact
    value = load_json_bytes(b'{"i": %s, "s": "x"}' % literal.encode())["i"]
    assert type(value) is int and value == int(literal)


def test_lone_surrogate_escape_is_accepted_as_in_pythons_json(parser):
    assert load_json_bytes(b'["\\ud800", "\\u00e9"]') == ["\ud800", "\u00e9"]


def test_duplicate_keys_keep_the_last_value(parser):
    assert same(load_json_bytes(b'{"a": 1, "b": 2, "a": 3.5}'), {"a": 3.5, "b": 2})


def test_deep_nesting_is_invalid_json_not_a_crash(parser):
    assert reason(b"[" * 100_000 + b"]" * 100_000) == "invalid JSON: nested too deeply"


@pytest.mark.parametrize("data", [b'{"_version": "2.0.0", "_notes": [', b'{"a": 1,}', b'[1] x', b"{'a': 1}",
                                  b'["a\tb"]', b"nul"])
def test_invalid_json_gives_pythons_message_in_both_paths(monkeypatch, data):
    expected = None
    try:
        json.loads(data.decode())
    except ValueError as e:
        expected = f"invalid JSON: {e}"
    assert expected is not None
    assert reason(data) == expected
    monkeypatch.setattr(jsonio, "orjson", None)
    assert reason(data) == expected


def test_text_errors(parser):
    assert reason(b"") == "empty file"
    assert reason(b" \n\t ") == "empty file"
    assert reason(gzip.compress(b"  ")) == "empty file"
    assert reason(b"\x1f\x8b\x08\x00broken").startswith("corrupt gzip data:")
    assert reason(b'["\xff\xfe\xfa"]').startswith("not valid UTF-8/UTF-16 text:")
    assert reason(codecs.BOM_UTF16_LE + b"\x00\xd8").startswith("not valid UTF-8/UTF-16 text:")


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8"),
    lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    lambda t: t.encode("utf-16"),  # with BOM
    lambda t: t.encode("utf-16-le"),
    lambda t: t.encode("utf-16-be"),
    lambda t: t.encode("utf-32"),
    lambda t: gzip.compress(t.encode("utf-8")),
    lambda t: gzip.compress(codecs.BOM_UTF8 + t.encode("utf-8")),
], ids=["utf8", "utf8-bom", "utf16-bom", "utf16le", "utf16be", "utf32", "gzip", "gzip-bom"])
def test_encodings(parser, encode):
    text = '{"_songName": "Caf\u00e9 \u266b", "_beatsPerMinute": 128.5, "n": [1, 2.0, -0.0, 1e-7]}'
    assert same(load_json_bytes(encode(text)), json.loads(text))
    assert decode_text(encode(text)) == text


@pytest.mark.parametrize("name", ["JOURNEY", "werewolf howls"])
def test_real_level_files_parse_exactly_as_pythons_json(name):
    files = sorted((FIXTURES / name).glob("*.dat"))
    assert len(files) >= 3
    for f in files:
        data = f.read_bytes()
        assert not jsonio._has_long_digit_run(data)  # these go through orjson
        assert same(load_json_bytes(data, str(f)), json.loads(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_document_parses_as_pythons_json_does(value):
    data = json.dumps(value).encode()
    expected = json.loads(data)
    assert same(load_json_bytes(data), expected)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonio, "orjson", None)
        assert same(load_json_bytes(data), expected)


# --- which parser runs -----------------------------------------------------------------------------

def spy_orjson(calls):
    def loads(payload):
        calls.append(payload)
        return orjson.loads(payload)

    return SimpleNamespace(loads=loads, JSONDecodeError=orjson.JSONDecodeError)


def test_plain_utf8_bytes_go_to_orjson_undecoded(monkeypatch):
    calls = []
    monkeypatch.setattr(jsonio, "orjson", spy_orjson(calls))
    data = b'{"_notes": [{"_time": 1}]}'
    assert load_json_bytes(gzip.compress(data)) == {"_notes": [{"_time": 1}]}
    assert calls == [data]  # gunzipped, not decoded to text: orjson validates UTF-8 itself
    load_json_bytes(data.decode().encode("utf-16"))
    assert calls[1] == data.decode()


def test_long_digit_runs_skip_orjson(monkeypatch):
    calls = []
    monkeypatch.setattr(jsonio, "orjson", spy_orjson(calls))
    assert load_json_bytes(b'[1234567890123456789]') == [1234567890123456789]  # 19 digits
    assert load_json_bytes(b'["1234567890123456789"]') == ["1234567890123456789"]
    assert calls == []
    assert load_json_bytes(b'[123456789012345678, 0.123456789012345678]') == [123456789012345678,
                                                                             0.123456789012345678]
    assert len(calls) == 1
