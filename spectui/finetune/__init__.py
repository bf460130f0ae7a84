"""Fine-tuning runs: a spec, a headless training process, and the run directories it writes.

`spec`, `data`, `runs`, `study` and `cli` import neither torch nor transformers, so the CLI and
the TUI can validate, launch and watch runs and studies cheaply. `runner` (with `models`,
`batches`, `checkpoints` and `merge`) is the training process itself and is only imported inside
it (and `merge` by a study's own process, to compare a sequence's LoRA stages with their base).
"""
