"""Runs ChatRWKV's ``rwkv`` package (RWKV_V7_ON=1, strategy "cpu fp32") on an RWKV-LM x070
.pth: an implementation nobody here wrote. A script, run in its own process (the package reads
its switches from the environment at import):

    RWKV_V7_ON=1 python tests/chatrwkv7_runner.py MODEL.pth IDS.json OUT.pt

IDS.json: {"prompt": [ids], "decode": [ids]}. OUT.pt: {"prompt": (T, vocab) logits of every
prompt position (one sequence call), "decode": (D, vocab) logits of each decode id fed one
token at a time after the prompt}.
"""

import json
import os
import sys

import torch

assert os.environ.get("RWKV_V7_ON") == "1", "run with RWKV_V7_ON=1"
from rwkv.model import RWKV  # noqa: E402

model_path, ids_path, out_path = sys.argv[1:4]
ids = json.load(open(ids_path))
model = RWKV(model=model_path[:-4] if model_path.endswith(".pth") else model_path, strategy="cpu fp32")
with torch.no_grad():
    prompt_logits, state = model.forward(list(ids["prompt"]), None, full_output=True)
    decode = []
    for t in ids["decode"]:
        logits, state = model.forward([t], state)
        decode.append(logits.clone())
torch.save({"prompt": prompt_logits.float(), "decode": torch.stack(decode).float() if decode else None}, out_path)
