"""The dashboard in a real headless Chromium against a running testnet (selenium + Debian's chromium-driver).

It logs in with the one-time link `meshvpn testnet` prints, checks that the
client's live circuit shows three hops, that the bandwidth graph moves
after a fetch, and that saving a setting in the form changes the node
(seen through the API); a bad value shows the API's one-line error.  It
saves a screenshot of each view, light and dark, at 1280x800 and at phone
width: into the test's own directory, or, with MESHVPN_UPDATE_SCREENSHOTS=1,
over the ones in doc/screenshots/ (linked from the README), so a test run
leaves the checkout as it found it.
"""

import os
import shutil
import time

from twisted.trial import unittest

from meshvpn.control.client import ControlClient
from meshvpn.tools import socksclient
from meshvpn.tools.testnet import Testnet

DOC_SHOTS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "doc", "screenshots")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser(width, height):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    viewport(driver, width, height)
    return driver


def viewport(driver, width, height, mobile=False):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def click(driver, element):
    """Click as a person would, with the element in the middle of the screen (the header is sticky)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def waitUntil(predicate, timeout=30.0, what="condition"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (StaleElementReferenceException, NoSuchElementException):
            # the live page re-renders every second: an element found a moment
            # ago may be gone, or not drawn yet; look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class DashboardTests(unittest.TestCase):
    def setUp(self):
        if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
            if os.environ.get("CI"):
                self.fail("chromium and chromium-driver are missing (bin/install installs them)")
            raise unittest.SkipTest("no chromium/chromedriver")
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("selenium is not installed") from None
        self.net = Testnet(lambda line: None)
        self.addCleanup(self.net.stop)
        self.net.start()
        self.api = ControlClient.forDataDir(self.net.client.dataDir)

    def test_liveDashboard(self):
        from selenium.webdriver.common.by import By

        driver = browser(1280, 800)
        self.addCleanup(driver.quit)
        url = self.net.dashboardURL()
        self.assertRegex(url, r"^http://127\.1\.0\.1:\d+/login\?token=")
        driver.get(url)
        waitUntil(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
                  what="the dashboard to load")
        self.assertNotIn("hidden", driver.find_element(By.ID, "main").get_attribute("class"))  # logged in

        # the client's live circuit: three hops, shown as a path
        circuit = waitUntil(lambda: driver.find_elements(By.CSS_SELECTOR, "#circuits li.circuit:not(.closed)"),
                            what="a circuit")[0]
        hops = circuit.find_elements(By.CSS_SELECTOR, ".hop")
        self.assertEqual(len(hops), 3)
        apiHops = [c for c in self.api.get("/v1/circuits")["circuits"] if c["state"] != "closed"][0]["hops"]
        self.assertEqual([h.find_element(By.TAG_NAME, "b").text for h in hops], [h["id"][:8] for h in apiHops])
        self.assertEqual(driver.find_element(By.ID, "nat-type").text, "no-nat")
        self.assertEqual(driver.find_element(By.ID, "live-text").text, "live")

        # a fetch through the circuit moves the graph (its samples come from the event stream)
        host, port = self.net.startWeb()
        before = driver.execute_script("return state.samples.reduce((a, s) => a + s.down, 0)")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            status, body, _, _ = socksclient.httpGet(self.net.socksAddress(), host, port, "/bytes/2000000")
            self.assertEqual(status, 200)
            time.sleep(0.3)
        waitUntil(lambda: driver.execute_script("return state.samples.reduce((a, s) => a + s.down, 0)") > before + 2e6,
                  what="the bandwidth graph to move")
        self.assertNotEqual(driver.find_element(By.ID, "bw-total").text, "")
        waitUntil(lambda: "MB" in driver.find_element(By.CSS_SELECTOR, "#circuits li.circuit.in-use .meta").text,
                  what="the used circuit's bytes")

        # the settings form changes the node; a bad value shows the one-line error and changes nothing
        form = driver.find_element(By.CSS_SELECTOR, 'form.field[data-key="circuits-spare"]')
        field = form.find_element(By.TAG_NAME, "input")
        field.clear()
        field.send_keys("2")
        click(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        waitUntil(lambda: "hidden" not in form.find_element(By.CLASS_NAME, "saved").get_attribute("class"),
                  what="the setting to save")
        spare = {s["key"]: s["value"] for s in self.api.get("/v1/settings")["settings"]}["circuits-spare"]
        self.assertEqual(spare, 2)
        waitUntil(lambda: self.api.get("/v1/status")["circuits"]["spare"] >= 2, what="a second spare circuit")
        field.clear()
        field.send_keys("lots")
        click(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        error = form.find_element(By.CSS_SELECTOR, ".error")
        waitUntil(lambda: "hidden" not in error.get_attribute("class"), what="the error")
        self.assertEqual(error.text, "key 'circuits-spare' in control request: expected a whole number 0 or more, "
                         "got 'lots'")
        self.assertEqual({s["key"]: s["value"] for s in self.api.get("/v1/settings")["settings"]}["circuits-spare"], 2)

        # relays: a sortable table of what the client knows
        # the table follows the directory as it grows (relays_known in the status it refreshes)
        waitUntil(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#relays tr"))
                  == len(self.api.get("/v1/relays")["relays"]), what="the relay table to match the directory")
        click(driver, driver.find_element(By.CSS_SELECTOR, 'th[data-sort="address"]'))
        addresses = [r.find_elements(By.TAG_NAME, "td")[2].text for r in driver.find_elements(By.CSS_SELECTOR, "#relays tr")]
        self.assertEqual(addresses, sorted(addresses))

        # the log tail filters by level
        click(driver, driver.find_element(By.CSS_SELECTOR, "#log-level option[value=warn]"))
        levels = {li.get_attribute("data-level") for li in driver.find_elements(By.CSS_SELECTOR, "#log li")}
        self.assertLessEqual(levels, {"warn", "error", "critical"})
        click(driver, driver.find_element(By.CSS_SELECTOR, "#log-level option[value=info]"))
        self.screenshots(driver)
        self.relayDashboard(driver, apiHops[1]["id"])

    def relayDashboard(self, driver, middleId):
        """The middle of the client's circuit, on its own dashboard: the cells it relayed, each way, as its API says."""
        from selenium.webdriver.common.by import By

        relay = next(n for n in self.net.nodes if n.info.get("node_id") == middleId)
        api = ControlClient.forDataDir(relay.dataDir)
        driver.get(api.post("/v1/login-link")["url"])
        card = waitUntil(lambda: [c for c in driver.find_elements(By.ID, "card-relaying") if c.is_displayed()],
                         what="the relaying card")[0]
        self.assertFalse(driver.find_element(By.ID, "card-vpn").is_displayed())  # a relay has no VPN
        self.assertFalse(driver.find_element(By.ID, "card-circuits").is_displayed())
        relayed = api.get("/v1/status")["relay"]
        self.assertGreater(relayed["cells_relayed_backward"], 2_000_000 // 498)  # the fetches came back through it
        text = waitUntil(lambda: driver.find_element(By.ID, "relayed").text, what="cells relayed")
        self.assertRegex(text, r"^\d[\d.]*[kM]? forward · \d[\d.]*[kM]? back \(\d")
        self.assertRegex(card.find_element(By.ID, "relay-creates").text, r"^[1-9]\d* accepted, \d+ refused$")
        SHOTS = self.shots
        driver.execute_script("applyTheme('light')")
        viewport(driver, 1280, 800)
        time.sleep(0.4)
        driver.execute_script("drawGraph()")
        driver.save_screenshot(os.path.join(SHOTS, "dashboard-relay-desktop-light.png"))

    def screenshots(self, driver):
        """Each view, light and dark, desktop (1280x800) and phone (390 wide), and the whole desktop page."""
        SHOTS = self.shots = (DOC_SHOTS if os.environ.get("MESHVPN_UPDATE_SCREENSHOTS") == "1"
                              else os.path.abspath(self.mktemp()))
        os.makedirs(SHOTS, exist_ok=True)
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        for theme in ("light", "dark"):
            driver.execute_script("applyTheme(arguments[0])", theme)
            for name, width, mobile in (("desktop", 1280, False), ("phone", 390, True)):
                viewport(driver, width, 800, mobile)
                time.sleep(0.4)
                driver.execute_script("drawGraph()")
                driver.save_screenshot(os.path.join(SHOTS, f"dashboard-{name}-{theme}.png"))
                if (name, theme) != ("desktop", "light"):
                    continue  # one whole page is enough; the rest shows the first screen
                height = driver.execute_script("return document.documentElement.scrollHeight")
                viewport(driver, width, min(height, 4000), mobile)
                time.sleep(0.3)
                driver.execute_script("drawGraph()")
                driver.save_screenshot(os.path.join(SHOTS, f"dashboard-{name}-{theme}-full.png"))
        viewport(driver, 1280, 800)
