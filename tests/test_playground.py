"""The web playground at / in a real headless browser (Debian's chromium through selenium): pick models, type
one instruction, every column streams its model's answer, equal to what the API answers; the reports view
opens a compare report and nothing outside the reports folder."""

import os
import shutil

import pytest

from serving import Server, trained_adapters

INSTRUCTION = "说出一种水果。"


def browser():
    """Headless chromium, or a skip with the reason (a failure under CI, which must have it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        msg = ("the playground test needs selenium, chromium and chromedriver (apt-get install chromium "
               "chromium-driver; pip install selenium)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports-root")
    folder = root / "reports" / "zh-methods"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>Method comparison "
                                        "on tiny</title></head><body><h1>Method comparison on tiny</h1></body></html>",
                                        encoding="utf-8")
    (root / "secret.txt").write_text("outside")
    os.symlink(root / "secret.txt", root / "reports" / "link.txt")
    return root / "reports"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory, reports):
    adapters = trained_adapters(tiny_models, tmp_path_factory, ("lora", "ia3"))
    args = ["--model", tiny_models["llama"], "--adapter", f"lora={adapters['lora']}",
            "--adapter", f"ia3={adapters['ia3']}", "--reports", str(reports)]
    with Server(*args) as s:
        yield s


def test_columns_stream_each_models_answer_side_by_side(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".model-choice")) == 3)
        boxes = {b.get_attribute("value"): b for b in driver.find_elements(By.CSS_SELECTOR, ".model-choice")}
        assert list(boxes) == ["base", "lora", "ia3"]
        driver.find_element(By.ID, "instruction").send_keys(INSTRUCTION)
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("12")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".col")) == 3 and all(
            c.get_attribute("data-state") in ("done", "error") for c in d.find_elements(By.CSS_SELECTOR, ".col")))
        cols = driver.find_elements(By.CSS_SELECTOR, ".col")
        shown = {c.get_attribute("data-model"): driver.execute_script(
            "return arguments[0].querySelector('.answer').textContent", c) for c in cols}
        states = [c.get_attribute("data-state") for c in cols]
        driver.save_screenshot(str(tmp_path / "playground.png"))
    finally:
        driver.quit()
    assert states == ["done"] * 3
    client = server.client()
    api = {m: client.chat.completions.create(model=m, messages=[{"role": "user", "content": INSTRUCTION}],
                                             max_tokens=12, temperature=0).choices[0].message.content
           for m in ("base", "lora", "ia3")}
    assert shown == api
    assert len(set(api.values())) == 3
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_reports_view_opens_a_compare_report_and_nothing_outside(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "tab-reports").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reports a"))
        link = driver.find_element(By.CSS_SELECTOR, "#reports a")
        assert "Method comparison on tiny" in link.text and "zh-methods" in link.text
        link.click()
        frame = driver.find_element(By.ID, "report-frame")
        wait.until(lambda d: frame.is_displayed())
        driver.switch_to.frame(frame)
        heading = wait.until(lambda d: d.find_elements(By.TAG_NAME, "h1"))[0].text
        driver.switch_to.default_content()
        driver.save_screenshot(str(tmp_path / "reports.png"))
    finally:
        driver.quit()
    assert heading == "Method comparison on tiny"
    assert server.http("GET", "/reports/zh-methods/report.html", raw=None)[0] == 200
    for path in ("/reports/..%2Fsecret.txt", "/reports/%2e%2e/secret.txt", "/reports/link.txt",
                 "/reports/zh-methods/..%2F..%2Fsecret.txt", "/reports/%2Fetc%2Fpasswd",
                 "/reports//etc/passwd", "/reports/nothing-here"):
        status, body = server.http("GET", path)
        assert status == 404 and "outside" not in str(body) and "root:" not in str(body), (path, body)
