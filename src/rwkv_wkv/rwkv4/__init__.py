"""RWKV-4: its WKV op (ops.py on csrc/rwkv4/), the references, the model and its checkpoint
formats. Read in this order: state.py, ops.py, reference.py, config.py, model.py,
checkpoints.py (hf.py), transformers_patch.py."""
