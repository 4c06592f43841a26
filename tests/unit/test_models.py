"""Model loading: devices, dtypes, folders, GGUF staging clean-up, error messages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from spring_core.errors import ModelLoadError
from spring_core.model.loading import (
    _remove_stale_conversions,
    display_name_of,
    load_model,
    model_display_name,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
    spring_home,
)


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) is torch.float32
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_dtype(torch.float16, cpu) is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_spring_home_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPRING_RAG_HOME", str(tmp_path / "home"))
    assert spring_home() == tmp_path / "home"
    monkeypatch.delenv("SPRING_RAG_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert spring_home() == tmp_path / "xdg" / "spring-rag"


def test_load_folder_in_bfloat16_and_name_it(tiny_dir):
    model, tokenizer = load_model(str(tiny_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert model_display_name(model) == tiny_dir.name
    assert model.config.name_or_path == str(tiny_dir.resolve())  # what transformers recorded; nothing written


def test_a_converted_gguf_folder_is_named_by_its_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SPRING_RAG_HOME", str(tmp_path))
    converted = tmp_path / "models"
    assert display_name_of(str(converted / "SmolLM2-135M-Instruct.Q4_1-0123456789abcdef")) == "SmolLM2-135M-Instruct"
    assert display_name_of(str(converted / "my-model.Q8_0-0123456789abcdef")) == "my-model.Q8_0"
    assert display_name_of(str(tmp_path / "elsewhere" / "my-model.Q8_0-0123456789abcdef")) == (
        "my-model.Q8_0-0123456789abcdef")
    assert display_name_of("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_injected_objects_are_used_as_they_are(tiny):
    model, tokenizer = tiny
    assert load_model("ignored-name", model=model, tokenizer=tokenizer) == (model, tokenizer)


def test_folder_without_config_and_missing_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source(str(tmp_path / "model.gguf"))


def test_unreachable_hub_id_gives_an_actionable_error():
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported, so the check runs in a fresh interpreter.
    code = (
        "from spring_core.model.loading import load_model\n"
        "from spring_core.errors import ModelLoadError\n"
        "try:\n    load_model('no-such-org/no-such-model-anywhere')\n"
        "except ModelLoadError as exc:\n    print('ModelLoadError:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.startswith("ModelLoadError:"), result.stderr[-2000:]
    assert "local folder" in result.stdout and "no-such-org/no-such-model-anywhere" in result.stdout


def test_stale_staging_folders_are_removed_but_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"model-abc.tmp-{dead_pid}-x1"
    live = tmp_path / f"model-abc.tmp-{os.getppid()}-x2"  # our parent process is alive
    other = tmp_path / "other-model.tmp-1-x3"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    _remove_stale_conversions(tmp_path, "model-abc")
    assert not stale.exists() and live.exists() and other.exists()


def test_a_model_pool_shares_by_name_keeps_the_most_recent_and_clears(tiny_dir, tmp_path):
    from spring_core.model.loading import ModelPool

    other = tmp_path / "other"
    load_model(str(tiny_dir))[0].save_pretrained(other)
    load_model(str(tiny_dir))[1].save_pretrained(other)
    pool = ModelPool(capacity=1)
    model, tokenizer = pool.get(str(tiny_dir))
    assert pool.get(str(tiny_dir)) == (model, tokenizer) and len(pool) == 1  # shared, not loaded again
    pool.get(str(other))
    assert len(pool) == 1 and pool.get(str(tiny_dir))[0] is not model  # the older one was let go
    pool.clear()
    assert len(pool) == 0
