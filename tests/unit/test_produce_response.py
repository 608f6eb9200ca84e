"""The templated single-partition Produce response encodes exactly what kio encodes."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode

from driftlog.protocol.codec import encode_body
from driftlog.server.produce import PRODUCE, _Answer, _response, _single_partition_response


@pytest.mark.parametrize("version", range(3, 12))
@pytest.mark.parametrize("base_offset", [0, 1, 255, 2**31, 2**62])
def test_template_matches_kio(version: int, base_offset: int) -> None:
    for topic, partition, log_start in [("t", 0, 0), ("a-longer.topic_name", 37, 12)]:
        answer = _Answer(topic, partition, ErrorCode.none, None, base_offset, log_start)
        fast = _single_partition_response(version, answer)
        assert fast is not None
        assert fast.data == encode_body(PRODUCE, version, _response(version, [answer]))


def test_log_append_time_takes_the_general_path() -> None:
    answer = _Answer("t", 0, ErrorCode.none, None, 5, 0, log_append_time_ms=1000)
    assert _single_partition_response(11, answer) is None
