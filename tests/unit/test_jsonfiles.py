"""The one JSONL reader: every file taskloom reads line by line gets the same rules and errors."""

import pytest

from taskloom.errors import UserError
from taskloom.jsonfiles import read_jsonl, read_numbered


def test_rows_keep_their_line_numbers_blank_lines_skipped(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('\ufeff{"a": 1}\n\n  \n{"s": "x\u2028y"}\n[1]', encoding="utf-8")
    assert read_numbered(f) == [(1, {"a": 1}), (4, {"s": "x\u2028y"}), (5, [1])]
    assert read_jsonl(f) == [{"a": 1}, {"s": "x\u2028y"}, [1]]


@pytest.mark.parametrize("body, needle", [
    (b'{"a": 1}\n{"a": \n', r"b\.jsonl: row 2: malformed JSON: Expecting value \(column 7\)"),
    (b'{"a": 1}\n{"a": "\xff"}\n', r"b\.jsonl: row 2: not UTF-8 text"),
])
def test_a_bad_line_is_one_error_naming_file_and_row(tmp_path, body, needle):
    f = tmp_path / "b.jsonl"
    f.write_bytes(body)
    with pytest.raises(UserError, match=needle):
        read_jsonl(f)
