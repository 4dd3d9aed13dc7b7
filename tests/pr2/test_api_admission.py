"""What every accepted request goes through: the API decodes a small image on the event loop and a large one on a
worker thread, with the same pixels and the same errors."""

from __future__ import annotations

import numpy as np
import pytest

from modelops.errors import UsageError
from tests.pr2.test_codec import manifest


@pytest.mark.parametrize("side", [20, 600])  # decoded on the event loop; on a worker thread (over 512x512)
def test_the_api_decodes_small_and_large_images_alike(side: int):
    import asyncio
    import base64
    import io

    from PIL import Image

    from PR2_async_inference.api.admission import INLINE_DECODE_PIXELS, decode

    assert (side * side <= INLINE_DECODE_PIXELS) == (side == 20)
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (255, 0, 127)).save(buf, "PNG")
    pixels = asyncio.run(decode(base64.b64encode(buf.getvalue()).decode(), manifest()))
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8
    assert pixels[0].min() == 255 and pixels[1].max() == 0
    truncated = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    with pytest.raises(UsageError, match="not a decodable PNG/JPEG image"):
        asyncio.run(decode(truncated, manifest()))
    with pytest.raises(UsageError, match="not a decodable"):
        asyncio.run(decode(base64.b64encode(b"not an image").decode(), manifest()))
