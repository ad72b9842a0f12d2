"""The report as a user sees it: opened offline in a real headless Chromium (Debian's
`chromium`, installed by the test with apt-get when missing), every image loaded, no
console errors, every section present; and `run` skips it when nothing changed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pipeline.config import parse_config
from pipeline.stages import is_current, stage_digests

from ..conftest import CommandRun

SECTIONS = ["Key findings", "Quality control", "Integration", "Annotation", "Abundance",
            "Neighbourhoods (label-free abundance)",
            "Differential expression", "Prediction of non-response", "Provenance"]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:  # CI machines start without it; the test installs it (root)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                       timeout=900)  # fmt: skip
        found = shutil.which("chromium")
    assert found, "chromium could not be installed"
    return found


def open_in_browser(path: Path, screenshot: Path) -> dict[str, object]:
    """Open ``path`` offline; the page's title, headings, images (total, loaded), console
    errors; a full-page screenshot to ``screenshot``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(path.resolve().as_uri(), wait_until="load")
        images = page.evaluate(
            "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        headings = page.locator("h2").all_inner_texts()
        tops = page.evaluate(
            "() => Array.from(document.querySelectorAll('h2'))"
            ".map(h => h.getBoundingClientRect().top + window.scrollY)"
        )
        opened = page.evaluate(
            "() => Array.from(document.querySelectorAll('details')).map(d => d.open)"
        )
        page.screenshot(path=str(screenshot), full_page=True)
        title = page.title()
        browser.close()
    return {"title": title, "headings": headings, "images": images, "errors": errors,
            "tops": tops, "details_open": opened}  # fmt: skip


def test_the_report_renders_offline_with_every_image(
    tmp_path: Path, analysed_small: CommandRun
) -> None:
    workdir = analysed_small.workdir
    code, out, _ = analysed_small.run
    assert code == 0 and "report: " in out
    html = (workdir / "report" / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside
    seen = open_in_browser(workdir / "report" / "index.html", tmp_path / "report.png")
    assert seen["title"] == "immunoprofile report"
    assert seen["headings"] == SECTIONS  # results first, provenance last
    tops = seen["tops"]
    assert isinstance(tops, list) and tops[0] < 400  # the findings open the page
    assert tops[1] - tops[0] < 1500  # and take less than two screens
    assert seen["details_open"] == [False]  # the provenance starts collapsed
    images = seen["images"]
    assert isinstance(images, list) and len(images) >= 12
    assert all(done and width > 0 for done, width, _ in images), images
    assert seen["errors"] == []
    assert (tmp_path / "report.png").stat().st_size > 50_000
    for text in (
        "UMAP by lineage and B-cell subset",
        "Per sample: kept",
        "Abundance within B cells, binomial GLMM",
        "The same contrasts by propeller",
        "The binomial GLMM and propeller (a linear mixed model of the transformed "
        "proportions) agree: within B cells",
        "Samples flagged",
        "The B cells alone",
        "All contrasts (tests.csv)",
        "Label draws: the models were fitted on 10 label sets",
        "Genes at q &lt; 0.05 per cell type and contrast",
        "response@month0: each point a gene",
        "Gene programs",
        "genes with the smallest q-values before treatment",
        "per patient over the months",
        "Not fitted: 3 responders and 3 non-responders",
        "Package versions",
        "Inputs (SHA-256",
    ):
        assert text in html, text
    findings = html[html.index('id="findings"') : html.index('id="qc"')]
    assert "Abundance: cell types that differ (GLMM, q &lt; 0.05)" in findings
    assert "Prediction of non-response: not fitted" in findings
    text = re.sub(r'src="data:[^"]*"', "", html.split("<details>")[0])  # without images
    assert not re.search(r"\d[eE]\+\d", text)  # 5,000 not 5e+03
    assert "<figcaption>" in html and "Look for" in html  # captions say what to look at
    samplesheet = analysed_small.args[analysed_small.args.index("--samplesheet") + 1]
    cfg = parse_config({**yaml.safe_load(analysed_small.config.read_text()),
                        "workdir": str(workdir), "samplesheet": samplesheet})  # fmt: skip
    manifest = json.loads((workdir / "report" / "manifest.json").read_text())
    assert manifest["digest"] == stage_digests(cfg)["report"]
    assert is_current(cfg, "report")
