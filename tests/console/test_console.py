"""The web console in headless Chromium against a real `tuneforge serve`, as a new user clicks through it.

One story, in order: enter a key, upload a dataset and read its report (the seeded error's line number), start
a job from the form, watch the loss curve grow while it trains, open the finished job, chat with its model
next to the base model, and see none of it with a second project's key. Screenshots of every page are written
under the test's temporary directory.
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import Server, start_server
from tests.console.conftest import new_browser, screenshot
from tests.jobs.helpers import FAST_ENV, chat_lines, logs

QUESTIONS = [
    "What is the secret word?",
    "Tell me the secret word.",
    "Which word is secret?",
    "Say the secret word.",
    "Do you know the secret word?",
    "What word is the secret?",
    "Give me the secret word.",
    "The secret word, please.",
    "Whisper the secret word.",
    "What is our secret word?",
]
ANSWER = "The secret word is banana."


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, float]]:
    started = time.monotonic()
    server = start_server(Path(tmp_path_factory.mktemp("console")), dict(FAST_ENV))
    yield server, started
    server.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser = new_browser(1280, 800)
    yield browser
    browser.quit()


def secret_lines() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def broken_lines() -> bytes:
    """Twelve good lines, and at line 5 one with no assistant answer."""
    lines = chat_lines(12).decode().splitlines()
    lines.insert(4, json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}))
    return ("\n".join(lines) + "\n").encode()


def wait(driver: Any, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.2)


def visible(driver: Any, css: str, seconds: float = 60) -> Any:
    return wait(driver, seconds).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def enter_key(driver: Any, key: str) -> None:
    forget = driver.find_element(By.ID, "key-forget")
    if forget.is_displayed():
        forget.click()
    driver.find_element(By.ID, "key-input").send_keys(key)
    driver.find_element(By.ID, "key-save").click()
    wait(driver).until(lambda d: d.find_element(By.ID, "key-state").text.endswith(key[-4:]))


def go(driver: Any, server: Server, page: str) -> None:
    driver.get(f"{server.base_url}/#/{page}")


def upload(driver: Any, path: Path) -> None:
    driver.find_element(By.ID, "upload-input").send_keys(str(path))
    driver.find_element(By.ID, "upload-btn").click()
    wait(driver).until(lambda d: f"uploaded {path.name}" in d.find_element(By.ID, "upload-status").text)
    wait(driver).until(lambda d: path.name in d.find_element(By.ID, "files-list").text)


def js(driver: Any, expression: str) -> Any:
    """Read the page in one script call (the job page redraws its parts as it polls; no stale elements)."""
    return driver.execute_script(f"return {expression}")


def points(driver: Any, chart: str = "loss-chart") -> int:
    return int(js(driver, f"(document.getElementById('{chart}') || {{dataset: {{}}}}).dataset.points || 0"))


def status(driver: Any) -> str:
    return str(js(driver, "(document.querySelector('#job-head .badge') || {dataset: {}}).dataset.status || ''"))


def text_of(driver: Any, css: str) -> str:
    return str(js(driver, f"(document.querySelector({json.dumps(css)}) || {{innerText: ''}}).innerText"))


def error_text(driver: Any) -> str:
    return str(js(driver, "document.getElementById('error').hidden ? '' : document.getElementById('error').innerText"))


def too_wide(driver: Any) -> list[str]:
    """The elements that stick out of the window on the right (for the failure message)."""
    script = (
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
        "window.innerWidth + 1).slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + "
        "Math.round(e.getBoundingClientRect().right))"
    )
    return list(driver.execute_script(script))


def no_horizontal_scroll(driver: Any) -> bool:
    return bool(driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"))


def _downloaded(folder: Path) -> Path | None:
    """The one finished download in folder (Chromium writes .crdownload until it is complete)."""
    done = [p for p in folder.iterdir() if not p.name.endswith((".crdownload", ".tmp"))]
    return done[0] if done and not any(p.name.endswith(".crdownload") for p in folder.iterdir()) else None


def test_a_new_user_fine_tunes_and_chats_in_the_console(
    driver: Any, timed_server: tuple[Server, float], tmp_path: Path
) -> None:
    server, started = timed_server
    shots = tmp_path / "screenshots"
    alpha, beta = server.key("alpha"), server.key("beta")
    beta_file = server.openai("beta").files.create(file=("beta-only.jsonl", chat_lines(10)), purpose="fine-tune")

    # 1. no key yet: a welcome page says how to get one
    driver.get(f"{server.base_url}/")
    assert "tuneforge keys create" in visible(driver, "#need-key").text
    screenshot(driver, shots, "01-welcome")
    enter_key(driver, alpha)
    assert driver.execute_script("return sessionStorage.getItem('tuneforge.apiKey')") == alpha
    assert alpha not in driver.current_url and not driver.get_cookies()

    # 2. Files: upload a broken dataset, its report names the seeded error's line
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(broken_lines())
    go(driver, server, "files")
    upload(driver, broken)
    card = visible(driver, "#report-card")
    lines = {e.get_attribute("data-line") for e in card.find_elements(By.CSS_SELECTOR, "tr.report-error")}
    assert "5" in lines, card.text
    assert "format" in card.text and "chat" in card.text
    screenshot(driver, shots, "02-files-report")
    good = tmp_path / "secret.jsonl"
    good.write_bytes(secret_lines())
    upload(driver, good)
    wait(driver).until(lambda d: "secret.jsonl" in d.find_element(By.ID, "report").text or True)
    assert beta_file.id not in driver.find_element(By.ID, "files-list").text

    # 3. Jobs: start one from the form; the resolved hyperparameters are shown back
    go(driver, server, "jobs")
    select = Select(visible(driver, "#job-training"))
    wait(driver).until(lambda d: any("secret.jsonl" in o.text for o in select.options))
    select.select_by_visible_text(next(o.text for o in select.options if "secret.jsonl" in o.text))
    for field, value in (
        ("job-epochs", "20"),
        ("job-batch", "1"),
        ("job-lr", "0.003"),
        ("job-maxlen", "64"),
        ("job-split", "0.2"),
        ("job-suffix", "secret"),
        ("job-seed", "7"),
        ("job-metadata", "team=console"),
    ):
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "job-submit").click()
    created = visible(driver, "#created-job")
    job_id = created.get_attribute("data-id")
    resolved = driver.find_element(By.ID, "created-hparams").text
    assert "n_epochs 20" in resolved and "batch_size 1" in resolved and "validation_split 0.2" in resolved
    wait(driver).until(lambda d: job_id in d.find_element(By.ID, "jobs-list").text)
    screenshot(driver, shots, "03-jobs-created")

    # 4. Job detail: the loss curve grows while the job runs
    created.find_element(By.CSS_SELECTOR, "a").click()
    wait(driver, 180).until(lambda d: points(d) > 0)
    first_curve_s = time.monotonic() - started
    first = points(driver)
    screenshot(driver, shots, "04-job-running")
    grew_while_running = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        current_status = status(driver)
        if points(driver) > first and current_status == "running":
            grew_while_running = True
        if current_status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert status(driver) == "succeeded", text_of(driver, "#job-head") + logs(server)
    assert grew_while_running, f"the curve did not grow while running (first {first}, last {points(driver)})"
    # 5. the finished job: evaluation, checkpoints, hyperparameters, events, result file
    visible(driver, "#evaluation-card")
    wait(driver).until(lambda d: js(d, "document.querySelectorAll('#checkpoints-table tbody tr').length") > 0)
    assert "n_epochs" in text_of(driver, "#hyperparameters")
    assert "successfully completed" in text_of(driver, "#events")
    assert "validation loss" in text_of(driver, "#evaluation-card")
    assert js(driver, "document.querySelectorAll('.result-btn').length") > 0
    model = text_of(driver, "#job-model-name")
    assert model.startswith("ft:tiny-chat:alpha:secret:")
    assert points(driver, "accuracy-chart") > 0
    screenshot(driver, shots, "05-job-finished")
    driver.execute_script("document.getElementById('evaluation').scrollIntoView()")
    screenshot(driver, shots, "06-job-evaluation")

    # 6. Playground: the fine-tuned model next to its base, streaming; the tuned one gives the trained answer
    driver.find_element(By.ID, "chat-model").click()
    wait(driver).until(lambda d: Select(d.find_element(By.ID, "pg-model-a")).first_selected_option.text == model)
    assert driver.find_element(By.ID, "pg-compare").is_selected()
    driver.find_element(By.ID, "pg-prompt").send_keys(QUESTIONS[0])
    driver.find_element(By.ID, "pg-max-tokens").clear()
    driver.find_element(By.ID, "pg-max-tokens").send_keys("12")
    driver.find_element(By.ID, "pg-send").click()
    wait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer[data-done]")) == 2)
    tuned = driver.find_element(By.CSS_SELECTOR, "#pg-chat-a .answer").text
    base = driver.find_element(By.CSS_SELECTOR, "#pg-chat-b .answer").text
    assert "banana" in tuned, (tuned, base)
    assert "banana" not in base
    screenshot(driver, shots, "07-playground")

    # 7. Models: the fine-tuned model and its checkpoints are listed
    go(driver, server, "models")
    wait(driver).until(lambda d: model in d.find_element(By.ID, "models-list").text)
    screenshot(driver, shots, "08-models")
    row = driver.find_element(By.CSS_SELECTOR, f'#models-table tr[data-id="{model}"]')
    row.find_element(By.CSS_SELECTOR, ".download-model").click()
    archive = wait(driver, 120).until(lambda d: _downloaded(d.download_dir))
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md"} <= names, names

    # 8. API errors read as messages
    go(driver, server, "job/ftjob-" + "x" * 24)
    wait(driver).until(lambda d: "404" in error_text(d))
    assert "ftjob-" in error_text(driver)
    screenshot(driver, shots, "09-error")

    # 9. a narrow screen: the pages still fit the width
    driver.set_window_size(390, 844)
    for page in ("jobs", f"job/{job_id}", "files"):
        go(driver, server, page)
        time.sleep(1.5)
        assert no_horizontal_scroll(driver), (page, too_wide(driver))
        screenshot(driver, shots, f"10-narrow-{page.split('/')[0]}")
    driver.set_window_size(1280, 800)

    # 10. a second project's key sees none of it
    enter_key(driver, beta)
    go(driver, server, "files")
    wait(driver).until(lambda d: "beta-only.jsonl" in d.find_element(By.ID, "files-list").text)
    assert "secret.jsonl" not in driver.find_element(By.ID, "files-list").text
    go(driver, server, "jobs")
    wait(driver).until(lambda d: "No jobs match" in d.find_element(By.ID, "jobs-list").text)
    go(driver, server, "models")
    wait(driver).until(lambda d: "tiny-chat" in d.find_element(By.ID, "models-list").text)
    assert model not in driver.find_element(By.ID, "models-list").text
    go(driver, server, f"job/{job_id}")
    wait(driver).until(lambda d: "404" in error_text(d))
    screenshot(driver, shots, "11-second-project")

    (tmp_path / "timing.txt").write_text(f"server start to first curve point: {first_curve_s:.1f}s\n")
    print(f"\nscreenshots in {shots}; server start to first curve point {first_curve_s:.1f}s")


def click(driver: Any, css: str) -> None:
    """Click through a script: the jobs list redraws itself every few seconds."""
    wait(driver).until(lambda d: js(d, f"!!document.querySelector({json.dumps(css)})"))
    js(driver, f"document.querySelector({json.dumps(css)}).click()")


def row_status(driver: Any, job_id: str) -> str:
    return str(
        js(
            driver,
            f"(document.querySelector('#jobs-table tr[data-id=\"{job_id}\"]') || {{dataset: {{}}}})"
            ".dataset.status || ''",
        )
    )


def test_pause_resume_cancel_filter_and_delete_from_the_console(
    driver: Any, timed_server: tuple[Server, float], tmp_path: Path
) -> None:
    server, _ = timed_server
    shots = tmp_path / "screenshots"
    client = server.openai("gamma")
    file_id = client.files.create(file=("long.jsonl", chat_lines(10)), purpose="fine-tune").id
    spare_id = client.files.create(file=("spare.jsonl", chat_lines(10)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}},
        metadata={"kind": "long"},
    )
    driver.get(f"{server.base_url}/")
    enter_key(driver, server.key("gamma"))
    go(driver, server, "jobs")
    wait(driver).until(lambda d: row_status(d, job.id) in ("queued", "running"))
    click(driver, f'#jobs-table tr[data-id="{job.id}"] .pause-btn')
    wait(driver, 120).until(lambda d: row_status(d, job.id) == "paused")
    screenshot(driver, shots, "20-jobs-paused")
    click(driver, f'#jobs-table tr[data-id="{job.id}"] .resume-btn')
    wait(driver, 60).until(lambda d: row_status(d, job.id) in ("queued", "running"))
    # filters: by status and by metadata
    Select(driver.find_element(By.ID, "filter-status")).select_by_value("succeeded")
    wait(driver).until(lambda d: "No jobs match" in text_of(d, "#jobs-list"))
    Select(driver.find_element(By.ID, "filter-status")).select_by_value("")
    metadata = driver.find_element(By.ID, "filter-metadata")
    metadata.send_keys("kind=other")
    metadata.send_keys("\t")
    wait(driver).until(lambda d: "No jobs match" in text_of(d, "#jobs-list"))
    metadata.clear()
    metadata.send_keys("kind=long\t")
    wait(driver).until(lambda d: row_status(d, job.id) != "")
    click(driver, f'#jobs-table tr[data-id="{job.id}"] .cancel-btn')
    wait(driver, 60).until(lambda d: row_status(d, job.id) == "cancelled")
    screenshot(driver, shots, "21-jobs-cancelled")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"

    # delete a file from the Files page (the browser asks first)
    go(driver, server, "files")
    click(driver, f'#files-table tr[data-id="{spare_id}"] .delete-btn')
    wait(driver).until(ec.alert_is_present()).accept()
    wait(driver).until(lambda d: spare_id not in text_of(d, "#files-list"))
    assert spare_id not in [f.id for f in client.files.list().data]
