"""The load generator's refusals: it targets only 127.0.0.1, and says when no API answers at the URL."""

from __future__ import annotations

import pytest

from modelops.errors import UsageError


def test_load_generator_refuses_non_local_targets():
    from PR2_async_inference.load_test import run_load

    with pytest.raises(UsageError, match=r"only target 127\.0\.0\.1"):
        run_load("http://example.com:8000", requests=1)


def test_load_generator_says_when_no_api_answers():
    from PR2_async_inference.load_test import run_load
    from PR2_async_inference.processes import free_port

    with pytest.raises(UsageError, match=r"no API answers at --url http://127\.0\.0\.1:\d+ .*local_stack\.py"):
        run_load(f"http://127.0.0.1:{free_port()}", requests=1)
