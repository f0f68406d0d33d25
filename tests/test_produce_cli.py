"""`stream-unlearn produce` against the real broker, with real .npy/.csv files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_unlearn.broker import ensure_topics
from stream_unlearn.cli import main
from stream_unlearn.producer import load_csv_inserts, load_ids, load_inserts
from stream_unlearn.wire import decode_delete, decode_insert


@pytest.fixture
def topics(broker: str, unique_topic: Callable[..., str]) -> tuple[str, str]:
    ins, dels = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {ins: 2, dels: 2})
    return ins, dels


def _inserts(broker: str, topic: str, n: int, consume: Callable[..., list], dim: int) -> dict:
    recs = consume(broker, topic, n)
    assert len(recs) == n
    events = [decode_insert(r.value, dim=dim, record_ts=r.timestamp / 1000, key=r.key) for r in recs]
    return {e.id: e.vec for e in events}


def _deletes(broker: str, topic: str, n: int, consume: Callable[..., list]) -> list[str]:
    recs = consume(broker, topic, n)
    assert len(recs) == n
    return sorted(decode_delete(r.value, record_ts=r.timestamp / 1000, key=r.key).id for r in recs)


def _args(broker: str, topics: tuple[str, str], *extra: str) -> list[str]:
    return ["produce", "--bootstrap-servers", broker, "--insert-topic", topics[0], "--delete-topic", topics[1], *extra]


def test_npy_inserts_and_deletes(broker, topics, consume, tmp_path: Path, capsys) -> None:
    X = np.random.default_rng(0).standard_normal((12, 5))
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "del.txt").write_text("3\n\n7\n")
    assert main(_args(broker, topics, "--inserts", str(tmp_path / "x.npy"), "--deletes", str(tmp_path / "del.txt"))) == 0
    assert "produced 12 inserts" in capsys.readouterr().out
    got = _inserts(broker, topics[0], 12, consume, dim=5)
    expected32 = X.astype(np.float32).astype(np.float64)  # binary is the default
    assert {k: v.tolist() for k, v in got.items()} == {str(i): expected32[i].tolist() for i in range(12)}
    assert _deletes(broker, topics[1], 2, consume) == ["3", "7"]


def test_npy_with_ids_file_no_binary_is_exact(broker, topics, consume, tmp_path: Path) -> None:
    X = np.random.default_rng(1).standard_normal((4, 3))
    np.save(tmp_path / "x.npy", X)
    ids = ["alice", "bob", "carol", "dave"]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    rc = main(_args(broker, topics, "--inserts", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.txt"), "--no-binary"))
    assert rc == 0
    got = _inserts(broker, topics[0], 4, consume, dim=3)
    for i, pid in enumerate(ids):
        assert np.array_equal(got[pid], X[i])


@pytest.mark.parametrize("header", [True, False])
def test_csv_inserts(broker, topics, consume, tmp_path: Path, header: bool) -> None:
    rows = [("p1", 1.5, -2.0), ("p2", 0.1, 3e-7), ("p3", 1e10, 4.0)]
    text = ("id,f1,f2\n" if header else "") + "".join(f"{r[0]},{r[1]!r},{r[2]!r}\n" for r in rows)
    (tmp_path / "x.csv").write_text(text)
    assert main(_args(broker, topics, "--inserts", str(tmp_path / "x.csv"), "--no-binary")) == 0
    got = _inserts(broker, topics[0], 3, consume, dim=2)
    assert {k: v.tolist() for k, v in got.items()} == {r[0]: [r[1], r[2]] for r in rows}


def test_module_entry_point_runs_as_a_process(broker, topics, consume, tmp_path: Path) -> None:
    (tmp_path / "del.txt").write_text("a\nb\nc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stream_unlearn.cli", *_args(broker, topics, "--deletes", str(tmp_path / "del.txt"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"produced 3 deletes to {topics[1]}" in proc.stdout
    assert _deletes(broker, topics[1], 3, consume) == ["a", "b", "c"]


# -- bad input: exit code 2, a message, nothing sent --------------------------------


def _write(tmp_path: Path, name: str, data: object) -> str:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, data)
    else:
        path.write_text(str(data))
    return str(path)


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "give --inserts"),
        ({"--ids": ("ids.txt", "a\n")}, "--ids needs --inserts"),
        ({"--inserts": ("x.npy", np.ones((3, 2))), "--ids": ("ids.txt", "a\nb\n")}, "2 ids for 3 rows"),
        ({"--inserts": ("x.npy", np.ones(3))}, "2-D"),
        ({"--inserts": ("x.npy", np.array([[1.0, np.nan]]))}, "NaN"),
        ({"--inserts": ("x.csv", "a,1,2\nb,1\n")}, "2 columns, expected 3"),
        ({"--inserts": ("x.csv", "id,x\na,1\nb,oops\n")}, "non-numeric"),
        ({"--inserts": ("x.csv", "id,x\n")}, "no data rows"),
        ({"--inserts": ("x.txt", "a,1\n")}, "unsupported"),
        ({"--inserts": ("x.csv", "a,1\n"), "--ids": ("ids.txt", "a\n")}, ".npy inserts only"),
        ({"--deletes": ("missing/none.txt", None)}, "No such file"),
        ({"--deletes": ("forget.txt", "a\n" + "x" * 257 + "\n")}, "row 1: id is 257 bytes, over max_id_bytes=256"),
    ],
)
def test_bad_input_exits_2(broker, topics, tmp_path: Path, capsys, files: dict, message: str) -> None:
    extra: list[str] = []
    for flag, (name, data) in files.items():
        extra += [flag, _write(tmp_path, name, data) if data is not None else str(tmp_path / name)]
    assert main(_args(broker, topics, *extra)) == 2
    assert message in capsys.readouterr().err


def test_missing_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# -- loaders -------------------------------------------------------------------------


def test_csv_header_detection_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("\ufeffid,x,y\r\n1,2,3\r\n\r\nz, 4.5 ,-1e3\r\n", encoding="utf-8")
    ids, X = load_csv_inserts(p)
    assert ids == ["1", "z"] and X.tolist() == [[2.0, 3.0], [4.5, -1000.0]]
    p.write_text("1,2,3\n")
    assert load_csv_inserts(p)[0] == ["1"]


def test_ids_file_strips_whitespace_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "ids.txt"
    p.write_text("  a \n\n b\r\nc")
    assert load_ids(p) == ["a", "b", "c"]


def test_npy_row_number_ids(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2), dtype=np.float32))
    ids, X = load_inserts(tmp_path / "x.npy")
    assert ids == ["0", "1", "2"] and X.dtype == np.float64 and X.shape == (3, 2)


# -- the broker subcommand ---------------------------------------------------------


@pytest.mark.skipif(bool(os.environ.get("STREAM_UNLEARN_TEST_BOOTSTRAP")), reason="embedded broker only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_prints_bootstrap_and_stops_on_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_unlearn.cli", "broker", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        host, port = line.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        ensure_topics(line, {"cli-broker-check": 1})
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
