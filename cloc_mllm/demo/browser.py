"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) against the demo.

The browser test and the README's screenshot both go through here, so the page is seen the way a
person sees it. Nothing is downloaded: the binaries must already be installed (scripts/setup.sh does
``apt-get install chromium chromium-driver``), and selenium is handed their paths so its driver
manager never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = "install it with: apt-get install -y chromium chromium-driver (scripts/setup.sh does)"


def _which(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((found for name in names if (found := shutil.which(name))), None)


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) paths; CLOC_CHROMIUM / CLOC_CHROMEDRIVER override the PATH lookup."""
    browser = _which(CHROMIUM_NAMES, "CLOC_CHROMIUM")
    driver = _which(DRIVER_NAMES, "CLOC_CHROMEDRIVER")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise RuntimeError(f"headless browser: {missing} not found on PATH; {INSTALL_HINT}")
    return browser, driver


def headless_chromium(width: int = 1280, height: int = 1400):
    """A selenium ``webdriver.Chrome`` on the installed Chromium, headless, with no network of its own."""
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium manager statistics; it is not run anyway
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, timeout: float = 120.0, process=None) -> None:
    """Poll ``url`` until it answers; stop early (and say so) when the serving ``process`` has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the demo server exited with code {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}: no answer within {timeout:.0f} s")


class DemoPage:
    """The demo page in a browser: the few actions a person takes, by the components' ``elem_id``."""

    def __init__(self, driver, url: str, timeout: float = 120.0):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.timeout = driver, url, timeout
        self.wait = WebDriverWait(driver, timeout)

    def open(self) -> DemoPage:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.driver.get(self.url)
        self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#ground")))
        return self

    def _find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def send_file(self, path: str | Path) -> None:
        """Put a file in the page's upload box (clearing the one already there)."""
        from selenium.webdriver.common.by import By

        inputs = self.driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]")
        if not inputs:
            self._find("#upload button[aria-label='Clear']").click()
            self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
            inputs = self.driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]")
        inputs[0].send_keys(str(Path(path).resolve()))

    def upload(self, image_path: str | Path) -> None:
        """Upload an image, then wait until the picker shows it."""
        before = (image := self.picker_image()) and image.get_attribute("src")
        self.send_file(image_path)
        self.wait.until(
            lambda _: (im := self.picker_image()) is not None and im.get_attribute("src") != before
        )

    def wait_for_text(self, text: str) -> None:
        """Until ``text`` is shown on the page (error messages appear as toasts)."""
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)

    def picker_image(self):
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, "#picker img")
        return found[0] if found and found[0].get_attribute("src") else None

    def click_corners(self, box_pixels, image_size) -> None:
        """Click the picker at two opposite corners of ``box_pixels`` (pixel xyxy of the original image)."""
        from selenium.webdriver.common.action_chains import ActionChains

        for x, y in ((box_pixels[0], box_pixels[1]), (box_pixels[2], box_pixels[3])):
            image = self.picker_image()
            before = image.get_attribute("src")
            rect = image.rect
            # offsets from the element's centre, in CSS pixels of the rendered picture
            dx = (x + 0.5) * rect["width"] / image_size[0] - rect["width"] / 2
            dy = (y + 0.5) * rect["height"] / image_size[1] - rect["height"] / 2
            ActionChains(self.driver).move_to_element_with_offset(image, int(dx), int(dy)).click().perform()
            self.wait.until(
                lambda _, before=before: (im := self.picker_image()) and im.get_attribute("src") != before
            )

    def box_fields(self) -> list[float | None]:
        values = [self._find(f"#box-{n} input").get_attribute("value") for n in ("x1", "y1", "x2", "y2")]
        return [float(v) if v not in (None, "") else None for v in values]

    def _result(self, button: str, output: str) -> dict:
        box = self._find(f"#{output} textarea")
        before = box.get_attribute("value")
        self._find(f"#{button}").click()
        self.wait.until(lambda _: box.get_attribute("value") not in ("", before))
        return json.loads(box.get_attribute("value"))

    def describe(self) -> dict:
        """Press "Describe the box" and return the JSON the page shows."""
        return self._result("describe", "describe-json")

    def ground(self, phrase: str) -> dict:
        """Type ``phrase``, press "Ground" and return the JSON the page shows."""
        field = self._find("#phrase textarea")
        field.clear()
        field.send_keys(phrase)
        return self._result("ground", "ground-json")

    def drawn_image(self, tower: str) -> bytes:
        """The bytes of the picture the page draws for ``tower`` (fetched from its src, as the browser does)."""
        src = self._find(f"#ground-{tower.lower()} img").get_attribute("src")
        with urllib.request.urlopen(src, timeout=30) as response:
            return response.read()

    def screenshot(self, out: str | Path) -> Path:
        """A PNG of the whole page (the window is stretched to the page's height first)."""
        width = self.driver.get_window_size()["width"]
        for _ in range(2):  # a taller window re-lays the page out: measure again once
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(width, height + 160)  # + the headless window's chrome
            self.driver.execute_script("window.scrollTo(0, 0)")  # the clicks may have scrolled the page
            time.sleep(1.0)  # let the layout settle at the new size
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(out))
        return out
