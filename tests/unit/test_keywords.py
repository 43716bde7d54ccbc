"""-k expressions (harness/keywords.py): pytest's grammar, machine names as whole words."""

import pytest

from harness.plugin import keywords


@pytest.mark.parametrize("text, true_for, expected", [
    ("nic", {"nic"}, True),
    ("nic and pc", {"nic"}, False),
    ("nic and not virtio", {"nic"}, True),
    ("not (usb or sata)", {"nic"}, True),
    ("(usb or sata) and q35", {"sata", "q35"}, True),
    ("usb or sata and q35", {"usb"}, True),  # and binds tighter than or, as in pytest
    ("not not nic", {"nic"}, True),
])
def test_evaluates_like_pytest(text, true_for, expected):
    assert keywords.evaluate(keywords.parse(text), lambda w: w in true_for) is expected


@pytest.mark.parametrize("text", ["nic and", "(nic", "nic)", "and nic", "nic nic", "or"])
def test_malformed_expressions_say_where(text):
    with pytest.raises(keywords.KeywordSyntaxError, match="-k"):
        keywords.parse(text)


def test_identifiers():
    assert keywords.identifiers(keywords.parse("(a or b) and not c[1]")) == {"a", "b", "c[1]"}
