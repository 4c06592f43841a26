"""Write the summed LoRA update of some documents as one PEFT adapter folder, so a server can load it by name.

vLLM applies one LoRA per request, so the retrieved documents' adapters are merged first. ``LoraUpdate`` already
holds their factors stacked along the rank (``A: [sum r, in]``, ``B: [out, sum r]``, each document's scale and
weight folded into ``B``), and ``B @ A`` is exactly the sum of the per-document updates. Written with
``r = lora_alpha = sum r`` (a scale of 1) it is a plain PEFT LoRA, which PEFT's ``cat`` combination would also
give.

Example:
    >>> from spring_core.parametric import open_adapters
    >>> update = open_adapters("adapters/", model).update_for(["doc-3", "doc-9"])   # two documents, summed
    >>> folder = write_peft_adapter(update, "merged/doc-3+doc-9", model, base_model_name="my-llama")
    >>> sorted(path.name for path in folder.iterdir())
    ['adapter_config.json', 'adapter_model.safetensors']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from spring_core.parametric.lora import LoraUpdate

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def peft_config(update: LoraUpdate, model: Any, *, base_model_name: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``update`` on ``model``: rank and alpha equal (scale 1), and the target
    modules by leaf name where the update covers every module of that name, else by full name."""
    rank = update.rank
    all_names = [name for name, _ in model.named_modules()]
    targets: set[str] = set()
    for name in update.factors:
        leaf = name.rsplit(".", 1)[-1]
        same_leaf = {other for other in all_names if other.rsplit(".", 1)[-1] == leaf}
        targets.add(leaf if same_leaf <= set(update.factors) else name)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name,
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": sorted(targets), "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "inference_mode": True,
    }


def write_peft_adapter(update: LoraUpdate, folder: str | Path, model: Any, *, base_model_name: str) -> Path:
    """Write ``update`` as a PEFT adapter folder (float32 tensors) at ``folder``, atomically: the folder appears
    complete or not at all; an existing folder is kept (it holds the same update: callers name folders by key)."""
    folder = Path(folder)
    if (folder / WEIGHTS_FILE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        tensors = {}
        for name, (a, b) in update.factors.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()
        save_file(tensors, str(staging / WEIGHTS_FILE))
        config = peft_config(update, model, base_model_name=base_model_name)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:  # another writer won the race with the same content
            if not (folder / WEIGHTS_FILE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
