"""The HTML view in a real headless Chromium: pages written by ``dgraph viz SPEC -o g.html``
for zoo specs are loaded, nodes hovered and clicked, and what the page shows is checked.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it), driven through the
``playwright`` Python package with ``executable_path``: no browser is ever downloaded. Without
a chromium (or without playwright) these tests skip and say why. One browser serves the module.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dgraph.cli import main as dgraph_main

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HINT = "Hover or click a node to see its details."


def _chromium() -> str | None:
    override = os.environ.get("DGRAPH_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile (a playwright browser context)."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium to test the HTML view in: install Debian's 'chromium' package "
                    "(.ci/run runs 'apt-get install -y chromium'), or set DGRAPH_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the 'playwright' package is not installed (it is in the dev extra: "
                    "pip install -e '.[dev]'); it drives the system Chromium, nothing is "
                    "downloaded")
    profile = tmp_path_factory.mktemp("chromium-profile")  # --user-data-dir, fresh
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000}, offline=True,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``dgraph viz SPEC --static -o SPEC.html`` for three zoo specs (--static: declared shapes,
    no dry run, which would import torch and build the models; the page is the same code)."""
    out = tmp_path_factory.mktemp("pages")
    made = {}
    for spec in ("fitnet", "adversarial_toy", "llm_seqkd"):
        path = out / f"{spec}.html"
        assert dgraph_main(["viz", spec, "--static", "-o", str(path)]) == 0
        made[spec] = path
    return made


class Page:
    """One loaded page, with the console errors and the requests it made."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.errors.append(msg.text)
                     if msg.type == "error" else None)
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.goto(path.as_uri())
        self.uri = path.as_uri()

    def node(self, name: str) -> str:
        return f'svg g.node[data-node="{name}"]'

    def hover(self, name: str) -> None:
        self.page.hover(self.node(name))

    def click(self, name: str) -> None:
        self.page.click(self.node(name))

    def away(self) -> None:
        """Move the mouse onto the page header (off every node)."""
        self.page.hover("header h1")

    def details(self) -> str:
        return self.page.inner_text("#details")

    def rows(self) -> dict[str, str]:
        """The info panel's first table: key -> value text."""
        return self.page.eval_on_selector(
            "#details table",
            "t => Object.fromEntries(Array.from(t.rows).map("
            "r => [r.cells[0].textContent, r.cells[1].textContent]))")

    def ports(self, heading: str) -> dict[str, str]:
        """The rows of the port table under ``heading`` (inputs, outputs, ...)."""
        return self.page.evaluate(
            """heading => {
              const h = Array.from(document.querySelectorAll('#details h3'))
                .find(e => e.textContent === heading);
              if (!h) { return null; }
              const t = h.nextElementSibling;
              return Object.fromEntries(Array.from(t.rows).map(
                r => [r.cells[0].textContent, r.cells[1].textContent]));
            }""", heading)

    def classes(self, selector: str) -> set[str]:
        return set((self.page.get_attribute(selector, "class") or "").split())

    def near(self) -> set[str]:
        return set(self.page.eval_on_selector_all(
            "svg g.node.near", "gs => gs.map(g => g.getAttribute('data-node'))"))

    def near_edges(self) -> set[tuple[str, str]]:
        return {tuple(e) for e in self.page.eval_on_selector_all(
            "svg g.edge.near",
            "gs => gs.map(g => [g.getAttribute('data-src'), g.getAttribute('data-dst')])")}

    def close(self) -> None:
        assert self.errors == []
        assert set(self.requests) == {self.uri}  # offline: nothing else is ever fetched
        self.page.close()


@pytest.fixture
def fitnet(browser: Any, pages: dict[str, Path]) -> Iterator[Page]:
    page = Page(browser, pages["fitnet"])
    yield page
    page.close()


