"""The web page in a real browser: Debian's headless Chromium driven by Selenium (chromium-driver).

Skipped where Chromium, its driver or Selenium is missing (.ci/run installs them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from topoclass.api import bundled_model_dir

pytestmark = pytest.mark.integration  # starts a server and a browser

CIF = bundled_model_dir("tqc2020") / "examples" / "Bi2Se3.cif"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,1300",
]
WAIT_S = 60


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
        )
        pytest.skip(f"{missing} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    session.set_page_load_timeout(WAIT_S)
    yield session
    session.quit()


def _resources(browser) -> list[str]:
    return browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def test_page_predicts_a_formula_and_an_uploaded_cif(browser, server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server_url)
    wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "body[data-ready='true']")))

    Select(browser.find_element(By.ID, "formula-model")).select_by_visible_text("tang2019")
    browser.find_element(By.ID, "formula").send_keys("Bi2Se3")
    browser.find_element(By.ID, "spacegroup").send_keys("166")
    browser.find_element(By.ID, "formula-submit").click()
    answer = (By.CSS_SELECTOR, "article[data-id='Bi2Se3'] [data-task='topo_class'] .answer")
    wait.until(shown.visibility_of_element_located(answer))
    assert browser.find_element(*answer).text == "TI"
    bars = browser.find_elements(By.CSS_SELECTOR, "article[data-id='Bi2Se3'] [data-task='topo_class'] .bar")
    assert [bar.find_element(By.CLASS_NAME, "label").text for bar in bars] == [
        "trivial",
        "TI",
        "TCI",
        "semimetal",
    ]
    source = browser.find_element(By.CSS_SELECTOR, "[data-task='topo_class'] .source").text
    assert source.startswith("topo_class:predictor ")

    Select(browser.find_element(By.ID, "structure-model")).select_by_visible_text("tqc2020")
    browser.find_element(By.ID, "files").send_keys(str(CIF))
    uploaded = (By.CSS_SELECTOR, "article[data-id='Bi2Se3.cif'] [data-task='topo_class'] .answer")
    wait.until(shown.visibility_of_element_located(uploaded))
    assert browser.find_element(*uploaded).text == "TI"
    title = browser.find_element(By.CSS_SELECTOR, "article[data-id='Bi2Se3.cif'] h3").text
    assert title == "Bi2Se3.cif — Bi2Se3"
    card = browser.find_element(By.LINK_TEXT, "model card").get_attribute("href")
    assert card == f"{server_url}/models/tqc2020/card?format=html"

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert all(url.startswith(server_url) for url in _resources(browser))

    browser.get(card)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("tqc2020")
    browser.save_screenshot(str(tmp_path / "card.png"))


DROP_FILE = """
const [name, text] = arguments;
const files = new DataTransfer();
files.items.add(new File([text], name));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
"""

# An answer with a column this page has never heard of, as a model with applicability flags gives.
FLAGGED = {
    "model": "tang2019",
    "tasks": ["topological"],
    "rows": [
        {
            "id": "X1",
            "formula": "X1",
            "spacegroup": 2,
            "topological": "trivial",
            "topological:p(trivial)": 0.8,
            "topological:p(topological)": 0.2,
            "topological:predictor": "network",
            "flags": "outside the training elements",
            "skipped": "",
        }
    ],
}


def test_dropped_files_are_predicted_and_unknown_columns_shown(browser, server_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server_url)
    wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "body[data-ready='true']")))
    nacl = (bundled_model_dir("tqc2020") / "examples" / "NaCl.cif").read_text()
    browser.execute_script(DROP_FILE, "NaCl.cif", nacl)
    answer = (By.CSS_SELECTOR, "article[data-id='NaCl.cif'] [data-task='topo_class'] .answer")
    wait.until(shown.visibility_of_element_located(answer))
    assert browser.find_element(*answer).text == "trivial"

    browser.execute_script("render(arguments[0])", FLAGGED)
    flags = browser.find_element(By.CSS_SELECTOR, "article[data-id='X1'] tr[data-column='flags']")
    assert flags.text == "flags outside the training elements"


def test_api_documentation_renders_from_local_files(browser, server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server_url}/docs")
    operation = (By.CSS_SELECTOR, "#operations-default-predict_predict_post")
    WebDriverWait(browser, WAIT_S).until(shown.visibility_of_element_located(operation))
    browser.save_screenshot(str(Path(tmp_path) / "docs.png"))
    resources = _resources(browser)
    assert any(url.endswith("swagger-ui-bundle.js") for url in resources)
    assert all(url.startswith(server_url) for url in resources)
