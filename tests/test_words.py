"""The phrasing of messages (cnncli.words)."""

from __future__ import annotations

import pytest

from cnncli.words import are


@pytest.mark.parametrize("names,text", [(["--top-k"], "--top-k is"), (["--conf", "--iou"], "--conf and --iou are"),
                                        (("a", "b", "c"), "a, b and c are")])
def test_names_as_a_subject_agree_with_their_verb(names, text):
    assert are(names) == text
