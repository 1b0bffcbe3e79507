"""The studio in a real browser: Debian's chromium (``apt-get install chromium``, see .ci/setup) driven by
Playwright for Python (the ``studio-test`` extra; Playwright's own browser download is never used).

The test types into the page as a user would, waits for the numbers and compares them with ``verbalize eval``
and the library on the same rows; every request that is not to the studio is blocked (and counted). The
default suite runs it on the tiny GPT-2; the slow one on the embedded model with ``templates/sst2.toml`` and
200 SST-2 texts, printing the feedback times and taking the README's screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("VERBALIZE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (see .ci/setup)", allow_module_level=True)

import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from verbalize import Verbalizer  # noqa: E402
from verbalize.cli.main import main  # noqa: E402
from verbalize.cli.studio import build  # noqa: E402
from verbalize.engine.scoring import Scorer  # noqa: E402
from verbalize.io.readers import labeled_rows  # noqa: E402
from verbalize.prompting.template import loads_template  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = """name = "t"
prompt = "Review: {text}\\nSentiment:"
sample_text = "a good film"

[labels]
negative = ["bad", "negative"]
positive = ["good", "positive"]
"""
WORDS = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "bad bad"]
WORDS += ["the acting is good", "the story is bad", "I liked this movie", "I hated it", "a terrible ending"]
TINY_ROWS = [(t, "positive" if i % 3 else "negative") for i, t in enumerate(WORDS)] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The studio on a free loopback port, in a thread."""

    def __init__(self, folder: Path, data: Path, scorer: Scorer, calibrations: list[str] | None = None):
        args = argparse.Namespace(
            templates=str(folder), data=[str(data)], column=None, label_column="label", field=[], host="127.0.0.1"
        )
        self.app = build(args, scorer=scorer)
        if calibrations:
            self.app.state.evaluator.calibrations = calibrations
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < end, "the studio did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Browser:
    """Chromium with every request that is not to the studio blocked and recorded."""

    def __init__(self, url: str):
        self.url, self.blocked = url, []

    def __enter__(self) -> Browser:
        self.pw = sync_api.sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        self.context = self.browser.new_context(viewport={"width": 1500, "height": 1100})
        self.context.route("**/*", self._route)
        return self

    def _route(self, route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(self.url + "/") or url == self.url:
            route.continue_()  # type: ignore[attr-defined]
        else:
            self.blocked.append(url)
            route.abort()  # type: ignore[attr-defined]

    def page(self, query: str = "?template=t.toml"):
        page = self.context.new_page()
        page.goto(self.url + "/" + query)
        return page

    def __exit__(self, *exc: object) -> None:
        self.browser.close()
        self.pw.stop()


def _wait_done(page, old_job: str | None = None, ready: str = "", timeout: float = 600_000) -> float:
    """Wait until the page shows a finished evaluation (of a job other than ``old_job``); returns the time."""
    page.wait_for_function(
        """([old, ready]) => { const r = document.getElementById('right');
             return r.dataset.job && r.dataset.job !== old &&
                    (ready ? (r.dataset.ready || '').split(' ').includes(ready) : r.dataset.status === 'done'); }""",
        arg=[old_job or "", ready],
        timeout=timeout,
    )
    return time.perf_counter()


def _type_at(page, after: str, typed: str) -> float:
    """Put the cursor right after the first ``after`` in the editor and type ``typed``; the last keystroke's time."""
    page.focus("#editor")
    page.evaluate(
        """(after) => { const e = document.getElementById('editor'); const i = e.value.indexOf(after) + after.length;
                        e.setSelectionRange(i, i); }""",
        after,
    )
    page.keyboard.type(typed, delay=20)
    return time.perf_counter()


def _shown(page) -> dict:
    return page.evaluate(
        """() => ({ accuracy: document.querySelector('[data-metric=accuracy]').textContent,
                    macro_f1: document.querySelector('[data-metric=macro_f1]').textContent,
                    n: document.querySelector('[data-metric=n]').textContent,
                    confusion: JSON.parse(document.getElementById('confusion').dataset.confusion),
                    shares: [...document.querySelectorAll('#label-distribution tbody tr')].map(
                        (r) => [...r.children].map((c) => c.textContent)),
                    job: document.getElementById('right').dataset.job,
                    editor: document.getElementById('editor').value })"""
    )


def _eval_cli(tmp_path: Path, text: str, data: Path, model: str, size: int, dtype: str = "float32") -> dict:
    tpl, report = tmp_path / "cli.toml", tmp_path / "cli-report.html"
    tpl.write_text(text, encoding="utf-8")
    args = ["eval", str(tpl), str(data), "--limit", str(size), "--report", str(report), "--dtype", dtype]
    assert main(args + (["--model", model] if model else [])) in (0, 1)
    page = report.read_text(encoding="utf-8")
    return json.loads(page.split('id="verbalize-report">', 1)[1].split("</script>", 1)[0])


def _setup(tmp_path: Path, template: str, rows: list[tuple[str, str]]) -> tuple[Path, Path]:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "t.toml").write_text(template, encoding="utf-8")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    return folder, data


