"""Reading checkpoints and adapters, and pairing their matrices; knows nothing of SVDs or UI."""
