"""`ucl serve`'s page in a real browser: headless Chromium (Debian's `chromium`) driven by
Selenium through Debian's `chromedriver`, never a downloaded one.

The specification: from the keyboard the file picker is reachable; choosing an image shows the
ranked sounds, the planted concept first, each with an <audio> player whose source the server
streams (with ranges), a score, and a bar chart of the bank texts that carried it with the
effective sample size; an unreadable file shows the server's reason; on a phone-sized window
nothing overflows sideways. Screenshots are saved for people to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_serve_api import running, served  # noqa: F401 (the server fixture, reused)

httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ucl_cli.serve.app import create_app  # noqa: E402

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
SCREENSHOT = Path("/tmp/ucl_serve_screenshot.png")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no chromium and chromedriver binaries (Debian: apt-get install chromium "
    "chromium-driver; scripts/test.sh installs them when run as root)",
)


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 20):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_a_picked_image_shows_playable_ranked_sounds(served, browser, media_dir, tmp_path):  # noqa: F811
    with running(create_app(served)) as url:
        browser.get(url + "/")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#method option"))
        assert "sfx" in browser.find_element(By.ID, "served").text

        # the file picker is a real button, reached with Tab (Enter and Space press it)
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        for _ in range(5):
            if browser.switch_to.active_element.get_attribute("id") == "pick":
                break
            browser.switch_to.active_element.send_keys(Keys.TAB)
        picker = browser.switch_to.active_element
        assert picker.get_attribute("id") == "pick" and picker.tag_name == "button"

        browser.find_element(By.ID, "file").send_keys(str(media_dir / "images" / "concept3.png"))
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits > li")) >= 6)
        hits = browser.find_elements(By.CSS_SELECTOR, "#hits > li")
        assert hits[0].find_element(By.CSS_SELECTOR, ".name").text == "concept3.wav"
        assert hits[0].find_element(By.CSS_SELECTOR, ".score").text.startswith("score ")
        caption = hits[0].find_element(By.CSS_SELECTOR, ".bridge-caption").text
        assert "effective sample size" in caption
        bars = hits[0].find_elements(By.CSS_SELECTOR, ".bars li")
        assert bars and "concept 3" in bars[0].text

        sources = [
            audio.get_property("src")
            for audio in browser.find_elements(By.CSS_SELECTOR, "#hits audio")
        ]
        assert len(sources) == 6 and all(src.startswith(url + "/api/media/sfx/") for src in sources)
        for src in sources:
            answer = httpx.get(src, headers={"Range": "bytes=0-"})
            assert answer.status_code in (200, 206) and answer.content[:4] == b"RIFF"
        # the browser itself loads the first clip (its length comes from the served bytes)
        duration = wait_for(
            browser,
            lambda d: d.execute_script(
                "const a = document.querySelector('#hits audio');"
                "return a.readyState >= 1 ? a.duration : null;"
            ),
        )
        assert duration == pytest.approx(0.25, abs=0.01)

        browser.save_screenshot(str(tmp_path / "serve.png"))
        shutil.copyfile(tmp_path / "serve.png", SCREENSHOT)

        browser.set_window_size(390, 844)  # a phone
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0
        browser.execute_script("document.getElementById('results-title').scrollIntoView()")
        browser.save_screenshot(str(tmp_path / "serve-phone.png"))
        shutil.copyfile(tmp_path / "serve-phone.png", SCREENSHOT.with_name(
            "ucl_serve_screenshot_phone.png"
        ))


def test_an_unreadable_file_shows_the_servers_reason(served, browser, tmp_path):  # noqa: F811
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture\n")
    with running(create_app(served)) as url:
        browser.get(url + "/")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#method option"))
        browser.find_element(By.ID, "file").send_keys(str(bad))
        error = wait_for(
            browser,
            lambda d: (box := d.find_element(By.ID, "error")).is_displayed() and box.text,
        )
        assert error.startswith("notes.png: ")
        assert not browser.find_elements(By.CSS_SELECTOR, "#hits > li")


def test_a_sound_shows_images_and_a_hit_becomes_the_next_query(
    served,  # noqa: F811
    browser,
    media_dir,
    tmp_path,
):
    with running(create_app(served)) as url:
        browser.get(url + "/")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#method option"))
        browser.find_element(By.ID, "file").send_keys(str(media_dir / "audio" / "concept4.wav"))
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits > li")) >= 6)
        first = browser.find_element(By.CSS_SELECTOR, "#hits > li")
        assert first.find_element(By.CSS_SELECTOR, ".name").text == "concept4.png"
        thumbnail = first.find_element(By.CSS_SELECTOR, ".media img")
        assert wait_for(browser, lambda d: thumbnail.get_property("naturalWidth")) == 16
        browser.save_screenshot(str(tmp_path / "images.png"))
        shutil.copyfile(tmp_path / "images.png", SCREENSHOT.with_name(
            "ucl_serve_screenshot_images.png"
        ))

        # "Find sounds for this" searches with the hit's own file, by collection and row
        first.find_element(By.CSS_SELECTOR, ".hit-actions button").send_keys(Keys.ENTER)
        wait_for(
            browser,
            lambda d: "for " in d.find_element(By.ID, "status").text
            and d.find_element(By.CSS_SELECTOR, "#hits > li .name").text.endswith(".wav"),
        )
        assert browser.find_element(By.CSS_SELECTOR, "#hits > li .name").text == "concept4.wav"
        assert "concept4.png" in browser.find_element(By.ID, "status").text
