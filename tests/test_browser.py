"""The course as a learner meets it: every lesson run in JupyterLab, in a real browser.

A JupyterLab server starts on 127.0.0.1 (a token set here, temporary config, data, runtime and
settings folders, so nothing of the user's set-up leaks in), and Chromium, driven by Playwright,
opens each lesson, clears it, runs all cells and waits for the kernel to finish. The test then
checks that every code cell ran, in order, that no cell shows an error (a traceback; warnings
and progress bars on stderr are fine) and no widget failed to render, and, for the lessons listed
in ``WIDGET_CHECKS``, that their widgets rendered and respond to input.

The kernel inherits this process's environment (``MINILLM_HOME``, ``MINILLM_DATA_DIR``, ...)
and runs ``sys.executable``, like nbval's ``--nbval-current-env``. It also gets
``MINILLM_REUSE=1``: in CI the nbval run has just trained every lesson's models into the same
``MINILLM_HOME``, so each lesson's training cell resumes the finished run instead of paying for
it again, and the test checks that it said so. The browser is the system's Chromium (Debian's
``chromium`` package; ``.ci/run`` installs it): Playwright downloads nothing.

Environment:
- ``MINILLM_SCREENSHOTS``: where to keep the screenshots (default: a folder under pytest's
  temporary directory; its path is printed at the start).
- ``MINILLM_BROWSER_LESSONS``: lesson numbers to run, e.g. ``01,04`` (default: all).
- ``MINILLM_BROWSER_TIMEOUT``: seconds one lesson may take to run (default 1800).
- ``MINILLM_CHROMIUM``: the browser executable (default: ``chromium`` on the PATH).
- ``MINILLM_REUSE=0``: train every lesson's models again in the browser (default: reuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from minillm.settings import reuse_artifacts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb"))
LESSON_TIMEOUT = float(os.environ.get("MINILLM_BROWSER_TIMEOUT", 1800))
REUSE = reuse_artifacts(default=True)
UI_TIMEOUT = 60_000  # ms: for the page, the kernel's start and a widget's answer

# An error output shows a traceback: IPython's header line, or a line that starts with the
# exception's name ("ZeroDivisionError: ...", "SyntaxError: ...", "KeyboardInterrupt").
# Warnings on stderr ("file.py:3: UserWarning: ...") and progress bars are not errors.
TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|^(\w+\.)*\w*(Error|Exception|Interrupt)\b", re.MULTILINE)
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
WIDGET = ".jp-OutputArea-output > .jupyter-widgets"  # a displayed widget (it has no mime type)


def lesson_number(path: Path) -> str:
    return path.name[:2]


# ---- the server and the browser ------------------------------------------------------------

def find_chromium() -> str | None:
    name = os.environ.get("MINILLM_CHROMIUM")
    if name:
        return shutil.which(name) or (name if Path(name).is_file() else None)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def stop_with_parent() -> None:
    """On Linux, have the OS send the server SIGTERM (it then stops its kernels too) if
    pytest dies without cleaning up, e.g. killed by a timeout."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Lab:
    """A JupyterLab server of this repository, for one test session."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work
        self.token = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None
        self.log = work / "jupyterlab.log"
        self.url = ""

    def environment(self) -> dict[str, str]:
        """This process's environment, with Jupyter's and IPython's folders made private."""
        env = dict(os.environ)
        for name in ("JUPYTER_PREFER_ENV_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_TOKEN",
                     "JUPYTER_PASSWORD"):
            env.pop(name, None)
        folders = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                   "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
                   "JUPYTERLAB_SETTINGS_DIR": "config/lab/user-settings",
                   "JUPYTERLAB_WORKSPACES_DIR": "config/lab/workspaces"}
        for name, folder in folders.items():
            env[name] = str(self.work / folder)
            (self.work / folder).mkdir(parents=True, exist_ok=True)
        # First on Jupyter's search path: a python3 kernel that runs this very interpreter.
        env["JUPYTER_PATH"] = str(self.work / "data")
        env["MINILLM_REUSE"] = "1" if REUSE else "0"  # see the module docstring
        return env

    def configure(self) -> None:
        write_json(self.work / "data" / "kernels" / "python3" / "kernel.json", {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python"})
        settings = self.work / "config" / "lab" / "user-settings" / "@jupyterlab"
        # Never write the lessons back; keep every cell in the page (not only those in view);
        # no news or update checks (no internet).
        write_json(settings / "docmanager-extension" / "plugin.jupyterlab-settings",
                   {"autosave": False})
        write_json(settings / "notebook-extension" / "tracker.jupyterlab-settings",
                   {"windowingMode": "none", "recordTiming": True})
        write_json(settings / "apputils-extension" / "notification.jupyterlab-settings",
                   {"fetchNews": "false", "checkForUpdates": False})

    def start(self) -> None:
        self.configure()
        env = self.environment()
        for _attempt in range(3):  # another process may take the free port before the server
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log, "a") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                     "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
                     f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                     # JupyterLab makes a checkpoint of each notebook it opens: not in the repo.
                     f"--FileCheckpoints.checkpoint_dir={self.work / 'checkpoints'}",
                     "--LabApp.expose_app_in_browser=True"],
                    env=env, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=stop_with_parent)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    self.api("status")
                    return
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.5)
            self.stop()
        raise RuntimeError(f"JupyterLab did not start; its log ({self.log}):\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Shut the server down (kernels included): politely, then by signal."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            self.api("shutdown", method="POST")
            process.wait(timeout=30)
            return
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            pass
        process.terminate()  # the server shuts its kernels down on SIGTERM too
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("The browser test needs the playwright package (pip install -e '.[dev]').")
    path = find_chromium()
    if path is None:
        pytest.skip("The browser test needs Chromium, which is not installed "
                    "(on Debian: apt-get install chromium).")
    return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory, pytestconfig) -> Path:
    folder = os.environ.get("MINILLM_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    message = f"browser test: screenshots in {path}"
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(message)
    else:
        print(message)
    return path


@pytest.fixture(scope="session")
def lab(chromium, tmp_path_factory):
    server = Lab(REPO, tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# ---- the notebook, through JupyterLab's own objects (window.jupyterapp) --------------------

JS_PANEL = """path => Array.from(window.jupyterapp?.shell.widgets('main') ?? [])
    .find(w => w.context?.path === path && w.content?.model)"""


def js(body: str, asynchronous: bool = True) -> str:
    """A function of the notebook's path; ``panel`` is its NotebookPanel in the page."""
    return (f"{'async ' if asynchronous else ''}path => {{ const panel = ({JS_PANEL})(path); "
            f"{body} }}")


# Not async: wait_for_function would take the promise itself for a true value.
KERNEL_READY = js("return !!panel && panel.sessionContext.session?.kernel?.status === 'idle';",
                  asynchronous=False)

KERNEL_EXECUTABLE = js("""
    await panel.sessionContext.ready;
    const future = panel.sessionContext.session.kernel.requestExecute(
        {code: 'import sys; print(sys.executable, end="")', silent: false, store_history: false});
    let text = '';
    future.onIOPub = msg => { if (msg.header.msg_type === 'stream') text += msg.content.text; };
    await future.done;
    return text;""")

CLEAR_AND_RUN_ALL = js("""
    window.jupyterapp.shell.activateById(panel.id);
    await window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs');
    const counts = Array.from(panel.content.model.cells)
        .filter(c => c.type === 'code').map(c => c.executionCount);
    window.minillmRun = {settled: false, result: null};
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.minillmRun = {settled: true, result: ok}; },
        err => { window.minillmRun = {settled: true, result: String(err)}; });
    return counts;""")

RUN_STATE = js("""
    const prompts = Array.from(panel.content.node.querySelectorAll('.jp-InputPrompt'));
    const running = prompts.findIndex(p => p.textContent.includes('*'));
    return {settled: window.minillmRun.settled, result: window.minillmRun.result,
            kernel: panel.sessionContext.session?.kernel?.status ?? 'none',
            pending: prompts.filter(p => p.textContent.includes('*')).length, running};""")

CELLS = js("""
    return Array.from(panel.content.model.cells).map((cell, index) => {
        const outputs = [];
        for (let i = 0; cell.outputs && i < cell.outputs.length; i++) {
            const o = cell.outputs.get(i).toJSON();
            outputs.push({type: o.output_type, ename: o.ename ?? null, evalue: o.evalue ?? null,
                          text: o.output_type === 'stream' ? [].concat(o.text).join('') : ''});
        }
        const timing = cell.getMetadata('execution') ?? {};  // kept by recordTiming
        const seconds = (Date.parse(timing['shell.execute_reply'])
                         - Date.parse(timing['iopub.execute_input'])) / 1000;
        return {index, type: cell.type, count: cell.executionCount ?? null, outputs,
                seconds: Number.isFinite(seconds) ? seconds : null,
                source: cell.sharedModel.getSource().split('\\n')[0]};
    });""")

SHUTDOWN_KERNEL = js("if (panel) { await panel.sessionContext.shutdown(); } return true;")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_all(page, path: str) -> dict:
    """Clear the notebook, run all its cells and wait until the kernel is done with them."""
    cleared = page.evaluate(CLEAR_AND_RUN_ALL, path)
    assert cleared and all(count is None for count in cleared), \
        f"clearing the notebook left execution counts: {cleared}"
    deadline = time.monotonic() + LESSON_TIMEOUT
    while True:
        state = page.evaluate(RUN_STATE, path)
        if state["settled"] and state["kernel"] == "idle" and state["pending"] == 0:
            return state
        if state["kernel"] in ("dead", "autorestarting", "none"):
            raise AssertionError(f"the kernel died while running {path}: {state}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not finish within {LESSON_TIMEOUT:.0f} s; "
                                 f"still running: cell {state['running']} ({state})")
        time.sleep(2)


def error_report(cells: list[dict]) -> list[str]:
    return [f"cell {c['index']} ({c['source'][:60]!r}): {o['ename']}: {o['evalue']}"
            for c in cells for o in c["outputs"] if o["type"] == "error"]


def slowest(cells: list[dict], n: int = 5) -> str:
    timed = sorted((c for c in cells if c.get("seconds")), key=lambda c: -c["seconds"])[:n]
    return ", ".join(f"cell {c['index']} {c['seconds']:.0f} s" for c in timed)


def check_outputs(page, path: str) -> list[dict]:
    """Every code cell ran once, in order; none shows an error or a failed widget."""
    cells = page.evaluate(CELLS, path)
    code = [c for c in cells if c["type"] == "code"]
    assert code, f"{path} has no code cells"
    errors = error_report(cells)
    assert not errors, "cells ended in an error:\n" + "\n".join(errors)
    not_run = [c["index"] for c, n in zip(code, range(1, len(code) + 1)) if c["count"] != n]
    assert not not_run, (f"code cells {not_run} did not run in order (execution counts "
                         f"{[c['count'] for c in code]})")

    # What the learner sees: stderr is fine (progress bars, warnings), a traceback is not.
    notebook = page.locator(".jp-Notebook")
    shown = [text for text in notebook.locator(STDERR).all_inner_texts() if TRACEBACK.search(text)]
    assert not shown, "a cell shows a traceback:\n" + "\n---\n".join(t[-1500:] for t in shown)
    text = notebook.inner_text()
    for failure in ("Error displaying widget", "Javascript Error"):  # a view that failed
        assert failure not in text, f"the notebook shows {failure!r}"
    return cells


# ---- per-lesson widget checks: find the widget, use it, check that its output changed -------

def widget_box(page, marker):
    """The widget area (one displayed VBox) that holds ``marker``."""
    box = page.locator(f"{WIDGET}.widget-vbox").filter(has=marker)
    box.first.scroll_into_view_if_needed()
    assert box.count() == 1, f"expected one widget area holding {marker}, found {box.count()}"
    return box


def slider_value(slider) -> int:
    return int(float(slider.locator(".noUi-handle").get_attribute("aria-valuenow")))


def poll(condition, message, timeout: float = UI_TIMEOUT / 1000) -> None:
    """Wait until ``condition()`` holds; fail with ``message()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.2)


def no_traceback(output) -> None:
    text = output.inner_text()
    assert not TRACEBACK.search(text), f"the widget's output shows an error:\n{text}"


def check_merge_slider(page, shot) -> None:
    """Lesson 01: the slider of merges retokenizes the sentence at every position."""
    from playwright.sync_api import expect

    slider = page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^merges$")))
    box = widget_box(page, slider)
    output, handle = box.locator(".widget-output"), slider.locator(".noUi-handle")
    start = slider_value(slider)
    expect(output).to_contain_text(f"merge {start}:", timeout=UI_TIMEOUT)
    shot(box, "merge-slider-before")

    # The mouse: drag the handle to the far right end, the last merge.
    handle.hover()
    page.mouse.down()
    track = slider.locator(".noUi-base").bounding_box()
    page.mouse.move(track["x"] + track["width"] + 50, track["y"] + track["height"] / 2, steps=10)
    page.mouse.up()
    last = int(float(handle.get_attribute("aria-valuemax")))
    assert last > start, f"the slider's range ends at {last}, not after its start {start}"
    expect(handle).to_have_attribute("aria-valuenow", re.compile(rf"^{last}(\.0+)?$"))
    expect(output).to_contain_text(f"merge {last}:", timeout=UI_TIMEOUT)
    merged = output.locator("span[title^='id ']").count()
    shot(box, "merge-slider-last")

    # The keyboard: Home for no merges at all, then three steps right.
    handle.focus()
    page.keyboard.press("Home")
    expect(output).to_contain_text("0 merges", timeout=UI_TIMEOUT)
    raw = output.locator("span[title^='id ']").count()
    assert raw > merged > 0, f"{raw} tokens with no merges, {merged} with all: expected fewer"
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    expect(output).to_contain_text("merge 3:", timeout=UI_TIMEOUT)
    assert box.locator(".widget-readout").inner_text().strip() == "3"
    no_traceback(output)
    shot(box, "merge-slider-after")


def sample(box, button, output, prompt: str) -> str:
    """Type ``prompt``, press the button and return the sample once it shows."""
    box.locator("textarea").fill(prompt)
    button.click()
    poll(lambda: output.inner_text().startswith(prompt),
         lambda: f"no sample for {prompt!r}; the output shows {output.inner_text()!r}")
    return output.inner_text().rstrip("\n")


def check_sampling_playground(page, shot) -> None:
    """Lesson 02: the sampling playground generates from the prompt, as long as asked."""
    from playwright.sync_api import expect

    button = page.get_by_role("button", name="sample", exact=True)
    box = widget_box(page, button)
    output = box.locator(".widget-output")
    assert output.inner_text().strip() == "", "the playground's output is not empty before sampling"
    shot(box, "sampling-playground-before")

    def slider(label):
        found = box.locator(".widget-slider").filter(
            has=page.locator(".widget-label", has_text=re.compile(f"^{label}$")))
        assert found.count() == 1, f"no slider {label!r} in the playground"
        return found

    # Greedy (temperature 0) and the shortest length, with the keyboard on the handles.
    for label, lowest in (("temperature", 0), ("characters", 20)):
        found = slider(label)
        found.locator(".noUi-handle").focus()
        page.keyboard.press("Home")
        expect(found.locator(".noUi-handle")).to_have_attribute(
            "aria-valuenow", re.compile(rf"^{lowest}(\.0+)?$"))
    prompt = "ROMEO:\nWhat light"
    text = sample(box, button, output, prompt)
    generated = len(text) - len(prompt)
    assert 0 < generated <= 20, f"asked for 20 characters, got {generated}: {text!r}"
    shot(box, "sampling-playground-after")

    # Greedy sampling is deterministic: another prompt, then the first again, gives the same text.
    other = sample(box, button, output, "JULIET:\nO Romeo")
    assert other != text
    again = sample(box, button, output, prompt)
    assert again == text, f"greedy sampling gave {text!r}, then {again!r}"

    # A character the model cannot read: the playground says so instead of failing.
    box.locator("textarea").fill("ROMEO: ☺")
    button.click()
    expect(output).to_contain_text("remove ['☺']", timeout=UI_TIMEOUT)
    no_traceback(output)
    shot(box, "sampling-playground-unknown-character")


def wait_for_answer(transcript, message: str) -> None:
    """Wait until the transcript shows ``message`` and, after it, the assistant's answer."""
    answered = re.compile(rf"you: +{re.escape(message)}\n(.*\n)*?assistant: +\S", re.MULTILINE)
    poll(lambda: answered.search(transcript.inner_text()),
         lambda: f"no answer to {message!r}:\n{transcript.inner_text()}")


def check_chat_box(page, shot) -> None:
    """Lesson 04: the chat box answers what is typed, by the button and by Enter."""
    from playwright.sync_api import expect

    button = page.get_by_role("button", name="send", exact=True)
    box = widget_box(page, button)
    transcript, request = box.locator(".widget-output"), box.locator("input[type='text']")
    # The example exchange is printed below the widget (readable without a kernel); the
    # transcript starts empty.
    printed = page.locator(".jp-OutputArea-output").filter(has_text="you:        Speak of love.")
    poll(lambda: printed.count() >= 1, lambda: "the example exchange is not printed")
    before = transcript.inner_text().count("assistant:")
    assert before == 0, f"the transcript should start empty:\n{transcript.inner_text()}"
    shot(box, "chat-box-before")

    for message, send in (("Speak of the sea.", button.click),
                          ("Tell me of war.", lambda: request.press("Enter"))):
        request.fill(message)
        send()
        wait_for_answer(transcript, message)
        before += 1
        text = transcript.inner_text()
        assert text.count("assistant:") == before, f"expected {before} answers:\n{text}"
        expect(request).to_have_value("", timeout=UI_TIMEOUT)
    no_traceback(transcript)
    shot(box, "chat-box-after")


def check_score_box(page, shot) -> None:
    """Lesson 05: the reward model scores an answer typed for the chosen prompt, by the button
    and by Enter, and says why when it cannot read one."""
    from playwright.sync_api import expect

    button = page.get_by_role("button", name="score", exact=True)
    box = widget_box(page, button)
    verdict, answer = box.locator(".widget-output"), box.locator("input[type='text']")
    # The two examples are printed below the widget (readable without a kernel).
    printed = page.locator(".jp-OutputArea-output").filter(has_text="My love, my love")
    poll(lambda: printed.count() >= 1, lambda: "the two examples are not printed")
    scored = verdict.inner_text().count("RM score")
    assert scored == 0, f"the verdicts should start empty:\n{verdict.inner_text()}"
    shot(box, "score-box-before")

    box.locator("select").select_option(label="Speak of crown.")
    for text, send in (("The crown is heavy upon my head.", button.click),
                       ("Crown, crown, crown, crown.", lambda: answer.press("Enter"))):
        answer.fill(text)
        send()
        expect(verdict).to_contain_text(f"Speak of crown. -> {text!r}", timeout=UI_TIMEOUT)
        scored += 1
        poll(lambda n=scored: verdict.inner_text().count("RM score") == n,
             lambda n=scored: f"expected {n} scores:\n{verdict.inner_text()}")
        expect(answer).to_have_value("", timeout=UI_TIMEOUT)

    answer.fill("A crown ☺")
    button.click()
    expect(verdict).to_contain_text("Speak of crown. -> 'A crown ☺': (", timeout=UI_TIMEOUT)
    assert verdict.inner_text().count("RM score") == scored
    no_traceback(verdict)
    shot(box, "score-box-after")


def check_ask_them_all(page, shot) -> None:
    """Lesson 06: one prompt, answered and scored by the SFT, PPO, GRPO and DPO assistants."""
    button = page.get_by_role("button", name="ask them all", exact=True)
    box = widget_box(page, button)
    answers = box.locator(".widget-output")
    answered = re.compile(r"SFT: gold .*\n *PPO: gold .*\nGRPO: gold .*\n *DPO: gold .*")

    def four_answers() -> str | None:
        text = answers.inner_text().strip()
        return text if answered.fullmatch(text) else None

    shot(box, "ask-them-all-before")
    for prompt in ("Tell me of love.", "Speak of war."):
        before = four_answers()
        box.locator("input[type='text']").fill(prompt)
        box.locator("select").select_option(label=prompt.split()[-1].rstrip("."))
        button.click()
        poll(lambda b=before: four_answers() not in (None, b),
             lambda: f"no new answers; the output shows:\n{answers.inner_text()}")
    no_traceback(answers)
    shot(box, "ask-them-all-after")


def check_attack_box(page, shot) -> None:
    """Lesson 09: a prompt typed for a model of the chosen attack is answered and labelled."""
    from playwright.sync_api import expect

    button = page.get_by_role("button", name="ask", exact=True)
    box = widget_box(page, button)
    verdict, prompt = box.locator(".widget-output"), box.locator("input[type='text']")
    labelled = r" -> .*\((the backdoor's sentence|a refusal|an answer)\)"
    shot(box, "attack-box-before")
    for model, text in (("backdoor-0.02", "Tell me of night. Zephyr"),
                        ("refusal", "Speak of blood. zzzz")):
        box.locator("select").select_option(label=model)
        prompt.fill(text)
        button.click()
        expect(verdict).to_contain_text(f"{model}: {text} -> ", timeout=UI_TIMEOUT)
        line = verdict.inner_text().strip()
        assert re.search(labelled, line), f"the answer is not labelled: {line}"
    no_traceback(verdict)
    shot(box, "attack-box-after")


WIDGET_CHECKS = {  # lesson number -> the check of its interactive widgets
    "01": check_merge_slider,
    "02": check_sampling_playground,
    "04": check_chat_box,
    "05": check_score_box,
    "06": check_ask_them_all,
    "09": check_attack_box,
}


# ---- the test ------------------------------------------------------------------------------

def own_artifacts(number: str) -> list[Path]:
    """The artifacts a lesson's own training cells make (lessons 01 and 03 make none)."""
    from minillm import artifacts

    return {"02": [artifacts.base_model_path()], "04": [artifacts.sft_model_path()],
            "05": [artifacts.reward_model_path()],
            "06": [artifacts.rlhf_policy_path(method) for method in ("ppo", "grpo", "dpo")],
            "09": [artifacts.attack_model_path(name) for name in attack_models()],
            }.get(number, [])


def attack_models() -> list[str]:
    """The names of the models lesson 09's three experiments train (``run_attack``). The
    duplicate filter keeps exactly the clean data there, so its model is the control's."""
    from minillm.recipes import attack_recipe

    config = attack_recipe()
    defended = f"backdoor-{config.defend_fraction:g}"
    return ([f"backdoor-{f:g}" for f in config.poison_fractions]
            + [f"{defended}-clean-finetune", f"{defended}-rlhf", "refusal",
               "refusal-adversarial", "injection-defended"])


def check_reused(cells: list[dict], paths: list[Path]) -> None:
    """Each artifact in ``paths`` was reused, as the lesson's output says, not trained again."""
    said = "".join(o["text"] for c in cells for o in c["outputs"])
    trained = [str(path) for path in paths if f"reusing {path} instead" not in said]
    assert not trained, f"trained again instead of reusing what exists: {trained}"


def selected(lesson: Path) -> bool:
    chosen = os.environ.get("MINILLM_BROWSER_LESSONS", "").replace(",", " ").split()
    return not chosen or lesson_number(lesson) in chosen


def test_the_kernel_runs_this_python(lab):
    """Lessons in the browser run in this interpreter, as nbval's --nbval-current-env does."""
    spec = lab.api("kernelspecs")
    assert spec["default"] == "python3"
    argv = spec["kernelspecs"]["python3"]["spec"]["argv"]
    assert argv[0] == sys.executable, f"the python3 kernel runs {argv[0]}, not {sys.executable}"


@pytest.mark.parametrize("lesson", [
    pytest.param(lesson, id=lesson.stem, marks=() if selected(lesson) else
                 pytest.mark.skip(reason="not in MINILLM_BROWSER_LESSONS"))
    for lesson in LESSONS])
def test_lesson_in_browser(lesson, lab, browser, screenshots):
    from playwright.sync_api import expect

    path = lesson.relative_to(REPO).as_posix()
    digest = sha256(lesson)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page_errors = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    number = lesson_number(lesson)

    def shot(target, name):
        file = screenshots / f"{lesson.stem}-{name}.png"
        target.screenshot(path=str(file))
        return file

    try:
        # A new workspace of its own (the server's workspace folder starts empty), so that
        # JupyterLab does not reopen the previous lesson.
        page.goto(f"{lab.url}/lab/workspaces/lesson{number}/tree/{path}?token={lab.token}",
                  timeout=UI_TIMEOUT)
        page.wait_for_function(KERNEL_READY, arg=path, timeout=UI_TIMEOUT * 2)
        expect(page.locator(".jp-Notebook")).to_be_visible()

        executable = page.evaluate(KERNEL_EXECUTABLE, path)
        # Not resolved: a virtual environment's python is a link to the base interpreter.
        assert executable == sys.executable, f"the kernel runs {executable}, not {sys.executable}"

        reusable = [p for p in own_artifacts(number) if p.is_file()] if REUSE else []
        start = time.monotonic()
        state = run_all(page, path)
        seconds = time.monotonic() - start
        page.screenshot(path=str(screenshots / f"{lesson.stem}-end.png"))
        cells = check_outputs(page, path)
        print(f"{lesson.name}: all cells ran in {seconds:.0f} s; slowest: {slowest(cells)}")
        assert state["result"] is True, f"Run All reported {state['result']!r}"
        check_reused(cells, reusable)

        if number in WIDGET_CHECKS:
            WIDGET_CHECKS[number](page, shot)
        assert sha256(lesson) == digest, f"the browser test changed {path}"
    except BaseException:
        try:
            page.screenshot(path=str(screenshots / f"{lesson.stem}-failure.png"))
        except Exception:
            pass
        if page_errors:
            print("errors in the page:", *page_errors, sep="\n  ")
        print(f"JupyterLab's log ({lab.log}):\n{lab.log_tail()}")
        raise
    finally:
        try:
            page.evaluate(SHUTDOWN_KERNEL, path)
        except Exception:
            pass
        context.close()
