"""Fine-tuning runs: a spec, a headless training process, and the run directories it writes.

`spec`, `data`, `runs` and `cli` import neither torch nor transformers, so the CLI and the TUI
can validate, launch and watch runs cheaply. `runner` (with `models`, `batches` and
`checkpoints`) is the training process itself and is only imported inside it.
"""
