"""Drives two web chat pages in headless Chromium (WebChatBrowserTests).

Page A and page B are two chats connected on loopback. A line typed into one
must show in the other, a file dropped on A and one picked in B must reach
the other (fetched with its Fetch button, progress bar full), and A's network
view must draw the connection to B. Prints one line per step; exits 1 on the
first failure, with what was on the pages. With --screenshots DIR, saves
DIR/webchat-chat.png and DIR/webchat-network.png.
"""
import argparse
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30


def browser(chromium, chromedriver, width, height):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def wait(driver, what, condition, seconds=WAIT):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out after {seconds} s waiting until {what}")


def step(name):
    print(f"ok: {name}", flush=True)


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_page(driver, url):
    driver.get(url)
    wait(driver, "the page is connected to its chat", lambda d: css(d, "#link.up") and d.find_element(By.ID, "me").get_attribute("title"))
    return driver.find_element(By.ID, "me").get_attribute("title")


def type_line(driver, text):
    box = driver.find_element(By.ID, "line")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def message_from(driver, peer, text):
    return [m for m in css(driver, f'.msg[data-from="{peer}"] .text') if m.text == text]


def fetch_offer(driver, name):
    """Clicks Fetch on the offer of `name` and waits until it is saved; returns the path."""
    card = wait(driver, f"an offer of {name} shows", lambda d: next(
        (c for c in css(d, ".file") if c.find_elements(By.CSS_SELECTOR, ".name") and c.find_element(By.CSS_SELECTOR, ".name").text == name), None))
    card.find_element(By.CSS_SELECTOR, "button.get").click()
    label = wait(driver, f"{name} is saved", lambda d: (lambda s: s if s.startswith("saved as ") else None)(card.find_element(By.CSS_SELECTOR, ".state").text))
    progress = card.find_element(By.CSS_SELECTOR, "progress")
    assert progress.is_displayed() and float(progress.get_attribute("value")) == 1.0, "the progress bar is not full"
    return label[len("saved as "):]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url-a", required=True)
    parser.add_argument("--url-b", required=True)
    parser.add_argument("--drop-file", required=True, help="a text file whose content page A drops, as that name")
    parser.add_argument("--pick-file", required=True, help="a file page B picks with its file chooser")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--screenshots")
    args = parser.parse_args()

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    a = browser(args.chromium, args.chromedriver, 1280, 800)
    b = None
    try:
        b = browser(args.chromium, args.chromedriver, 1280, 800)
        peer_a = open_page(a, args.url_a)
        peer_b = open_page(b, args.url_b)
        step(f"both pages connected (A {peer_a}, B {peer_b})")

        # Each page lists the other chat on the topic before anything is sent.
        wait(a, "page A lists B on the topic", lambda d: css(d, f'#peers span[title="{peer_b}"]'))
        wait(b, "page B lists A on the topic", lambda d: css(d, f'#peers span[title="{peer_a}"]'))
        step("each page lists the other peer on the topic")

        line_a = f"hello from page A {time.time_ns()}"
        type_line(a, line_a)
        wait(b, "A's line shows in page B", lambda d: message_from(d, peer_a, line_a))
        wait(a, "A's line shows in page A as ours", lambda d: message_from(d, peer_a, line_a))
        line_b = f"and hello back from B {time.time_ns()}"
        type_line(b, line_b)
        wait(a, "B's line shows in page A", lambda d: message_from(d, peer_b, line_b))
        step("a line typed in one page shows in the other, both ways")

        # A file dropped on page A (a drop event carrying a File, as a drag from the desktop makes).
        drop_name = os.path.basename(args.drop_file)
        with open(args.drop_file, encoding="utf-8") as f:
            content = f.read()
        a.execute_script("""
            const [name, text] = arguments;
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, { type: "text/plain" }));
            const target = document.getElementById("messages");
            for (const type of ["dragenter", "dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
            }""", drop_name, content)
        wait(a, "page A says it offers the dropped file", lambda d: [s for s in css(d, ".sys") if s.text.startswith(f"offering {drop_name}")])
        saved = fetch_offer(b, drop_name)
        print(json.dumps({"dropped": drop_name, "saved": saved}), flush=True)
        step("a file dropped on page A was fetched from page B")

        # A file picked with page B's file chooser.
        b.find_element(By.ID, "file").send_keys(os.path.abspath(args.pick_file))
        pick_name = os.path.basename(args.pick_file)
        saved = fetch_offer(a, pick_name)
        print(json.dumps({"picked": pick_name, "saved": saved}), flush=True)
        step("a file picked in page B was fetched from page A")

        if args.screenshots:
            a.save_screenshot(os.path.join(args.screenshots, "webchat-chat.png"))

        a.find_element(By.ID, "tab-network").click()
        link = wait(a, "page A's network view draws a direct TCP connection to B",
                    lambda d: css(d, f'#graph path.link[data-peer="{peer_b}"][data-kind="direct"][data-transport="tcp"]'))
        wait(a, "page A's network view draws node B", lambda d: css(d, f'#graph g.node[data-peer="{peer_b}"]'))
        wait(a, "page A's network view rings B as in the topic's gossipsub mesh",
             lambda d: css(d, f'#graph g.node[data-peer="{peer_b}"] circle.mesh'))
        assert link[0].is_displayed(), "the connection is not visible"
        step("page A's network view shows the connection to B")
        if args.screenshots:
            a.save_screenshot(os.path.join(args.screenshots, "webchat-network.png"))

        # /who from the page, and switching topics with the topic box.
        a.find_element(By.ID, "tab-chat").click()
        a.find_element(By.ID, "who").click()
        wait(a, "page A shows /who's answer with B", lambda d: [s for s in css(d, ".sys") if s.text.startswith("On lobby:") and peer_b[-8:] in s.text])
        topic = a.find_element(By.ID, "topic")
        topic.clear()
        topic.send_keys("elsewhere", Keys.ENTER)
        wait(a, "page A is on topic elsewhere", lambda d: d.find_element(By.ID, "side-topic").get_attribute("textContent") == "elsewhere"
             and [s for s in css(d, ".sys") if s.text == "Now on topic elsewhere"])
        wait(b, "page B sees A leave lobby", lambda d: [s for s in css(d, ".sys") if s.text.endswith("left lobby")])
        step("/who and switching topics from page A")
        print("PASS", flush=True)
    except AssertionError as failure:
        print(f"FAIL: {failure}", flush=True)
        for name, driver in (("A", a), ("B", b)):
            if driver is not None:
                print(f"--- page {name} text:\n{driver.find_element(By.TAG_NAME, 'body').text}", flush=True)
        sys.exit(1)
    finally:
        a.quit()
        if b is not None:
            b.quit()


if __name__ == "__main__":
    main()
