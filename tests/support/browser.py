"""Real headless Chromium (Debian's package) driven by Playwright, for the browser page's tests.

Playwright's own browser download is never used: it drives /usr/bin/chromium through
`executable_path`. The flags keep Chromium off the network (this machine's network is closed:
without them it tries Google's hosts at every start) and give it a fresh profile.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]


@contextlib.contextmanager
def chromium_page(viewport=(1280, 900)):
    """A Playwright page in a fresh headless Chromium; closed (and its profile removed) on exit."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="latentmill-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(120_000)  # shared CI machines can be slow; a hang still fails
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
