"""The dashboard in a real browser (headless Chromium) against a real broker
with tasks in several states: the pages show the counts the gRPC API reports,
user-controlled text stays text, and the buttons (pause, resume, purge with
its confirmation dialog, redrive) change the queue as the gRPC API sees it.

A screenshot of the queues page is saved to $DASHBOARD_SCREENSHOT (default
target/dashboard/queues.png); `DASHBOARD_SCREENSHOT=docs/dashboard.png`
refreshes the README's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
RPC_TIMEOUT = 10.0
WAIT = 10.0
STATES = ["scheduled", "ready", "leased", "succeeded", "dead", "canceled", "waiting"]
HOSTILE = '<img src=x onerror="window.hacked=1">'


class Api:
    """The gRPC clients of one broker."""

    def __init__(self, pb, target: str):
        self.pb = pb
        self.channel = grpc.insecure_channel(target)
        self.producer = pb.producer_grpc.ProducerServiceStub(self.channel)
        self.worker = pb.worker_grpc.WorkerServiceStub(self.channel)
        self.admin = pb.admin_grpc.AdminServiceStub(self.channel)

    def enqueue(self, queue, kind, payload=b"", headers=None, delay=None):
        req = self.pb.producer.EnqueueRequest(queue=queue, kind=kind, payload=payload, headers=headers or {})
        if delay:
            req.delay.CopyFrom(duration_pb2.Duration(seconds=delay))
        return self.producer.Enqueue(req, timeout=RPC_TIMEOUT).task

    def lease(self, queue):
        req = self.pb.worker.LeaseRequest(queues=[queue], max_tasks=1)
        (leased,) = self.worker.Lease(req, timeout=RPC_TIMEOUT).tasks
        return leased

    def succeed(self, queue, kind, result=b""):
        self.enqueue(queue, kind)
        t = self.lease(queue)
        self.worker.Ack(self.pb.worker.AckRequest(task_id=t.task.id, lease_id=t.lease_id, result=result),
                        timeout=RPC_TIMEOUT)

    def kill(self, queue, kind, error):
        self.enqueue(queue, kind)
        t = self.lease(queue)
        self.worker.Nack(self.pb.worker.NackRequest(task_id=t.task.id, lease_id=t.lease_id, error=error,
                                                     no_retry=True), timeout=RPC_TIMEOUT)
        return t.task.id

    def queue(self, name):
        return self.admin.GetQueue(self.pb.admin.GetQueueRequest(queue=name), timeout=RPC_TIMEOUT)


def counts_of(info) -> dict:
    c = info.counts
    return {"scheduled": c.scheduled, "ready": c.ready, "leased": c.leased, "succeeded": c.succeeded,
            "dead": c.dead, "canceled": c.canceled, "waiting": c.waiting}


def populate(api: Api) -> dict:
    """Tasks in several states over three queues; returns what to expect."""
    for i in range(2):
        api.succeed("emails", "email.send", result=b'{"delivered": true}')
    dead = api.kill("emails", "email.send", "SMTP 550: mailbox <unknown@example.com> unavailable")
    api.enqueue("emails", "email.send")
    api.lease("emails")
    for i in range(3):
        api.enqueue("emails", "email.send", payload=f'{{"to": "user{i}@example.com"}}'.encode(),
                    headers={"tenant": "acme", "x-note": HOSTILE})
    api.enqueue("emails", "email.digest", delay=3600)
    api.enqueue("emails", HOSTILE)
    for i in range(5):
        api.succeed("reports.daily", "report.build")
    api.kill("reports.daily", "report.build", "timeout after 30s")
    api.kill("reports.daily", "report.build", "upstream returned 503")
    api.enqueue("reports.daily", "report.build", delay=600)
    for i in range(4):
        api.enqueue("webhooks", "webhook.deliver", payload=bytes([0xFF, 0x00, 0x10, i]))
    api.succeed("webhooks", "webhook.deliver")
    api.admin.PauseQueue(api.pb.admin.PauseQueueRequest(queue="webhooks"), timeout=RPC_TIMEOUT)
    return {"dead": dead}


def table_counts(driver) -> dict:
    """Every row of the queues table, read in one script (the page reloads itself)."""
    return driver.execute_script("""
        const out = {};
        for (const row of document.querySelectorAll('tr[data-queue]')) {
            const counts = {};
            for (const cell of row.querySelectorAll('td[data-state]')) {
                counts[cell.dataset.state] = parseInt(cell.textContent.trim(), 10);
            }
            counts.paused = row.querySelector('.badge.paused') !== null;
            counts.enqueued_rate = row.querySelector('td[data-field="enqueued-rate"]').textContent.trim();
            out[row.dataset.queue] = counts;
        }
        return out;
    """)


def click(driver, by, what):
    """Clicks, retrying once if an auto-refresh replaced the element."""
    for attempt in range(3):
        try:
            WebDriverWait(driver, WAIT).until(EC.element_to_be_clickable((by, what))).click()
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise


def wait_for(what, check, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def no_alert(driver):
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"an unexpected dialog: {text!r}")


def test_the_dashboard_in_a_browser(broker, browser, pb):
    api = Api(pb, broker.grpc)
    expected = populate(api)
    # Throughput: the queues are first seen by this view; what happens in the
    # next second is the rate the next view shows.
    browser.get(broker.url + "/")
    for i in range(3):
        api.enqueue("emails", "email.send", payload=f'{{"to": "late{i}@example.com"}}'.encode())
        api.succeed("reports.daily", "report.build")
    time.sleep(1.2)

    # The queues page shows what the gRPC API reports.
    browser.get(broker.url + "/")
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "queues")))
    shown = table_counts(browser)
    for name in ("emails", "reports.daily", "webhooks"):
        want = counts_of(api.queue(name))
        got = {s: shown[name][s] for s in STATES}
        assert got == want, f"{name}: page {got}, gRPC {want}"
    assert {s: shown["emails"][s] for s in STATES} == {"scheduled": 1, "ready": 7, "leased": 1,
                                                       "succeeded": 2, "dead": 1, "canceled": 0, "waiting": 0}
    assert shown["webhooks"]["paused"] is True and shown["emails"]["paused"] is False
    assert float(shown["emails"]["enqueued_rate"]) > 0, shown["emails"]
    assert browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]') is not None
    no_alert(browser)
    assert browser.execute_script("return window.hacked === undefined")

    shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or ROOT / "target" / "dashboard" / "queues.png")
    if not shot.is_absolute():
        shot = ROOT / shot
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1280, 520)
    assert browser.save_screenshot(str(shot)), f"screenshot to {shot}"
    browser.set_window_size(1400, 900)

    # A queue: its tabs, the hostile kind as text, the dead task's error.
    # Loaded afresh so the page's 5 s self-reload cannot race the click.
    browser.get(broker.url + "/")
    click(browser, By.CSS_SELECTOR, 'tr[data-queue="emails"] td.name a')
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "queue-name"), "emails"))
    tabs = {a.get_attribute("data-state"): int(a.find_element(By.CLASS_NAME, "count").text)
            for a in browser.find_elements(By.CSS_SELECTOR, "#tabs a")}
    assert tabs == {"scheduled": 1, "ready": 7, "leased": 1, "succeeded": 2, "dead": 1, "canceled": 0,
                    "waiting": 0}
    kinds = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#tasks td.kind")]
    assert HOSTILE in kinds, kinds
    assert browser.find_elements(By.CSS_SELECTOR, "#tasks img") == [], "markup in a kind stayed text"
    click(browser, By.CSS_SELECTOR, '#tabs a[data-state="dead"]')
    row = WebDriverWait(browser, WAIT).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-task="{expected["dead"]}"]')))
    assert row.find_element(By.CSS_SELECTOR, "td.error").text == \
        "SMTP 550: mailbox <unknown@example.com> unavailable"

    # A task page.
    click(browser, By.CSS_SELECTOR, '#tabs a[data-state="ready"]')
    click(browser, By.CSS_SELECTOR, "#tasks td.id a")
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "task-id")))
    assert browser.find_element(By.CSS_SELECTOR, 'dd[data-field="queue"]').text == "emails"
    headers = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
               for r in browser.find_elements(By.CSS_SELECTOR, "#headers tr")}
    assert headers == {"tenant": "acme", "x-note": HOSTILE}
    assert browser.find_element(By.ID, "payload").text == '{"to": "user0@example.com"}'
    assert browser.execute_script("return window.hacked === undefined")

    # Pause: the queue stops delivering, as the gRPC API sees it.
    browser.get(broker.url + "/queues/emails")
    click(browser, By.ID, "pause")
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "paused-badge")))
    assert "Paused" in browser.find_element(By.ID, "notice").text
    assert api.queue("emails").paused is True
    leased = api.worker.Lease(pb.worker.LeaseRequest(queues=["emails"], max_tasks=1), timeout=RPC_TIMEOUT)
    assert list(leased.tasks) == [], "a paused queue delivers nothing"
    browser.get(broker.url + "/")
    assert table_counts(browser)["emails"]["paused"] is True
    browser.get(broker.url + "/queues/emails")
    click(browser, By.ID, "resume")
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "running-badge")))
    assert api.queue("emails").paused is False

    # Purge asks first: dismissed, nothing changes; accepted, the tasks go.
    browser.get(broker.url + "/queues/reports.daily?state=dead")
    click(browser, By.ID, "purge")
    alert = WebDriverWait(browser, WAIT).until(EC.alert_is_present())
    assert "Delete all 2 dead tasks of reports.daily" in alert.text
    alert.dismiss()
    assert counts_of(api.queue("reports.daily"))["dead"] == 2
    click(browser, By.ID, "purge")
    WebDriverWait(browser, WAIT).until(EC.alert_is_present()).accept()
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "notice"), "Purged 2 tasks."))
    assert counts_of(api.queue("reports.daily"))["dead"] == 0

    # Redrive all dead (confirmed): DEAD back to READY.
    browser.get(broker.url + "/queues/emails?state=dead")
    click(browser, By.ID, "redrive-all")
    WebDriverWait(browser, WAIT).until(EC.alert_is_present()).accept()
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "notice"), "Redrove 1"))
    after = counts_of(api.queue("emails"))
    assert (after["dead"], after["ready"]) == (0, 8)

    # The browser's own form, same origin, with its token taken out: refused.
    browser.get(broker.url + "/queues/emails")
    browser.execute_script("document.querySelector('#pause').form.querySelector('[name=csrf]').remove()")
    click(browser, By.ID, "pause")
    problem = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "problem")))
    assert "form token" in problem.text
    assert "403" in browser.find_element(By.TAG_NAME, "h1").text
    assert api.queue("emails").paused is False


def test_health_endpoints_in_the_browser(broker, browser):
    browser.get(broker.url + "/healthz")
    assert browser.find_element(By.TAG_NAME, "body").text == "ok"
    browser.get(broker.url + "/readyz")
    assert browser.find_element(By.TAG_NAME, "body").text == "ready"
    browser.get(broker.url + "/queues/nope")
    assert "There is no queue" in browser.find_element(By.ID, "problem").text
