"""The audit chain hashes a canonical JSON form. It is written by msgspec on the hot path; the
definition (what a reviewer re-implements) is ``json.dumps`` with sorted keys, no whitespace
and UTF-8. Any divergence would make every chain written since unverifiable elsewhere."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.audit import HASHED_FIELDS, canonical

# every character class json escapes differently: controls, quote, backslash, DEL, the JSON
# line separators, non-BMP; lone surrogates cannot be UTF-8 in either form
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
value = st.one_of(st.none(), text, st.integers(min_value=-(2**63), max_value=2**63 - 1))


@settings(max_examples=500, derandomize=True)
@given(st.fixed_dictionaries({name: value for name in HASHED_FIELDS}))
def test_canonical_is_the_json_definition(fields: dict[str, object]) -> None:
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical(fields) == expected.encode()
