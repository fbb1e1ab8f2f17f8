"""Log lines: each is written whole, so processes sharing one stderr never splice their lines."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
import structlog.testing

from consumer import logs


class Recording:
    """A stderr that records each ``write`` call, as an unbuffered pipe would receive them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_log_line_reaches_stderr_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = Recording()
    monkeypatch.setattr("sys.stderr", stderr)
    try:
        logs.configure(fmt="json", worker=0)
        structlog.get_logger("test").info("worker ready", device="cpu")
    finally:
        structlog.reset_defaults()
    (line,) = stderr.writes
    assert line.endswith("\n") and json.loads(line) | {"timestamp": None} == {
        "event": "worker ready", "device": "cpu", "worker": 0, "level": "info", "timestamp": None,
    }  # fmt: skip


def test_error_and_summary_lines_are_written_whole_too(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = Recording()
    monkeypatch.setattr("sys.stderr", stderr)
    logs.line("error: the model cannot be loaded")
    assert stderr.writes == ["error: the model cannot be loaded\n"]


def test_a_multi_line_error_becomes_one_line_keeping_its_last_line() -> None:
    """TensorFlow's errors span many lines, the error itself last: the run's one `error:` line was
    their first ("TypeError: in user code:") followed by the rest of the traceback."""
    message = 'in user code:\n\n    File "x.py", line 3\n\n    TypeError: Binding inputs failed\n'
    assert logs.one_line(message) == "in user code: … TypeError: Binding inputs failed"
    assert logs.one_line("plain") == "plain" and logs.one_line("") == ""


def test_a_tensorflow_error_s_graph_node_trailer_is_not_taken_for_the_error() -> None:
    """An op's failure ends with the node it ran in, on a line of its own after the error itself:
    that trailer was taken as the error ("Graph execution error: … [[{{node DecodeRaw}}]] …")."""
    message = (
        "Graph execution error:\n\nDetected at node DecodeRaw defined at (most recent call last):\n"
        '  File "m.py", line 19, in decode\n\nInput to DecodeRaw has length 1 that is not a multiple of 4\n'
        "\t [[{{node DecodeRaw}}]] [Op:__inference_decode_8]"
    )
    assert logs.last_line(message) == "Input to DecodeRaw has length 1 that is not a multiple of 4"
    assert logs.one_line(message).endswith(" … Input to DecodeRaw has length 1 that is not a multiple of 4")


def test_a_librdkafka_line_repeated_is_written_once_per_window_with_its_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the brokers out of reach, each client logged a refused connection about twenty times a
    second (289 lines from one worker's consumer in 15 s): the lines differ only in their timing."""
    stderr = Recording()
    monkeypatch.setattr("sys.stderr", stderr)
    now = [0.0]
    failed = "[thrd:b]: b: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after {}ms in state CONNECT)"
    refused, other = "FAIL [c#consumer-1] " + failed, "FAIL [c#producer-2] " + failed.format(0)
    try:
        logs.configure(fmt="json")
        librdkafka = logging.getLogger("librdkafka")
        assert [type(f) for f in librdkafka.filters] == [logs.Repeats]  # configure installs it
        librdkafka.filters = [logs.Repeats(window=30, clock=lambda: now[0])]
        for step in range(100):  # 0.05 s apart: 5 s
            now[0] = step * 0.05
            librdkafka.error(refused.format(step % 3))
            librdkafka.error(other)
        now[0] = 31.0
        librdkafka.error(refused.format(7))
    finally:
        structlog.reset_defaults()
    lines = [json.loads(w) for w in stderr.writes]
    assert [(line["event"][:15], line.get("repeated")) for line in lines] == [
        ("FAIL [c#consume", None), ("FAIL [c#produce", None), ("FAIL [c#consume", 99),
    ]  # fmt: skip
    assert lines[-1]["event"] == refused.format(7)


def test_a_warning_per_record_is_written_a_few_times_a_window_and_the_rest_counted() -> None:
    now = [0.0]
    with structlog.testing.capture_logs() as captured:
        skipped = logs.Sampled(structlog.get_logger(), "input skipped", lines=3, window=10, clock=lambda: now[0])
        for offset in range(50):  # 50 in the first second
            now[0] = offset * 0.02
            skipped.warning("NotMsgpackError" if offset % 5 else "WrongShapeError", offset=offset)
        now[0] = 9.0
        skipped.tick()  # the window is not over: nothing said yet
        written_in_window = len(captured)
        now[0] = 10.5
        skipped.tick()  # over: what was held, in one line
        now[0] = 11.0
        skipped.warning("NotMsgpackError", offset=50)  # a new window: written again
        skipped.flush()  # nothing held: no line
    assert written_in_window == 3 and [line["offset"] for line in captured[:3]] == [0, 1, 2]
    held = captured[3]
    assert held["event"] == "input skipped: more, not written one by one" and held["log_level"] == "warning"
    assert held["count"] == 47 and held["by_kind"] == {"NotMsgpackError": 38, "WrongShapeError": 9}
    assert held["last"] == {"offset": 49} and held["window_s"] == 10
    assert captured[4]["event"] == "input skipped" and captured[4]["offset"] == 50 and len(captured) == 5