@pytest.fixture
def tiny_dir(tmp_path_factory, gpt2_model, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


def test_studio_in_chromium_on_the_tiny_model(tmp_path, gpt2_model, gpt2_tokenizer, tiny_dir, capsys):
    folder, data = _setup(tmp_path, TINY, TINY_ROWS)
    scorer = Scorer(gpt2_model, gpt2_tokenizer)
    with Served(folder, data, scorer, ["none", "contextual"]) as served, Browser(served.url) as browser:
        browser.scorer = scorer
        times = _edit_score_save(
            browser, tmp_path, folder, data, tiny_dir, 'positive = ["good", "positive"', ', "nice"'
        )
        assert browser.blocked == []
    with capsys.disabled():
        print("\nstudio feedback on the tiny model: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()))


def _edit_score_save(
    browser, tmp_path, folder, data, model, after, typed, size=200, after_scored=None
) -> dict[str, float]:
    """The user's path through the page; returns the feedback times. ``after_scored`` is called once the edit's
    evaluation is complete and the studio idle (the slow test times the library in-process there)."""
    path = folder / "t.toml"
    original = path.read_text(encoding="utf-8")
    page = browser.page()
    second_tab = browser.page()  # opened now: it holds the version on disk before the first tab saves
    _wait_done(page)
    first = _shown(page)
    t_key = _type_at(page, after, typed)
    word = typed.strip(', "')
    page.wait_for_function("(w) => document.querySelector('#tokens').textContent.includes(w)", arg=word)
    t_tokens = time.perf_counter()
    t_acc = _wait_done(page, first["job"], ready="none")
    in_page = {"problems": _ms(page, "problems"), "accuracy": _ms(page, "right")}
    _wait_done(page, first["job"])
    if after_scored is not None:
        after_scored()
    shown = _shown(page)
    edited = shown["editor"]
    assert edited == original.replace(after, after + typed)
    cli = _eval_cli(tmp_path, edited, data, model, size)  # `verbalize eval` on the same rows and words
    assert int(shown["n"]) == cli["n"] and shown["confusion"] == cli["confusion"]
    assert shown["accuracy"] == f"{cli['accuracy']:.4f}" and shown["macro_f1"] == f"{cli['macro_f1']:.4f}"
    true_shares = [f"{100 * sum(row) / cli['n']:.1f}%" for row in cli["confusion"]]  # the label distribution table
    assert [r[0] for r in shown["shares"]] == cli["classes"] and [r[1] for r in shown["shares"]] == true_shares
    _check_library(edited, data, cli, size, browser.scorer)
    # going back: undo the edit; the earlier version's numbers come from the cache
    page.focus("#editor")
    t_back_key = time.perf_counter()
    for _ in typed:
        page.keyboard.press("Backspace")
    t_back_key = time.perf_counter()
    t_back = _wait_done(page, shown["job"])
    in_page["back"] = _ms(page, "right")
    assert _shown(page)["job"] == first["job"] and _shown(page)["confusion"] == first["confusion"]
    _invalid_edit_is_not_saved(page, path, original)
    _type_at(page, after, typed)
    _wait_done(page, first["job"], ready="none")
    page.click("#save")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('saved')")
    assert path.read_text(encoding="utf-8") == edited
    assert page.locator("#history li[data-version]").count() == 1
    page.reload()
    page.wait_for_function("(t) => document.getElementById('editor').value === t", arg=edited)
    _stale_save_is_refused(second_tab, path, edited)
    _draft_survives_a_reload(page)
    browser.last_page = page
    return {
        "keystroke to problems and tokens": in_page["problems"],
        "keystroke to accuracy (no calibration)": in_page["accuracy"],
        "back to the earlier version": in_page["back"],
        "(seen by the test: problems)": t_tokens - t_key,
        "(seen by the test: accuracy)": t_acc - t_key,
        "(seen by the test: back)": t_back - t_back_key,
    }


def _ms(page, element: str) -> float:
    """Seconds from the page's last input event to when it showed ``element``'s update (measured in the page)."""
    return float(page.get_attribute(f"#{element}", "data-ms")) / 1000


def _check_library(edited: str, data: Path, cli: dict, size: int, scorer: Scorer) -> None:
    """The library in-process on the same rows gives the predictions ``verbalize eval`` (and the page) showed."""
    rows = labeled_rows(data, None, "label", ["negative", "positive"], size)[0]
    clf = Verbalizer(template=loads_template(edited, "t.toml"), model=scorer)
    pred = [str(clf.classes_[i]) for i in clf.predict_proba([r.text for r in rows]).argmax(axis=1)]
    assert pred == cli["predictions"]


def _invalid_edit_is_not_saved(page, path: Path, original: str) -> None:
    _type_at(page, 'prompt = "Review: {', "x")  # {xtext}: an unknown field
    page.wait_for_selector("#problems li[data-key=prompt]")
    assert page.is_disabled("#save")
    page.keyboard.press("Control+s")  # the keyboard path reaches the server, which refuses too
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('not saved')")
    assert path.read_text(encoding="utf-8") == original
    page.keyboard.press("Backspace")
    page.wait_for_selector("#problems.ok")


def _stale_save_is_refused(tab, path: Path, saved: str) -> None:
    _type_at(tab, 'sample_text = "a', " very")
    tab.wait_for_selector("#problems.ok")
    tab.keyboard.press("Control+s")
    tab.wait_for_function("() => document.getElementById('status').textContent.includes('changed on disk')")
    assert tab.locator("#status.error").count() == 1
    assert path.read_text(encoding="utf-8") == saved


def _draft_survives_a_reload(page) -> None:
    _type_at(page, 'sample_text = "a', " fine")
    page.wait_for_timeout(100)
    page.reload()
    page.wait_for_function("() => document.getElementById('editor').value.includes('a fine')")
    assert "restored your unsaved draft" in page.text_content("#status")


SST2_AFTER, SST2_TYPED = 'positive = ["positive", "good", "great"', ', "fine"'


def _time_predict_proba(text: str, data: Path, scorer: Scorer) -> float:
    """Seconds ``Verbalizer.predict_proba`` takes in-process on the studio's 200 rows, run in a new thread as the
    studio's worker runs (on a loaded 2-core machine torch ran several times slower in the main thread)."""
    texts = [r.text for r in labeled_rows(data, None, "label", ["negative", "positive"], 200)[0]]
    clf = Verbalizer(template=loads_template(text, "t.toml"), model=scorer)
    clf.predict_proba(texts[:2])
    took: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        clf.predict_proba(texts)
        took.append(time.perf_counter() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return took[0]


@pytest.mark.slow
def test_studio_on_sst2_with_the_embedded_model(tmp_path, default_scorer, capsys):
    sst2 = ROOT.parent / "shared" / "data" / "sst2" / "test.jsonl"
    if os.environ.get("VERBALIZE_DATA"):
        sst2 = Path(os.environ["VERBALIZE_DATA"]) / "sst2" / "test.jsonl"
    if not sst2.is_file():
        pytest.skip(f"no SST-2 test data at {sst2}")
    rows = [(r["text"], r["label"]) for r in map(json.loads, sst2.read_text(encoding="utf-8").splitlines()[:200])]
    template = (ROOT / "templates" / "sst2.toml").read_text(encoding="utf-8")
    folder, data = _setup(tmp_path, template, rows)
    edited = template.replace(SST2_AFTER, SST2_AFTER + SST2_TYPED)
    # in-process before the studio starts and again right after it scored the edit (same load on a shared machine)
    in_process = [_time_predict_proba(edited, data, default_scorer)]
    with (
        Served(folder, data, default_scorer, ["none", "contextual", "batch"]) as served,
        Browser(served.url) as browser,
    ):
        browser.scorer = default_scorer
        times = _edit_score_save(
            browser,
            tmp_path,
            folder,
            data,
            "",
            SST2_AFTER,
            SST2_TYPED,
            after_scored=lambda: in_process.append(_time_predict_proba(edited, data, default_scorer)),
        )
        assert browser.blocked == []
        _screenshot(browser.last_page, tmp_path)
    ratio = times["keystroke to accuracy (no calibration)"] / min(in_process)
    with capsys.disabled():
        print(
            "\nstudio feedback, embedded model, 200 SST-2 texts: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in times.items())
        )
        print(
            f"in-process predict_proba (a new thread) on the same 200 texts: {in_process[0]:.3f} s before, "
            f"{in_process[1]:.3f} s "
            f"after; studio / faster in-process = {ratio:.2f} (bar: 1.5)"
        )
    assert times["keystroke to problems and tokens"] <= 1.0
    assert times["back to the earlier version"] <= 0.5


def _screenshot(page, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 1280, "height": 860})
    page.evaluate("() => localStorage.clear()")  # the saved version (its numbers are cached), not the last draft
    page.reload()
    _wait_done(page)
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot), full_page=False)
    size = shot.stat().st_size
    target = ROOT / "docs" / "studio.png"
    copied = size < 200_000 and os.environ.get("VERBALIZE_SCREENSHOT") == "1"  # the README's, when asked for
    if copied:
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
    print(f"\nscreenshot: {shot} ({size} bytes)" + (f", copied to {target}" if copied else ""))


