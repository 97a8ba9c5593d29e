"""RWKV-7 ("Goose", x070): its WKV operator (ops.py: ``wkv7``, ``WKV7Function``, the
``RUN_CUDA_RWKV7g`` drop-in) and its references and conventions (reference.py: ``wkv7_naive``,
``wkv7_exact``, fla's ``to_fla`` / ``from_fla``). The model follows in this room, beside rwkv4/."""
