"""Fine-tuning jobs: submit, control, run progress, checkpoints, events, reaper and presentation."""
