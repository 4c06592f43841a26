"""The GGUF -> safetensors cache survives a conversion killed midway (SIGKILL while it writes).

A fresh ``SPRING_RAG_HOME`` is used, so this converts SmolLM2's GGUF one and a half times: killed once the tokenizer
is written (the conversion writes it first), then whole (~60 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spring_core.model.loading import bundled_gguf_path, converted_gguf_dir, load_model

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERT = (
    "from spring_core.model.loading import converted_gguf_dir, bundled_gguf_path; "
    "converted_gguf_dir(bundled_gguf_path('smollm2-135m'))"
)
APPEAR_TIMEOUT_S = 120


def staging_with_a_file(models: Path) -> Path | None:
    """A staging folder (``*.tmp-*``) that already holds at least one file, if any."""
    if not models.is_dir():
        return None
    for staging in models.glob("*.tmp-*"):
        try:
            if any(path.is_file() for path in staging.rglob("*")):
                return staging
        except FileNotFoundError:  # renamed or removed while we looked
            continue
    return None


def finished_folders(models: Path) -> list[Path]:
    return [entry for entry in models.iterdir() if ".tmp-" not in entry.name]


def test_conversion_killed_midway_is_never_used_and_is_cleaned_up(smollm2, tmp_path, monkeypatch):
    home = tmp_path / "spring-home"
    models = home / "models"
    log_path = tmp_path / "convert.log"
    env = {**os.environ, "SPRING_RAG_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    with log_path.open("wb") as log:
        child = subprocess.Popen([sys.executable, "-c", CONVERT], cwd=REPO_ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + APPEAR_TIMEOUT_S
            staging = None
            while staging is None:
                staging = staging_with_a_file(models)
                if staging is not None:
                    break
                if child.poll() is not None:
                    pytest.fail(
                        f"the conversion ended (exit {child.returncode}) before a staging folder with a file "
                        f"appeared; its output:\n{log_path.read_text(errors='replace')[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"no staging folder with a file appeared in {models} within {APPEAR_TIMEOUT_S} s")
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=60)  # reap it: a zombie would still count as a live process

    assert child.returncode == -signal.SIGKILL, (
        f"the conversion finished before it could be killed (exit {child.returncode}); the test did not "
        "interrupt it midway"
    )
    assert staging.is_dir(), "the killed conversion's staging folder should still be there"
    assert finished_folders(models) == [], "a half-written conversion must never sit under the final name"

    # A new conversion in this process: it must succeed, remove the dead staging folder and be usable.
    monkeypatch.setenv("SPRING_RAG_HOME", str(home))
    folder = converted_gguf_dir(bundled_gguf_path("smollm2-135m"))
    assert folder.parent == models
    assert ".tmp-" not in folder.name
    assert (folder / "config.json").is_file()
    assert not staging.exists(), "the dead process's staging folder should have been removed"
    assert list(models.glob("*.tmp-*")) == []
    assert finished_folders(models) == [folder]
    assert converted_gguf_dir(bundled_gguf_path("smollm2-135m")) == folder  # now a cache hit

    model, tokenizer = load_model(str(folder))
    session_model, session_tokenizer = smollm2
    prompt = "The capital of France is"
    inputs = tokenizer(prompt, return_tensors="pt")
    assert inputs["input_ids"].tolist() == session_tokenizer(prompt, return_tensors="pt")["input_ids"].tolist()
    with torch.inference_mode():
        converted = model(**inputs).logits
        reference = session_model(**inputs).logits
    assert torch.equal(converted, reference)
