"""The dashboard in a real headless Chromium, driven through WebDriver (chromedriver).

Usage: check.py URL TOKEN EVENTS_FILE PLUGINS TABLES

PLUGINS and TABLES are comma-separated: the plugins and `plugin.table`s the page must show.
EVENTS_FILE holds order events (JSON lines) to produce while the `orders` plugin is paused.
Prints what it checked; exits non-zero, naming the check, on the first that fails.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL, TOKEN, EVENTS_FILE, PLUGINS, TABLES = sys.argv[1:6]
PLUGINS = PLUGINS.split(",")
TABLES = TABLES.split(",")
WAIT = 60.0


def say(line):
    print(line, flush=True)


def wait_for(what, check, timeout=WAIT):
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # the page is changing under us: try again
            last_error = error
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def api(method, path, body=None, content_type=None):
    request = urllib.request.Request(URL.rstrip("/") + path, data=body, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def browser():
    chromium = os.environ.get("WEIR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = os.environ.get("WEIR_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp(prefix='weir-chromium-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is given: Selenium downloads nothing.
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def plugin_cell(driver, plugin, cell):
    return driver.find_element(By.CSS_SELECTOR, f'#plugins tr[data-plugin="{plugin}"] .{cell}').text


def main():
    driver = browser()
    try:
        driver.get(URL)
        wait_for("the live connection", lambda: driver.find_element(By.ID, "connection").text == "live")
        say("page loaded; live updates connected")

        for plugin in PLUGINS:
            wait_for(f"plugin {plugin} in the plugins table",
                     lambda: driver.find_elements(By.CSS_SELECTOR, f'#plugins tr[data-plugin="{plugin}"]'))
            state = wait_for(f"a state for {plugin}", lambda: plugin_cell(driver, plugin, "state"))
            say(f"plugin {plugin}: {state}")
        for table in TABLES:
            rows = wait_for(f"table {table} with rows",
                            lambda: driver.find_element(By.CSS_SELECTOR, f'#tables tr[data-table="{table}"] .rows').text)
            say(f"table {table}: {rows} rows")

        # The SQL console: rows as a table and a bar per row for the numeric column.
        query = "SELECT status, count(*) AS orders FROM orders GROUP BY status ORDER BY status"
        box = driver.find_element(By.ID, "sql-input")
        box.clear()
        box.send_keys(query)
        driver.find_element(By.ID, "sql-run").click()
        rows = wait_for("the query's rows", lambda: driver.find_elements(By.CSS_SELECTOR, "#sql-table tbody tr"))
        answer = api("POST", "/v1/sql", json.dumps({"sql": query}).encode(), "application/json")
        shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        expected = [[r["status"], str(r["orders"])] for r in answer]
        assert shown == expected, f"the console shows {shown}, the API answers {expected}"
        bars = driver.find_elements(By.CSS_SELECTOR, "#sql-chart rect")
        assert len(bars) == len(expected), f"{len(bars)} bars in the chart for {len(expected)} rows"
        say(f"SQL console: {len(shown)} rows, as the API answers them, and {len(bars)} bars")

        # Actions carry the token given on the page.
        token = driver.find_element(By.ID, "token")
        token.clear()
        token.send_keys(TOKEN)
        driver.find_element(By.ID, "token-save").click()

        # Pause `orders` from the page: the host pauses it.
        driver.find_element(By.CSS_SELECTOR, '#plugins tr[data-plugin="orders"] button[data-action="pause"]').click()
        wait_for("the page to show orders paused", lambda: plugin_cell(driver, "orders", "state") == "paused")
        detail = api("GET", "/v1/plugins/orders")
        assert detail["state"] == "paused", f"the host says orders is {detail['state']}"
        say("orders paused from the page; the host says paused")

        # Events produced while it is paused: its lag on the page grows by exactly that many.
        def lag():
            return int(plugin_cell(driver, "orders", "lag").replace(",", ""))
        before = wait_for("a settled lag", lambda: (lag(), time.sleep(1.5), lag())[0] == lag() and str(lag()))
        before = int(before)
        with open(EVENTS_FILE, "rb") as events:
            body = events.read()
        produced = len([line for line in body.splitlines() if line.strip()])
        api("POST", "/v1/topics/orders/events", body, "application/x-ndjson")
        wait_for(f"the lag to grow from {before} by {produced}", lambda: lag() == before + produced)
        say(f"lag went from {before} to {before + produced} while {produced} events were produced")

        # Resumed from the page, it catches up.
        driver.find_element(By.CSS_SELECTOR, '#plugins tr[data-plugin="orders"] button[data-action="resume"]').click()
        wait_for("orders to catch up", lambda: plugin_cell(driver, "orders", "state") == "running" and lag() == 0)
        say("resumed from the page; lag back to 0")

        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, f"the browser console has errors: {errors}"
        say("no errors in the browser console")
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"dashboard check failed: {failure}", file=sys.stderr)
        sys.exit(1)