def test_eval_report_opens_offline_in_chromium_with_the_studios_numbers(tmp_path, gpt2_model, gpt2_tokenizer, tiny_dir):
    folder, data = _setup(tmp_path, TINY, TINY_ROWS)
    size = len(TINY_ROWS)
    report = tmp_path / "report.html"
    args = [
        "eval",
        str(folder / "t.toml"),
        str(data),
        "--model",
        tiny_dir,
        "--limit",
        str(size),
        "--report",
        str(report),
        "--dtype",
        "float32",
    ]
    assert main(args) == 0
    served = Served(folder, data, Scorer(gpt2_model, gpt2_tokenizer), ["none"])  # the app, not started
    with TestClient(served.app) as client:
        body = {"name": "t.toml", "text": TINY, "data": "data.jsonl", "size": size}
        job = client.post("/api/evaluate", json=body, headers={"X-Verbalize-Studio": "1"}).json()
        while job["status"] in ("queued", "running"):
            time.sleep(0.02)
            job = client.get(f"/api/evaluate/{job['id']}").json()
    studio = job["results"]["none"]
    with Browser("file://" + str(report)) as browser:  # every request but the file itself is blocked
        page = browser.context.new_page()
        page.goto("file://" + str(report))
        assert page.locator("svg[aria-label='confusion matrix']").is_visible()
        assert page.locator("svg[aria-label='reliability diagram']").is_visible()
        island = json.loads(page.text_content("#verbalize-report"))
        wrong_rows = page.locator("h2:has-text('Wrong texts') + table tr").count() - 1
        cells = {c.get_attribute("data-cell"): int(c.text_content()) for c in page.locator("svg text[data-cell]").all()}
        assert browser.blocked == []
    for key in (
        "n",
        "accuracy",
        "macro_f1",
        "confusion",
        "predictions",
        "per_class",
        "ece",
        "accuracy_ci",
        "macro_f1_ci",
    ):
        assert island[key] == studio[key], key
    assert wrong_rows == island["n_errors"] > 0
    assert cells == {f"{i},{j}": v for i, row in enumerate(studio["confusion"]) for j, v in enumerate(row)}
