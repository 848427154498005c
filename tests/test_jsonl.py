"""common.jsonl: a torn last line (killed mid-write) is dropped and repaired; damage anywhere else
is named by file and line; input data refuses a torn tail too."""

from __future__ import annotations

import json
import logging

import pytest

from common.jsonl import JsonlError, append_jsonl, read_jsonl


def test_torn_tail_dropped_with_warning_and_repaired(tmp_path, caplog):
    p = tmp_path / "metrics.jsonl"
    append_jsonl(p, [{"step": 1}, {"step": 2}])
    with p.open("ab") as fh:
        fh.write(b'{"step": 3, "lo')  # the write a kill interrupted
    with caplog.at_level(logging.WARNING, logger="longrl.jsonl"):
        assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    assert "metrics.jsonl:3: dropped a torn last line" in caplog.text
    assert p.read_bytes().endswith(b"lo")  # without repair the file is untouched
    assert read_jsonl(p, repair=True) == [{"step": 1}, {"step": 2}]
    append_jsonl(p, [{"step": 3}])  # the next append starts on a clean line
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3]


def test_complete_unterminated_line_kept_and_terminated(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(p, repair=True) == [{"a": 1}, {"a": 2}]
    append_jsonl(p, [{"a": 3}])
    assert [json.loads(x)["a"] for x in p.read_text().splitlines()] == [1, 2, 3]


def test_nul_tail_cut_by_repair(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n\x00\x00\x00')
    assert read_jsonl(p, repair=True) == [{"a": 1}]
    assert p.read_bytes() == b'{"a": 1}\n'


def test_damage_before_the_last_line_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(JsonlError, match=r"a\.jsonl:2: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"a\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(p)


def test_input_data_refuses_a_torn_tail_and_missing_files(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"a": 1}\n{"a": ')
    with pytest.raises(JsonlError, match=r"train\.jsonl:2"):
        read_jsonl(p, torn_ok=False)
    assert read_jsonl(tmp_path / "none.jsonl") == []
    with pytest.raises(JsonlError, match="no such file"):
        read_jsonl(tmp_path / "none.jsonl", missing_ok=False)