def test_fitnet_page_loads_offline_with_every_node_and_edge(fitnet: Page) -> None:
    p = fitnet.page
    assert p.title() == "fitnet · dgraph"
    assert p.inner_text("header .summary") == "7 nodes · 10 edges · 2 updates"
    names = p.eval_on_selector_all("svg g.node", "gs => gs.map(g => g.getAttribute('data-node'))")
    assert sorted(names) == ["ce", "data", "hint", "kd", "regressor", "student", "teacher"]
    assert p.locator("svg g.edge").count() == 10
    assert p.locator("svg g.edge-label").count() == 10
    assert p.text_content("svg .legend-title") == "fitnet"
    assert fitnet.details() == HINT
    for name in names:  # every box is really laid out and visible
        box = p.locator(fitnet.node(name)).bounding_box()
        assert box is not None and box["width"] > 60 and box["height"] > 30, name


def test_hovering_a_node_shows_its_type_ports_shapes_and_updates(fitnet: Page) -> None:
    fitnet.hover("student")
    text = fitnet.details()
    assert text.startswith("student\n")
    rows = fitnet.rows()
    assert rows["type"] == "mlp" and rows["kind"] == "student"
    assert rows["frozen"] == "no (trainable)"
    assert rows["trained by"] == "main (every 1, repeat 1), hint (every 1, repeat 1)"
    assert rows["exported"] == "yes"
    assert rows["defined at"].endswith("fitnet.yaml:12:3")
    assert fitnet.ports("inputs") == {"x": "Features[B, 64]  ← data.x"}
    assert fitnet.ports("outputs") == {"logits": "Logits[B, 10]", "features": "Features[B, 24]"}
    assert fitnet.ports("tapped submodules") == {"body.1": "Features[*]"}
    assert '"hidden": [\n    32,\n    24\n  ]' in fitnet.page.inner_text("#details pre")
    # the neighbourhood is highlighted, the rest dimmed (the stylesheet really applies)
    assert "focus" in fitnet.classes("#canvas svg")
    assert fitnet.near() == {"student", "data", "regressor", "kd", "ce"}
    assert fitnet.near_edges() == {("data", "student"), ("student", "regressor"),
                                   ("student", "kd"), ("student", "ce")}
    opacity = fitnet.page.eval_on_selector(fitnet.node("hint"),
                                           "g => getComputedStyle(g).opacity")
    assert float(opacity) == pytest.approx(0.22)
    fitnet.hover("teacher")
    rows = fitnet.rows()
    assert (rows["type"], rows["kind"], rows["frozen"]) == ("mlp", "teacher",
                                                           "yes (parameters fixed)")
    assert rows["trained by"] == "no update"
    fitnet.hover("kd")
    rows = fitnet.rows()
    assert rows["loss in"] == "main ×0.9 (every 1, repeat 1)"
    assert fitnet.ports("inputs") == {"student": "Logits[B, C]  ← student.logits",
                                      "teacher": "Logits[B, C]  ← teacher.logits"}
    fitnet.away()
    assert fitnet.details() == HINT
    assert "focus" not in fitnet.classes("#canvas svg")


def test_clicking_pins_a_node_until_clicked_again_or_escape(fitnet: Page) -> None:
    fitnet.click("teacher")
    assert "selected" in fitnet.classes(fitnet.node("teacher"))
    fitnet.hover("hint")  # hovering shows another node for a while ...
    assert fitnet.details().startswith("hint\n")
    fitnet.away()  # ... and leaving it returns to the pinned one
    assert fitnet.details().startswith("teacher\n")
    assert fitnet.near() == {"teacher", "data", "kd", "hint"}
    fitnet.click("teacher")
    assert "selected" not in fitnet.classes(fitnet.node("teacher"))
    fitnet.away()
    assert fitnet.details() == HINT
    fitnet.click("ce")
    assert fitnet.details().startswith("ce\n")
    fitnet.away()
    fitnet.page.keyboard.press("Escape")
    assert fitnet.details() == HINT
    assert fitnet.page.locator("svg g.node.selected").count() == 0


