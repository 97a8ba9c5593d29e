"""Train an RWKV-4 byte-level language model on enwik8 and report bits per character.

    python examples/train_enwik8.py                          # demo: built-in corpus, a few minutes on CPU
    python examples/train_enwik8.py --data enwik8 --preset rwkv-lm --device cuda
    python examples/train_enwik8.py --resume                 # continue exactly where it stopped
    torchrun --standalone --nproc_per_node=2 examples/train_enwik8.py --data enwik8 --device cuda

This is the package's one trainer, ``python -m rwkv_wkv.train`` (src/rwkv_wkv/train.py), under
the name users know: every option of it works here (--init-from, --tokenizer, --fsdp, ...);
``--help`` lists them.
"""

import sys

from rwkv_wkv.train import main

if __name__ == "__main__":
    sys.exit(main())
