"""RWKV-7 ("Goose", x070): its WKV operator (ops.py: ``wkv7``, ``WKV7Function``, the
``RUN_CUDA_RWKV7g`` drop-in), references and conventions (reference.py: ``wkv7_naive``,
``wkv7_exact``, fla's ``to_fla`` / ``from_fla``), the language model (config.py, model.py:
``RWKV7Config``, ``RWKV7``) and its checkpoint formats (checkpoints.py: RWKV-LM x070 .pth, fla-hub
Hugging Face directories, tuned states)."""
