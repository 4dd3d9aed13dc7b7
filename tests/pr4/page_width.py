"""Render an HTML report in headless Chromium at a given window width and read how wide the page is.

Debian's ``chromium`` (``.ci/run`` installs it) loads a copy of the page with a script that, once the page has
loaded, writes the document's scroll width and the window's inner width into the DOM; ``--dump-dom`` prints it.
A page wider than its window makes the window scroll sideways.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

_PROBE = ("<script>window.addEventListener('load',()=>{const d=document.documentElement;"
          "const out={scroll:d.scrollWidth,client:d.clientWidth,inner:window.innerWidth};"
          "const p=document.createElement('pre');p.id='page-width-probe';p.textContent=JSON.stringify(out);"
          "document.body.appendChild(p);});</script>")


def chromium() -> str:
    """The Chromium binary; fails the test where it could be installed (CI, apt-get present), else skips."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    reason = "chromium is not installed: `apt-get install chromium` (.ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("true", "1") or shutil.which("apt-get"):
        pytest.fail(reason)
    pytest.skip(f"{reason}; this machine has no apt-get")


def page_width(page: Path, tmp_dir: Path, window_width: int = 1400) -> dict[str, int]:
    """``{"scroll", "client", "inner"}`` pixel widths of ``page`` rendered in a ``window_width``-pixel window."""
    probe = tmp_dir / f"probe_{page.name}"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    profile = tmp_dir / "chromium-profile"
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
         f"--window-size={window_width},900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="page-width-probe">(.*?)</pre>', done.stdout)
    assert match, f"chromium printed no width (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(match[1].replace("&quot;", '"'))
