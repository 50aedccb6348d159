"""The libyaml reader of plain specs (dgraph.spec._libyaml) gives exactly what ruamel gives.

Every document is read twice: by ``parse_text`` (libyaml when the document is plain) and by
ruamel alone; the data and every recorded location must be equal, and a document the fast
reader does not take must be recognised as such (``read_plain`` returns None).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgraph.spec import source
from dgraph.spec._libyaml import read_plain
from dgraph.spec.source import parse_text, zoo_dir


def _ruamel_only(text: str, file: str = "spec.yaml"):
    saved = source.read_plain
    source.read_plain = lambda *args, **kwargs: None
    try:
        return parse_text(text, file)
    finally:
        source.read_plain = saved


def _fast(text: str, file: str = "spec.yaml"):
    return read_plain(text, file, max_depth=64, max_int_chars=40, max_values=100_000,
                      max_chars=1_000_000)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _assert_read_alike(text: str) -> None:
    assert _fast(text) is not None, "the fast reader should take this document"
    expected, expected_map = _ruamel_only(text)
    found, found_map = parse_text(text, "spec.yaml")
    assert _same(found, expected)
    assert found_map.locations == expected_map.locations


@pytest.mark.parametrize("name", sorted(p.stem for p in zoo_dir().glob("*.yaml")))
def test_every_zoo_spec_reads_the_same(name):
    text = (zoo_dir() / f"{name}.yaml").read_text()
    expected, expected_map = _ruamel_only(text)
    found, found_map = parse_text(text, "spec.yaml")
    assert _same(found, expected)
    assert found_map.locations == expected_map.locations


PLAIN = {
    "block and flow": "dgraph: 1\nname: x\nnodes:\n  a: {kind: data, type: digits}\n"
                      "  b:\n    kind: model\n    params: {hidden: [24, 32], dropout: 0.1}\n",
    "empty collections and nulls": "c: {}\nd: []\ne: ~\nf: null\n",
    "numbers": "a: 1\nb: -2\nc: 0x1F\nd: 0o17\ne: 1_000\nf: 1e3\ng: .5\nh: -.inf\ni: .nan\n"
               "j: +7\nk: 1.5e-3\n",
    "YAML 1.2 text that 1.1 would type": "a: yes\nb: no\nc: on\nd: off\ne: 0b101\n"
                                         "f: 1:30\ng: 012\n",
    "booleans": "a: true\nb: False\nc: TRUE\n",
    "dates stay text": "a: 2024-05-01\nb: 2024-05-01T10:00:00Z\n",
    "quoted": "a: '3'\nb: \"true\"\nc: 'it''s'\nd: \"tab\\there\"\ne: \"\\u00e9\"\n",
    "block scalars": "a: |\n  line one\n  line two\nb: >-\n  folded\n  text\nc: x\n",
    "lists of mappings": "stages:\n  - name: a\n    steps: 3\n  - {name: b, steps: 4}\n"
                         "  -\n    name: c\n",
    "nested lists": "a: [[1, 2], [3, [4, 5]]]\nb:\n  - - x\n    - y\n  - []\n",
    "comments": "# head\na: 1  # trailing\n# between\nb:\n  # inside\n  c: 2\n",
    "explicit document": "---\na: 1\n...\n",
    "windows line ends": "a: 1\r\nb:\r\n  c: [1, 2]\r\n",
    "json": '{\n  "dgraph": 1,\n  "nodes": {"a": {"kind": "data", "params": {"x": [1, 2.5, '
            'true, null]}}}\n}\n',
    "unicode": "name: \u00e9t\u00e9\ndescription: \u4e2d\u6587 text \u2014 dash\n",
    "colons and hashes in text": "a: http://x.org/y#z\nb: 'a: b'\nc: x#y\n",
    "indented sequence": "a:\n- 1\n- 2\nb:\n    - 3\n",
    "long plain text": "a: this is a long plain scalar\n  continued on the next line\n",
    "a scalar at the top": "just text\n",
    "a list at the top": "- 1\n- 2\n",
}


@pytest.mark.parametrize("text", list(PLAIN.values()), ids=list(PLAIN))
def test_plain_documents_read_the_same(text):
    _assert_read_alike(text)


NOT_PLAIN = {
    "anchor and alias": "a: &x 1\nb: *x\n",
    "merge key": "a: &x {p: 1}\nb:\n  <<: *x\n  q: 2\n",
    "tag": "a: !!str 3\n",
    "python tag": "a: !!python/object:os.system x\n",
    "local tag": "a: !custom x\n",
    "directive": "%YAML 1.2\n---\na: 1\n",
    "duplicate key": "a: 1\na: 2\n",
    "number key": "1: a\n",
    "bool key": "true: a\n",
    "collection key": "? [1, 2]\n: a\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "empty": "",
    "syntax error": "a: [1, 2\n",
    "tab indentation": "a:\n\tb: 1\n",
    "huge integer": "a: " + "9" * 41 + "\n",
    "a YAML 1.1 line break": "a: x\u2028b: y\n",
    "too deep": "a: " + "[" * 70 + "]" * 70 + "\n",
    "an empty value": "a:\nb: 1\n",  # ruamel places it at the next token, libyaml not
}


@pytest.mark.parametrize("text", list(NOT_PLAIN.values()), ids=list(NOT_PLAIN))
def test_other_documents_go_to_ruamel(text):
    assert _fast(text) is None


def test_an_error_reads_as_it_did_without_the_fast_reader():
    text = "nodes:\n  a: {kind: data\n  b: 2\n"
    with pytest.raises(source.SpecError) as fast:
        parse_text(text, "spec.yaml")
    with pytest.raises(source.SpecError) as slow:
        _ruamel_only(text)
    assert str(fast.value) == str(slow.value)


_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_scalars = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(), st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "1e3", "0x10", "2024-01-01", "~", "", " x ", "a: b",
                     "#x", "- y", "'q'", '"d"', "[1]", "{a: 1}", "\u00e9"]))
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(_keys, children, max_size=4)),
    max_leaves=20)


@settings(max_examples=40, deadline=None)
@given(document=st.dictionaries(_keys, _documents, min_size=1, max_size=5),
       flow=st.sampled_from([None, True, False]))
def test_generated_documents_read_the_same(document, flow):
    import io

    from ruamel.yaml import YAML

    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = flow
    stream = io.StringIO()
    writer.dump(document, stream)
    text = stream.getvalue()
    if _fast(text) is None:  # e.g. a key that reads as a number: checked elsewhere
        return
    expected, expected_map = _ruamel_only(text)
    found, found_map = parse_text(text, "spec.yaml")
    assert _same(found, expected)
    assert found_map.locations == expected_map.locations
