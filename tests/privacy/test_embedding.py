"""The instruction embedding runs on every suggestion, so it has a fast path of its own; it
must stay the feature hashing the learner trains on, bit for bit, on any text."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.embedding import (
    embed_instruction,
    hash_features,
    instruction_tokens,
    instruction_vector,
)

_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x4F00),  # CJK
        st.sampled_from(list("abcXYZ019 _-,.!é")),
        st.characters(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_fast_path_is_the_hashing_of_the_tokens(text: str) -> None:
    fast = embed_instruction(text)
    slow = hash_features((t, 1.0) for t in instruction_tokens(text))
    assert fast.dtype == np.float32 and fast.shape == (128,)
    assert np.array_equal(fast, slow)


def test_cached_vector_is_read_only_and_equal() -> None:
    v = instruction_vector("用高德地图导航到公司")
    assert np.array_equal(v, embed_instruction("用高德地图导航到公司"))
    assert not v.flags.writeable
    assert instruction_vector("用高德地图导航到公司") is v
    assert not embed_instruction("!!!").any()  # no tokens: the zero vector, not NaN
