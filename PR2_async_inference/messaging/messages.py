"""What travels on the service's topics: :class:`RequestMessage` on the requests topic, :class:`StatusMessage`
on the results topic.

A request record's key is the request id and its value the input sample's raw bytes, (C, H, W) in C order:
``uint8`` image pixels as the API decoded them, or a ``float32`` model-input tensor; the ``dtype`` header
says which. Headers carry ``request_id``, ``model``, ``deadline``, ``attempt``, ``enqueued_at``, ``shape``,
``dtype``, ``top_k`` and ``callback_url``. Binary values keep a 224x224 image at 150 KB instead of several
MB of JSON. A result record's key is the request id and its value one :class:`StatusMessage` as JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

Status = Literal["queued", "running", "succeeded", "failed", "expired"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "expired"})
STATUS_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "expired": 2}


@dataclass
class RequestMessage:
    """One inference request as it travels on the requests topic."""

    request_id: str
    model: str
    tensor: np.ndarray  # one sample (C, H, W): float32 model input, or uint8 image pixels (4x fewer bytes)
    deadline: float  # unix seconds; past it the request is reported expired, never run
    enqueued_at: float
    attempt: int = 1
    top_k: int = 5
    callback_url: str | None = None
    # Filled in by the consumer: where the record came from.
    topic: str = ""
    partition: int = -1
    offset: int = -1

    def headers(self) -> list[tuple[str, bytes]]:
        pairs = {
            "request_id": self.request_id,
            "model": self.model,
            "deadline": repr(self.deadline),
            "attempt": str(self.attempt),
            "enqueued_at": repr(self.enqueued_at),
            "shape": ",".join(str(d) for d in self.tensor.shape),
            "dtype": self.dtype,
            "top_k": str(self.top_k),
        }
        if self.callback_url:
            pairs["callback_url"] = self.callback_url
        return [(k, v.encode()) for k, v in pairs.items()]

    @property
    def dtype(self) -> str:
        return "uint8" if self.tensor.dtype == np.uint8 else "float32"

    def value(self) -> bytes:
        return np.ascontiguousarray(self.tensor, dtype=self.dtype).tobytes()

    @classmethod
    def from_record(cls, record: Any) -> RequestMessage:
        """Decode a consumed record. Raises ValueError for a malformed one (a poison message)."""
        headers = {k: v.decode() for k, v in (record.headers or [])}
        try:
            shape = tuple(int(d) for d in headers["shape"].split(",") if d)
            dtype = headers.get("dtype", "float32")
            if dtype not in ("float32", "uint8"):
                raise ValueError(f"unsupported dtype header {dtype!r} (float32 or uint8)")
            tensor = np.frombuffer(record.value, dtype=dtype)
            if tensor.size != int(np.prod(shape)):
                raise ValueError(
                    f"payload holds {tensor.size} {dtype} values, header shape {shape} needs {int(np.prod(shape))}"
                )
            return cls(
                request_id=headers["request_id"],
                model=headers["model"],
                tensor=tensor.reshape(shape),
                deadline=float(headers["deadline"]),
                enqueued_at=float(headers["enqueued_at"]),
                attempt=int(headers.get("attempt", "1")),
                top_k=int(headers.get("top_k", "5")),
                callback_url=headers.get("callback_url"),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except KeyError as exc:
            raise ValueError(f"missing header {exc.args[0]!r}") from exc


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class StatusMessage(BaseModel):
    """One state change of a request; the value of a results-topic record."""

    request_id: str
    model_name: str
    status: Status
    created_at: float = Field(description="when the API accepted the request (unix seconds)")
    updated_at: float = Field(default_factory=time.time)
    deadline: float | None = None
    attempt: int = 1
    result: list[Prediction] | None = None
    error: str | None = None
    batch_size: int | None = None
    queue_time_s: float | None = None
    inference_time_s: float | None = None
    worker: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None

    @classmethod
    def for_request(cls, message: RequestMessage, status: Status, worker: str, **fields: Any) -> StatusMessage:
        """The state ``status`` of a consumed request, reported by ``worker``."""
        return cls(
            request_id=message.request_id,
            model_name=message.model,
            status=status,
            created_at=message.enqueued_at,
            deadline=message.deadline,
            attempt=message.attempt,
            worker=worker,
            callback_url=message.callback_url,
            **fields,
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> StatusMessage:
        return cls.model_validate_json(value)