def test_find_and_zoom(fitnet: Page) -> None:
    p = fitnet.page
    p.fill("#find", "stu")
    assert p.eval_on_selector_all("svg g.node.match",
                                  "gs => gs.map(g => g.getAttribute('data-node'))") == ["student"]
    p.press("#find", "Enter")
    assert fitnet.details().startswith("student\n")
    p.click('button[data-zoom="reset"]')
    assert p.inner_text("#zoom-level") == "100%"
    width = float(p.get_attribute("#canvas svg", "width"))
    p.click('button[data-zoom="in"]')
    assert p.inner_text("#zoom-level") == "125%"
    assert float(p.get_attribute("#canvas svg", "width")) == pytest.approx(width * 1.25)
    p.click('button[data-zoom="out"]')
    assert p.inner_text("#zoom-level") == "100%"


def test_two_updates_stripes_colours_and_shares(browser: Any, pages: dict[str, Path]) -> None:
    page = Page(browser, pages["adversarial_toy"])
    p = page.page
    legend = dict(p.eval_on_selector_all(
        "svg g.legend-update",
        "gs => gs.map(g => [g.getAttribute('data-update'), g.querySelector('rect')"
        ".getAttribute('fill')])"))
    assert list(legend) == ["critic", "generator"] and legend["critic"] != legend["generator"]
    for node, updates in (("critic", ["critic"]), ("critic_on_fake", ["critic"]),
                          ("generator", ["generator"]), ("critic_loss", ["critic"]),
                          ("generator_loss", ["generator"]), ("data", [])):
        marks = p.eval_on_selector_all(
            f'{page.node(node)} rect.update-mark',
            "rs => rs.map(r => [r.getAttribute('data-update'), getComputedStyle(r).fill])")
        assert [u for u, _ in marks] == updates, node
        for update, fill in marks:
            r, g, b = (int(legend[update][i:i + 2], 16) for i in (1, 3, 5))
            assert fill == f"rgb({r}, {g}, {b})", (node, fill)
    page.hover("critic_on_fake")
    rows = page.rows()
    assert rows["shares"] == "critic"
    assert rows["trained by"] == "critic (every 1, repeat 1)"
    assert page.ports("inputs") == {"x": "Tensor[B, 2]  ← generator.y"}
    assert page.near() == {"critic_on_fake", "generator", "critic_loss", "generator_loss"}
    page.hover("generator")
    assert page.rows()["trained by"] == "generator (every 5, repeat 1)"
    page.hover("generator_loss")
    assert page.rows()["loss in"] == "generator ×1 (every 5, repeat 1)"
    # the generator's gradient runs through the shared critic: that edge has its colour
    stroke = p.eval_on_selector(
        'svg g.edge[data-src="generator"][data-dst="critic_on_fake"] path',
        "e => e.getAttribute('stroke')")
    assert stroke == legend["generator"]
    page.close()


def test_a_reference_is_an_edge_and_is_listed_both_ways(browser: Any,
                                                        pages: dict[str, Path]) -> None:
    page = Page(browser, pages["llm_seqkd"])
    p = page.page
    assert p.inner_text("header .summary") == "7 nodes · 14 edges · 1 reference · 1 updates"
    ref = 'svg g.edge.ref[data-src="teacher"][data-dst="generate"]'
    assert p.locator("svg g.edge.ref").count() == 1
    assert p.get_attribute(ref, "data-dst-port") == "source"
    dash = p.eval_on_selector(f"{ref} path", "e => getComputedStyle(e).strokeDasharray")
    assert dash == "2px, 3px"
    label = p.eval_on_selector_all(
        'svg g.edge-label[data-edge="' + p.get_attribute(ref, "id") + '"] text',
        "ts => ts.map(t => t.textContent)")
    assert label == ["params.source:", "reference"]
    page.hover("generate")
    rows = page.rows()
    assert (rows["type"], rows["kind"]) == ("lm_sampler", "sampler")
    assert rows["references"] == "params.source → teacher"
    assert ("teacher", "generate") in page.near_edges()
    assert "teacher" in page.near()
    page.hover("teacher")
    assert page.rows()["referenced by"] == "generate.params.source"
    assert "ref" in page.classes(ref) and "near" in page.classes(ref)
    page.close()
