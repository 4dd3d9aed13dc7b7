"""The requests topic's record format: a request round-trips through its value and headers; image pixels travel as
uint8."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from PR2_async_inference.messaging.messages import RequestMessage


def test_request_message_round_trips_through_record_fields():
    tensor = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    message = RequestMessage("id-1", "m", tensor, deadline=123.5, enqueued_at=100.25, attempt=2, top_k=3,
                             callback_url="https://h/x")
    record = SimpleNamespace(topic="t", partition=1, offset=7, key=b"id-1", value=message.value(),
                             headers=message.headers())
    back = RequestMessage.from_record(record)
    assert np.array_equal(back.tensor, tensor)
    assert (back.deadline, back.enqueued_at, back.attempt, back.top_k, back.callback_url) == \
        (123.5, 100.25, 2, 3, "https://h/x")
    record.value = b"\x00" * 8
    with pytest.raises(ValueError, match="header shape"):
        RequestMessage.from_record(record)


def test_image_pixels_travel_as_uint8():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    message = RequestMessage("id-2", "m", pixels, deadline=1.0, enqueued_at=0.5)
    assert len(message.value()) == 12 and dict(message.headers())["dtype"] == b"uint8"
    record = SimpleNamespace(topic="t", partition=0, offset=0, key=b"id-2", value=message.value(),
                             headers=message.headers())
    back = RequestMessage.from_record(record)
    assert back.tensor.dtype == np.uint8 and np.array_equal(back.tensor, pixels)
    record.headers = [(k, b"int64" if k == "dtype" else v) for k, v in record.headers]
    with pytest.raises(ValueError, match="unsupported dtype"):
        RequestMessage.from_record(record)
