"""RWKV-7 ("Goose", x070): so far its WKV references (reference.py) and conventions; the op and
the model follow in this room, beside rwkv4/."""
