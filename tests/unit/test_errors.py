"""Error messages fit on one line."""

from manet.errors import flattened, one_line


def test_one_line_and_flattened():
    exc = RuntimeError("Error(s) in loading state_dict:\n\tMissing key(s):  \"a\", \"b\".\n")
    assert one_line(exc) == "Error(s) in loading state_dict:"
    assert flattened(exc) == 'Error(s) in loading state_dict: Missing key(s): "a", "b".'
    assert flattened(exc, limit=14) == "Error(s) in lo"
    assert one_line(ValueError()) == "ValueError"
