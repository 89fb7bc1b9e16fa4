"""The web dashboard in a real browser (Debian's headless Chromium, driven by Playwright)
against the all-in-one: sign in with a token, create a Network and an Instance from the
forms, watch it turn Running without a reload, type into its serial console, see its
display, and a user bound to one namespace sees that one only and gets no console elsewhere.
Screenshots go to test-artifacts/dashboard/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker
from testsupport import REPO_ROOT

SHOTS = REPO_ROOT / "test-artifacts" / "dashboard"
AXE = REPO_ROOT / "build" / "test-assets" / "axe-core" / "axe.min.js"  # hack/fetch-web-assets
CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps trying
# Google's hosts, which this closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update"]  # fmt: skip
TEAM = "team-a"  # the one namespace of the user `teammate`


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def signed_in(browser: Browser, cloud: Cloud, token: str) -> Page:
    # The cloud's CA is not in Chromium's store; TLS itself is tested by the proxy's tests.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{cloud.dev.console_url}/")
    expect(page).to_have_url(f"{cloud.dev.console_url}/login?next=/")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Namespaces")).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    """A screenshot, and the page checked against WCAG 2 A and AA (labels, names, roles,
    contrast...) by axe-core in the page itself."""
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations"
        ".map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target).join(' ')})`)"
    )
    assert found == [], f"{name}: {found}"


def tab_to(page: Page, text: str, most: int = 30) -> None:
    """Move the keyboard's focus with Tab alone until it is on the element reading `text`."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == text:
            return
    raise AssertionError(f"{text!r} is not reached with Tab")


def test_a_user_creates_a_network_and_an_instance_and_uses_its_consoles(
    cloud: Cloud, browser: Browser
) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    token = cloud.kubectl("create", "token", "developer", "-n", "default").strip()
    page = browser.new_context(ignore_https_errors=True).new_page()
    page.goto(f"{cloud.dev.console_url}/login")
    page.get_by_label("Token", exact=True).fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("does not accept this token")
    shot(page, "01-login-refused")

    page = signed_in(browser, cloud, token)
    shot(page, "02-namespaces")
    page.get_by_role("link", name="default", exact=True).click()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    create_network(page)
    create_instance(page)
    use_consoles(page, cloud)
    see_topology_then_stop_and_delete(page, cloud)
    cloud.kubectl("delete", "network", "web-net", "--wait=true", "--timeout=120s")


def create_network(page: Page) -> None:
    """From the form, reached and filled with the keyboard alone: first refused by the API
    server, naming the field."""
    page.get_by_role("link", name="Networks").click()
    tab_to(page, "Create Network")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create Network")).to_be_visible()
    tab_to(page, "")  # the first field, Name (an input has no text)
    assert page.evaluate("document.activeElement.id") == "f-name"
    page.keyboard.type("web-net")
    page.get_by_label("Subnet", exact=True).fill("10.31.0.0/33")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("alert")).to_contain_text("spec.subnets[0].cidr")
    shot(page, "03-network-refused")
    page.get_by_label("Subnet", exact=True).fill("10.31.0.0/24")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Network web-net")).to_be_visible()
    expect(page.locator("#state")).to_have_text("Ready", timeout=60_000)


def create_instance(page: Page) -> None:
    """From the form, seen turning Running on the page it lands on, live."""
    page.get_by_role("link", name="Instances").click()
    page.get_by_role("link", name="Create Instance").click()
    page.get_by_label("Name", exact=True).fill("web-1")
    page.get_by_label("Boot image", exact=True).fill("stratus-test")
    page.get_by_label("Instance type", exact=True).fill("s1.small")
    page.get_by_label("Network", exact=True).select_option("web-net")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Instance web-1")).to_be_visible()
    page.evaluate("window.stratusNotReloaded = true")
    expect(page.locator("#state")).to_have_text("Running", timeout=BOOT_TIMEOUT * 1000)
    assert page.evaluate("window.stratusNotReloaded === true"), "the page was reloaded"
    assert "10.31.0." in page.locator(".facts").inner_text()
    shot(page, "04-instance-running")


def use_consoles(page: Page, cloud: Cloud) -> None:
    """The serial console's shell answers what is typed; the display is drawn."""
    boot_marker(cloud, "web-1", "STRATUS-GUEST: ready")
    page.get_by_role("button", name="Connect serial console").click()
    expect(page.locator("#serial-state")).to_have_text("Connected")
    rows = page.locator("#serial .xterm-rows")
    page.keyboard.press("Enter")  # the boot lines came before the session: a new prompt
    page.keyboard.type("echo WEB-$((6*7))")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("WEB-42", timeout=120_000)

    page.get_by_role("button", name="Connect display").click()
    expect(page.locator("#vnc-state")).to_have_text("Connected")
    page.wait_for_function(NON_BLANK_CANVAS, timeout=60_000)
    shot(page, "05-consoles")


def see_topology_then_stop_and_delete(page: Page, cloud: Cloud) -> None:
    page.get_by_role("link", name="Topology").click()
    expect(page.locator('[data-instance="web-1"]')).to_be_visible()
    expect(page.locator('[data-network="web-net"]')).to_be_visible()
    shot(page, "06-topology")

    page.goto(f"{cloud.dev.console_url}/ns/default/instances/web-1")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#state")).to_have_text("Stopped", timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    expect(page.locator("#row-web-1")).to_have_count(0, timeout=120_000)
    shot(page, "07-deleted")


NON_BLANK_CANVAS = """() => {
  const canvas = document.querySelector('#vnc canvas');
  if (!canvas || !canvas.width || !canvas.height) return false;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 4; i < pixels.length; i += 4)
    if (pixels[i] !== pixels[0] || pixels[i + 1] !== pixels[1] || pixels[i + 2] !== pixels[2])
      return true;  // two pixels differ: something is drawn
  return false;
}"""


def test_a_user_of_one_namespace_sees_only_it_and_gets_no_console_elsewhere(
    cloud: Cloud, browser: Browser
) -> None:
    cloud.kubectl("create", "namespace", TEAM)
    cloud.kubectl("create", "serviceaccount", "teammate", "-n", TEAM)
    cloud.kubectl("create", "rolebinding", "teammate-admin", "--clusterrole=admin",
                  f"--serviceaccount={TEAM}:teammate", "-n", TEAM)  # fmt: skip
    token = cloud.kubectl("create", "token", "teammate", "-n", TEAM).strip()
    try:
        page = signed_in(browser, cloud, token)
        listed = page.locator(".namespaces li").all_inner_texts()
        assert listed == [TEAM], listed
        shot(page, "08-one-namespace")

        page.goto(f"{cloud.dev.console_url}/ns/default/instances")
        expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("cannot list resource")
        shot(page, "09-other-namespace-refused")

        # A console in default: refused before the WebSocket opens (the right is checked
        # first, whatever the Instance), though the page's session cookie goes with it.
        opened = page.evaluate("""(url) => new Promise((done) => {
            const socket = new WebSocket(url, ['binary']);
            socket.onopen = () => done('open');
            socket.onclose = (event) => done('closed ' + event.code);
        })""", f"wss://127.0.0.1:{cloud.dev.console_port}/v1/namespaces/default/instances/"
                "web-1/console")  # fmt: skip
        assert opened == "closed 1006", opened  # the handshake got 403, not 101
    finally:
        cloud.kubectl("delete", "namespace", TEAM, "--wait=false")
